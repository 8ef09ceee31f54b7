import pytest

from seqba.data.paths import data_root


@pytest.fixture
def shared_data():
    """Path of the real corpora (``$SEQBA_DATA`` or ``../shared/data``); skips the test when absent."""
    root = data_root()
    if root is None:
        pytest.skip("real corpora not found: set SEQBA_DATA or place them in ../shared/data")
    return root

import os

# Tiny models run fastest on one thread, and test processes must not oversubscribe the 2 cores of CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from seqba.data.paths import data_root  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def shared_data():
    """Path of the real corpora (``$SEQBA_DATA`` or ``../shared/data``); skips the test when absent."""
    root = data_root()
    if root is None:
        pytest.skip("real corpora not found: set SEQBA_DATA or place them in ../shared/data")
    return root


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Tests call seqba.train.main in-process with different settings (e.g. bf16); Accelerate's state is a
    process-wide singleton, so reset it after each test as a new process would start."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


# Each `accelerate launch` starts two processes: under pytest-xdist (`-n 2 --dist loadgroup`, the README's test
# command) every test that launches them runs on the same worker, one after another, so two launches never
# share the two cores (each launch also has its own port: `runs.accelerate_launch_two`).
LAUNCHING_MODULES = {"test_multiprocess.py", "test_multiprocess_errors.py", "test_integrations_accelerate.py"}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in LAUNCHING_MODULES or "two_processes" in item.name:
            item.add_marker(pytest.mark.xdist_group("accelerate_launch"))

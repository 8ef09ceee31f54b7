"""The README's "Integrations" examples are run as pasted by tests/test_readme_blocks.py; this checks that each of
them is also checked for its RESULT there (a block that merely runs without error could still show a wrong use)."""
import re
import textwrap

from test_readme_blocks import README, RESULT_CHECKS


def integration_blocks() -> list[str]:
    section = README.split("\n## Integrations\n", 1)[1].split("\n## ", 1)[0]
    return [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", section, re.S)]


def test_every_integration_example_has_a_result_check():
    blocks = integration_blocks()
    assert len(blocks) >= 4
    for block in blocks:
        assert any(marker in block for marker in RESULT_CHECKS), f"no result check in test_readme_blocks.py:\n{block}"

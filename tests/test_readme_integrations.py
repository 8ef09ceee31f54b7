"""Every code block of the README's "Integrations" section is copied from a test that runs (between the markers
``# --- README: <name> ---`` and ``# --- end ---``), so the examples cannot drift from working code."""
import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Integrations\n", 1)[1].split("\n## ", 1)[0]
    return [textwrap.dedent(b).strip() for b in re.findall(r"```python\n(.*?)```", section, re.S)]


def readme_snippets() -> dict[str, str]:
    snippets = {}
    for path in (ROOT / "tests").glob("test_integrations_*.py"):
        for name, body in re.findall(r"# --- README: (.+?) ---\n(.*?)\n\s*# --- end ---", path.read_text(), re.S):
            snippets[name] = textwrap.dedent(body).strip()
    return snippets


def test_every_integration_example_is_copied_from_a_test():
    blocks, snippets = readme_blocks(), readme_snippets()
    assert len(blocks) >= 3
    for block in blocks:
        body = "\n".join(line for line in block.splitlines() if not line.startswith(("from ", "import ")))
        assert any(body.strip() in snippet for snippet in snippets.values()), f"not in any test:\n{block}"

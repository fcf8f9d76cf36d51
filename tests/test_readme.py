"""The README's Python examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README should show how to use the layers"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})


def test_readme_states_the_two_commands():
    text = README.read_text()
    assert "pip install -e . && python -m hpo.run --algo fa --trials 50" in text
    assert 'pip install -e ".[test,vision]" && python -m pytest' in text


def first_table(markdown: str) -> list[str]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def test_readme_results_table_is_the_committed_summary():
    """The README's table of the committed run is summary.md's, as ``python -m hpo.report --storage
    studies/bundled.journal`` writes it: a rerun that changes a number must change the README too."""
    text = README.read_text()
    shown = text.split("<!-- results table -->\n", 1)[1].split("<!-- /results table -->", 1)[0]
    summary = (README.parent / "results" / "bundled" / "summary.md").read_text()
    assert first_table(shown) == first_table(summary)
    assert len(first_table(shown)) > 2

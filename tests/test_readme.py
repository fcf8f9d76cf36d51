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

"""The README's Python examples run as written, its two commands are there, and its tables are the reports'."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 250  # a front door: the rest is in docs/


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README should show how to use the layers"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})


def test_readme_states_the_two_commands_and_stays_short():
    text = README.read_text()
    assert "pip install -e . && python -m hpo.run --algo fa --trials 50" in text
    assert 'pip install -e ".[test]" && python -m pytest' in text  # no PyTorch: the torch tests have their step
    assert len(text.splitlines()) <= MAX_README_LINES


def first_table(markdown: str) -> list[str]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


@pytest.mark.parametrize("page", ["README.md", "docs/results.md"])
def test_results_tables_are_the_committed_summaries(page):
    """Each ``<!-- results table: results/X/summary.md -->`` block is that summary's table, as
    ``python -m hpo.report`` writes it from the committed storage: a rerun that changes a number must change the
    page too."""
    text = (ROOT / page).read_text()
    blocks = re.findall(r"<!-- results table: (\S+) -->\n(.*?)<!-- /results table -->", text, flags=re.S)
    assert blocks, f"{page} shows no results table"
    for source, shown in blocks:
        assert first_table(shown) == first_table((ROOT / source).read_text()), source
        assert len(first_table(shown)) > 2


def test_every_docs_link_of_the_readme_exists():
    for target in re.findall(r"\]\((docs/[^)#]+)", README.read_text()):
        assert (ROOT / target).is_file(), target


def test_no_page_links_to_an_address_of_this_project_it_does_not_have():
    """The project has no public repository address: the README, the docs and mkdocs.yml name none (an invented
    one gave the site broken images), and the site carries its own charts (docs/hooks.py)."""
    pages = [README, ROOT / "mkdocs.yml", *(ROOT / "docs").glob("*.md")]
    for page in pages:
        text = page.read_text()
        assert not re.search(r"https?://(www\.)?(github\.com|raw\.githubusercontent\.com)/bioplausible", text), page
        assert "repo_url" not in text, page
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", "".join(p.read_text() for p in pages)):
        assert not image.startswith(("http://", "https://")), image

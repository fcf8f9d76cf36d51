"""The shape of the code base a newcomer meets: rooms by job with small public faces, short modules, no cycles."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 500


def test_hpo_has_few_top_level_modules_and_rooms_by_job():
    modules = [p.name for p in (ROOT / "hpo").glob("*.py") if p.name != "__init__.py"]
    rooms = [p.name for p in (ROOT / "hpo").iterdir() if (p / "__init__.py").is_file()]
    assert len(modules) <= 10, modules
    assert {"data", "space", "study", "parallel", "storage", "report"} <= set(rooms)


def test_no_module_is_longer_than_a_reader_can_hold():
    long = {str(p.relative_to(ROOT)): n for folder in ("hpo", "models") for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_every_package_says_what_it_is():
    for init in [*(ROOT / "hpo").rglob("__init__.py"), *(ROOT / "models").rglob("__init__.py")]:
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and len(docstring) > 40, init


def test_tests_mirror_the_packages():
    for room in ("data", "space", "study", "parallel", "storage", "report"):
        assert list((ROOT / "tests" / room).glob("test_*.py")), room
    assert list((ROOT / "tests" / "models").glob("test_*.py"))


def test_every_test_file_the_ci_script_and_the_docs_name_exists():
    """Moving a test file must not leave CI running an empty selection (pytest exits 5 on "no tests ran")."""
    import re

    named = {}
    for text_file in [ROOT / ".ci" / "run", ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for path in re.findall(r"\btests/[\w/]+\.py\b", text_file.read_text()):
            named.setdefault(path, text_file.name)
    missing = {path: where for path, where in named.items() if not (ROOT / path).is_file()}
    assert named and missing == {}, missing

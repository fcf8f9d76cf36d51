"""The shape of the code base a newcomer meets: rooms by job with small public faces, short modules, no cycles."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 500


def test_hpo_has_few_top_level_modules_and_rooms_by_job():
    modules = [p.name for p in (ROOT / "hpo").glob("*.py") if not p.name.startswith("__")]  # not __init__, __main__
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
    for room in ("rules", "train", "compile", "sd"):
        assert list((ROOT / "tests" / "models" / room).glob("test_*.py")), room
    assert list((ROOT / "tests" / "models").glob("test_*.py"))  # the modules of models/ itself (saved, diagnostics)


def test_no_package_below_the_command_line_imports_it():
    """hpo.cli is the top: entry points (hpo/*.py, a package's __main__.py) import it, no module of a package does."""
    importers = [str(p.relative_to(ROOT)) for p in (ROOT / "hpo").rglob("*.py")
                 if p.parent != ROOT / "hpo" and p.name != "__main__.py"
                 and any(isinstance(node, ast.ImportFrom) and node.module == "hpo.cli"
                         or isinstance(node, ast.Import) and any(a.name == "hpo.cli" for a in node.names)
                         for node in ast.walk(ast.parse(p.read_text())))]
    assert importers == []


def test_every_test_file_the_ci_script_and_the_docs_name_exists():
    """Moving a test file must not leave CI running an empty selection (pytest exits 5 on "no tests ran")."""
    import re

    named = {}
    for text_file in [ROOT / ".ci" / "run", ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for path in re.findall(r"\btests/[\w/]+\.py\b", text_file.read_text()):
            named.setdefault(path, text_file.name)
    missing = {path: where for path, where in named.items() if not (ROOT / path).is_file()}
    assert named and missing == {}, missing

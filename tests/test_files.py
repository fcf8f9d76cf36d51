"""hpo.files: study folders inside results whatever the name, files created with the umask, files written
together or not at all."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from study_processes import (
    TINY,
    add_complete_study,
    files_under,
)

from hpo.files import atomic_path, study_folder, write_text, written_together
from hpo.report import __main__ as report_command
from hpo.report import summary as report
from hpo.run import main

# ---------------------------------------------------------------------------------------------------------
# Study names stay inside their folder

HOSTILE_NAMES = [
    "/tmp/absolute-escape", "../../escaped", "a/../../b", "..", ".", "", ".hidden", "x" * 300, "é" * 200,
    "ctl\x1b[31m\n\x00", "back\\slash", "digits-mlp-fa+0123456789ab", "a" * 101,
]


def test_study_folder_maps_every_name_to_one_safe_folder_inside_results(tmp_path):
    studies = (tmp_path / "studies").resolve()
    folders = {}
    for name in HOSTILE_NAMES:
        folder = study_folder(tmp_path, name)
        assert folder.parent == tmp_path / "studies" and folder.resolve().parent == studies, name
        assert len(folder.name.encode()) <= 255 and not folder.name.startswith("."), name
        assert all(c.isascii() and (c.isalnum() or c in "._-+") for c in folder.name), name
        folders[name] = folder
    assert len(set(folders.values())) == len(HOSTILE_NAMES)  # no two names share a folder
    assert study_folder(tmp_path, "digits-mlp-fa") == tmp_path / "studies" / "digits-mlp-fa"  # plain names kept
    assert study_folder(tmp_path, "../../escaped") == study_folder(tmp_path, "../../escaped")  # stable


def test_report_of_hostile_study_names_writes_only_under_results(tmp_path):
    """Anyone who can create a study in a shared storage names its folder; a report stays under --results-dir."""
    storage = str(tmp_path / "shared.journal")
    work = tmp_path / "work"
    results = work / "results"
    outside = tmp_path / "absolute-target"
    names = [str(outside), "../../escaped", "x" * 300]
    for name in names:
        add_complete_study(storage, name)
    before = files_under(tmp_path)

    assert report_command.main(["--storage", storage, "--results-dir", str(results)]) == 0

    written = files_under(tmp_path) - before
    assert written and all(results in p.parents for p in written)
    assert not outside.exists() and not (work / "escaped").exists()
    for name in names:
        assert (study_folder(results, name) / "history.png").is_file()
        assert (study_folder(results, name) / "curves.png").is_file()


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "back\\slash", "bell\x07", "new\nline", "..", "x" * 201])
def test_study_name_flag_refuses_paths_and_control_characters(tmp_path, capsys, name):
    storage = tmp_path / "s.journal"
    assert main(["--study-name", name, *TINY, "--trials", "1", "--storage", str(storage),
                 "--results-dir", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --study-name must ") and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())  # nothing created


# ---------------------------------------------------------------------------------------------------------
# Report files honour the umask


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_report_files_are_created_with_the_umask(tmp_path, umask, mode):
    storage = str(tmp_path / "s.journal")
    add_complete_study(storage, "digits-mlp-fa")
    previous = os.umask(umask)
    try:
        report.write_reports(storage, tmp_path / "results", out=lambda _: None)
    finally:
        os.umask(previous)
    written = files_under(tmp_path / "results")
    assert len(written) >= 6
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_written_together_rolls_back_every_file_when_one_fails(tmp_path):
    old = tmp_path / "a.txt"
    old.write_text("old a")
    with pytest.raises(OSError), written_together() as publish:
        write_text(tmp_path / "a.txt", "new a")
        publish()  # already in place: rolled back too
        write_text(tmp_path / "b.txt", "new b")
        with atomic_path(tmp_path / "c.txt"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert old.read_text() == "old a" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with written_together():
        write_text(tmp_path / "a.txt", "new a")
        write_text(tmp_path / "b.txt", "new b")
    assert (tmp_path / "a.txt").read_text() == "new a" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]



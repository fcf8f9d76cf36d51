"""A full disk mid-report keeps the previous report set whole."""

from __future__ import annotations

import os

from study_processes import (
    add_complete_study,
    files_under,
)

from hpo.report import __main__ as report_command
from hpo.report.folders import OWNER_FILE


def test_a_full_disk_keeps_the_previous_report_set_whole(tmp_path, full_filesystem, capsys):
    storage = str(tmp_path / "s.journal")
    add_complete_study(storage, "digits-mlp-fa")
    results = full_filesystem / "results"
    assert report_command.main(["--storage", storage, "--results-dir", str(results)]) == 0
    previous = {p: p.read_bytes() for p in files_under(results)}
    for i in range(12):  # more studies: a report set larger than the space left
        add_complete_study(storage, f"digits-mlp-fa-{i}", values=[0.1 * (i % 9), 0.5])
    filler = full_filesystem / "filler"
    free = os.statvfs(full_filesystem).f_bavail * os.statvfs(full_filesystem).f_frsize
    filler.write_bytes(b"x" * max(0, free - 120_000))  # leave a little room: the first few files fit, not all
    capsys.readouterr()

    assert report_command.main(["--storage", storage, "--results-dir", str(results)]) == 2

    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write the reports to {str(results)!r}: No space left on device")
    assert err.count("\n") == 1 and "the previous reports are kept" in err
    assert {p: p.read_bytes() for p in files_under(results)} == previous  # every file as before, none new
    # no temporary file left (the folder's record of its storage, hpo.report.folders.OWNER_FILE, is not one)
    assert not [p for p in results.rglob(".*") if p.is_file() and p.name != OWNER_FILE]



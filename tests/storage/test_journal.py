"""Journal storages: a crash mid-append is made whole, a reopened study leaves its journal as it was, and a path
that is not a journal, or a read-only file, is refused and left untouched."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from study_processes import (
    TINY,
    journal_study,
    run_cli,
)

from hpo.config import StudyConfig
from hpo.data import load_dataset
from hpo.report import __main__ as report_command
from hpo.run import main
from hpo.storage import open_storage, study_names
from hpo.study.runner import open_study

# ---------------------------------------------------------------------------------------------------------
# A crash mid-append must not corrupt the journal


def test_torn_last_record_is_cut_under_the_lock_before_the_next_append(tmp_path, capfd):
    journal = tmp_path / "s.journal"
    study = optuna.create_study(study_name="s", storage=open_storage(str(journal)))
    study.set_user_attr("a", 1)
    running = optuna.load_study(study_name="s", storage=open_storage(str(journal)))  # a worker already running
    whole = journal.read_bytes()
    torn = b'{"op_code":2,"worker_id":"dead","study_id":0,"user_attr":{"b"'  # another writer died here
    with open(journal, "ab") as f:
        f.write(torn)
    capfd.readouterr()

    running.set_user_attr("c", 3)  # its next append must not be glued onto the torn record

    text = journal.read_bytes()
    assert text.startswith(whole) and text.endswith(b"\n") and torn not in text
    assert journal_study(journal, "s").user_attrs == {"a": 1, "c": 3}  # loads everywhere
    copies = list(tmp_path.glob("s.journal.torn-*"))
    assert len(copies) == 1 and copies[0].read_bytes() == torn  # what was cut is kept
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and f"cut off {len(torn)} bytes" in err and str(copies[0]) in err
    assert not (tmp_path / "s.journal.lock").exists()  # the journal's lock was taken and released


def test_two_torn_tails_cut_in_one_second_are_both_kept(tmp_path, capfd):
    """A copy is named by the second and the process: the second cut within that second failed ("File exists"), the
    append with it, and the study lost its storage."""
    journal = tmp_path / "s.journal"
    study = optuna.create_study(study_name="s", storage=open_storage(str(journal)))
    torn = [b'{"op_code":2,"worker_id":"one","study_id":0', b'{"op_code":2,"worker_id":"two"']
    for i, record in enumerate(torn):
        with open(journal, "ab") as f:
            f.write(record)
        study.set_user_attr(f"a{i}", i)
    copies = sorted(tmp_path.glob("s.journal.torn-*"), key=lambda p: p.stat().st_mtime_ns)
    assert [c.read_bytes() for c in copies] == torn
    assert journal_study(journal, "s").user_attrs == {"a0": 0, "a1": 1}
    assert capfd.readouterr().err.count("cut off") == 2


CREATE_WHEN_INTERRUPTED = """
import sys
from hpo.parallel.interrupts import Interrupted, handle_interrupts
from hpo.storage import open_storage
storage = open_storage(sys.argv[1])  # takes the lock itself (to repair a torn tail): before the holder does
print("opened", flush=True)
sys.stdin.readline()
try:
    with handle_interrupts():
        print("creating", flush=True)
        storage.create_new_study([], "created")
except Interrupted:
    print("interrupted", flush=True)
print([s.study_name for s in storage.get_all_studies()], flush=True)
"""


def test_an_interrupt_while_a_journal_write_waits_for_the_lock_is_raised_after_the_write(tmp_path):
    """Before, the write was abandoned: a worker's re-queue could be cut between failing its trial and
    re-queueing it. Now the write waits for the lock, lands whole, and the interrupt is raised after it."""
    from optuna.storages.journal import JournalFileSymlinkLock

    journal = tmp_path / "s.journal"
    journal.write_bytes(b"")
    holder = JournalFileSymlinkLock(str(journal))  # another worker, appending
    waiter = subprocess.Popen([sys.executable, "-c", CREATE_WHEN_INTERRUPTED, str(journal)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert waiter.stdout.readline() == "opened\n"
    holder.acquire()
    try:
        waiter.stdin.write("go\n")
        waiter.stdin.flush()
        assert waiter.stdout.readline() == "creating\n"
        time.sleep(0.5)  # waiting for the lock by now
        waiter.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert journal.read_bytes() == b""  # nothing written while the lock is held
    finally:
        holder.release()
    out, _ = waiter.communicate(timeout=60)
    assert out.splitlines() == ["interrupted", "['created']"]
    assert study_names(open_storage(str(journal), create=False)) == ["created"]


def test_an_interrupt_inside_a_journal_replay_is_raised_after_it_and_loses_no_record(tmp_path, monkeypatch):
    """Optuna counts a record as read before applying it: an interrupt in between left another worker's new trial
    out of this process's view for good, and every trial it created after was numbered wrong."""
    import signal as signals

    from optuna.storages.journal._storage import JournalStorageReplayResult

    from hpo.parallel.interrupts import Interrupted, handle_interrupts

    journal = tmp_path / "s.journal"
    mine = optuna.create_study(study_name="s", storage=open_storage(str(journal)))
    other = optuna.load_study(study_name="s", storage=open_storage(str(journal)))  # another worker
    other.ask()  # trial 0, not yet seen by mine
    apply = JournalStorageReplayResult._apply_create_trial
    calls = []

    def signalled_first(self, log):
        if not calls:
            calls.append(log)
            signals.raise_signal(signals.SIGINT)  # the handler runs here, between counting and applying
        apply(self, log)

    monkeypatch.setattr(JournalStorageReplayResult, "_apply_create_trial", signalled_first)
    with handle_interrupts(), pytest.raises(Interrupted):
        mine.get_trials(deepcopy=False)
    assert calls  # the signal landed inside the replay
    assert [t.number for t in mine.get_trials(deepcopy=False)] == [0]
    assert mine.ask().number == 1


@pytest.mark.slow  # two study processes; the torn-journal repair itself is tested in-process above
def test_rerun_after_a_crash_mid_append_resumes_and_reports(tmp_path):
    """The issue's repro: a journal study, 40 bytes cut off its end, the same command run again."""
    journal, results = tmp_path / "s.journal", tmp_path / "results"
    args = [*TINY, "--storage", str(journal), "--results-dir", str(results)]
    first = run_cli(*args, "--trials", "1")
    assert first.returncode == 0, first.stderr
    journal.write_bytes(journal.read_bytes()[:-40])  # the last append was cut short by a crash

    again = run_cli(*args, "--trials", "2")
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert "cut off" in again.stderr and "bytes of an unfinished last record" in again.stderr
    finished = journal_study(journal, "digits-mlp-bp").get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 2
    assert report_command.main(["--storage", str(journal), "--results-dir", str(tmp_path / "again")]) == 0


def test_reopening_a_study_leaves_its_journal_as_it_was(tmp_path):
    """A resumed study writes nothing to open itself: before, every run appended two refused "create study" records
    to the journal (``create_new_study`` and ``create_study(load_if_exists=True)`` each log their attempt), so a
    committed journal grew with every resume of its grid."""
    dataset = load_dataset("digits")
    journal = tmp_path / "s.journal"
    config = StudyConfig(algo="fa", dataset="digits", storage=str(journal))
    open_study(config, dataset, open_storage(str(journal)))
    written = journal.read_bytes()
    study = open_study(config, dataset, open_storage(str(journal)))
    assert journal.read_bytes() == written
    assert study.study_name == config.name and len(study_names(open_storage(str(journal)))) == 1


# ---------------------------------------------------------------------------------------------------------
# Storages: refuse, never touch


@pytest.mark.parametrize("content", [b"one line of notes\n", "random", "sqlite"])
def test_a_storage_path_that_is_not_a_journal_is_refused_and_left_as_it_is(tmp_path, capsys, content):
    path = tmp_path / "notes.txt"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    elif content == "sqlite":
        optuna.create_study(storage=f"sqlite:///{path}")
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    assert main([*TINY, "--trials", "1", "--storage", str(path), "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    if content == "sqlite":
        assert "is a SQLite database" in err and f"write sqlite:///{path}" in err
    else:
        assert "is not an Optuna journal" in err
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert report_command.main(["--storage", str(path), "--results-dir", str(tmp_path / "r")]) == 2  # reading refuses too
    assert path.read_bytes() == before


def test_a_read_only_sqlite_file_is_unusable_not_lost_mid_study(tmp_path, capsys):
    path = tmp_path / "s.db"
    optuna.create_study(storage=f"sqlite:///{path}", study_name="other")
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (it makes a file read-only even for root)")
    try:
        before = path.read_bytes()
        assert main([*TINY, "--trials", "1", "--storage", f"sqlite:///{path}",
                     "--results-dir", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: storage 'sqlite:///{path}' is read-only") and err.count("\n") == 1
        assert path.read_bytes() == before
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)



"""Local workers are bounded by the machine and end with their parent, however it ends."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from study_processes import (
    TIMEOUT,
    TINY,
    child_pids,
    journal_study,
    run_cli,
    start_study,
    wait_for_trial,
)

from hpo.errors import UsageError
from hpo.run import main

# ---------------------------------------------------------------------------------------------------------
# Bounded workers, tied to their parent


def test_more_workers_than_the_machine_holds_are_refused_before_anything_starts(tmp_path, capsys, monkeypatch):
    from hpo.parallel import devices

    storage, results = tmp_path / "s.journal", tmp_path / "results"
    assert main([*TINY, "--trials", "1", "--workers", "100000", "--storage", str(storage),
                 "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --workers 100000 is more than this machine can hold (") and err.count("\n") == 1
    assert "cores" in err and "HPO_MAX_WORKERS" in err
    assert not storage.exists() and not results.exists()
    monkeypatch.setenv("HPO_MAX_WORKERS", "64")  # the explicit override allows more than the measured bound
    devices.check_workers(64)
    with pytest.raises(UsageError, match="at most 64"):
        devices.check_workers(65)
    monkeypatch.setenv("HPO_MAX_WORKERS", "many")
    with pytest.raises(UsageError, match="HPO_MAX_WORKERS must be a whole number >= 1, got 'many'"):
        devices.check_workers(2)


@pytest.mark.slow  # two worker processes that start JAX: about a minute
def test_workers_end_with_their_parent_even_when_it_is_killed(tmp_path):
    """SIGKILL of the parent (or the out-of-memory killer) used to leave the workers training as orphans: they get
    SIGTERM from the kernel (PR_SET_PDEATHSIG), re-queue their trials and exit; a rerun resumes the study."""
    storage, results = tmp_path / "s.journal", tmp_path / "results"
    process = start_study(storage, results, 6, "--workers", "2", "--epochs", "20")
    wait_for_trial(storage, process, "training")
    workers = [pid for pid in child_pids(process.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2
    process.kill()
    process.communicate(timeout=TIMEOUT)
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
              for pid in workers):
        assert time.monotonic() < deadline, "workers outlived their killed parent"
        time.sleep(0.2)
    trials = journal_study(storage, "digits-mlp-fa").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # each re-queued its trial as it went
    assert [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") == "stopped by SIGTERM"]
    again = run_cli("--dataset", "digits", "--algo", "fa", "--folds", "2", "--pruner", "none", "--trials", "6",
                    "--epochs", "20", "--storage", str(storage), "--results-dir", str(results))
    assert again.returncode == 0, again.stderr


@pytest.mark.slow  # two worker processes that start JAX: about a minute
def test_a_study_its_other_worker_completed_ends_well_when_one_worker_dies(tmp_path):
    """A worker killed mid-study while the other finishes every trial (it recovers the dead one's trial): the
    parent says so in one line, then scores the best configuration on test and reports, and exits 0."""
    storage, results = tmp_path / "s.journal", tmp_path / "results"
    process = start_study(storage, results, 4, "--workers", "2", "--epochs", "2")
    wait_for_trial(storage, process, "training")
    workers = [pid for pid in child_pids(process.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    os.kill(workers[1], signal.SIGKILL)
    out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err
    assert "was killed by SIGKILL; the other workers completed the study" in out
    assert "test " in out and (results / "summary.csv").is_file()
    study = journal_study(storage, "digits-mlp-fa")
    assert sum(t.state == TrialState.COMPLETE for t in study.get_trials()) == 4
    assert study.user_attrs["test"]["scores"]


@pytest.mark.slow  # two worker processes that start JAX, then a rerun: about a minute and a half
def test_a_study_left_incomplete_by_dead_workers_exits_4_and_a_rerun_completes_it(tmp_path):
    """Every worker killed mid-trial (the out-of-memory killer): exit code 4 and one line that says to rerun; the
    rerun retries the dead workers' trials and completes the study to its exact total."""
    storage, results = tmp_path / "s.journal", tmp_path / "results"
    process = start_study(storage, results, 4, "--workers", "2", "--epochs", "20")
    wait_for_trial(storage, process, "training")
    workers = [pid for pid in child_pids(process.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 4, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "was killed by SIGKILL before the study was complete; rerun" in lines[0], err
    assert not (results / "summary.csv").exists()
    again = run_cli("--dataset", "digits", "--algo", "fa", "--folds", "2", "--pruner", "none", "--trials", "4",
                    "--epochs", "20", "--storage", str(storage), "--results-dir", str(results))
    assert again.returncode == 0, again.stderr
    trials = journal_study(storage, "digits-mlp-fa").get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    assert not [t for t in trials if t.state == TrialState.RUNNING]



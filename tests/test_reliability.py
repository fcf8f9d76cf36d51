"""Reliability and security (issue 15, issue 16 items 4-5), each case as a hostile or unlucky user meets it.

Real files, real subprocesses, real signals; the PostgreSQL cases (a database lost or frozen mid-study, passwords
in every URL form) are in tests/storage/test_storages.py next to the server they start.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from hpo.config import StudyConfig
from hpo.dashboard import exposure_warning
from hpo.data import load_dataset
from hpo.errors import UsageError
from hpo.files import atomic_path, study_folder, write_text, written_together
from hpo.report import __main__ as report_command
from hpo.report import summary as report
from hpo.report.folders import OWNER_FILE
from hpo.run import main
from hpo.storage import open_storage, redact, scrub, study_names
from hpo.study.progress import outcome as trial_outcome
from hpo.study.runner import open_study

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--algo", "bp", "--epochs", "1", "--folds", "2", "--pruner", "none"]
TIMEOUT = 300  # seconds a study process may take at most on a loaded 2-core machine


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpo.run", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=TIMEOUT)


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()}


def journal_study(path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(path), create=False))


# ---------------------------------------------------------------------------------------------------------
# 15.1 A crash mid-append must not corrupt the journal


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


# ---------------------------------------------------------------------------------------------------------
# 15.2 Study names stay inside their folder

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


def add_complete_study(storage: str, name: str, values=(0.5, 0.7)) -> None:
    study = optuna.create_study(study_name=name, storage=open_storage(storage), direction="maximize")
    for key, value in {"dataset": "digits", "model": "mlp", "algo": "fa", "metric": "accuracy"}.items():
        study.set_user_attr(key, value)
    curve = {"epoch": [1.0, 2.0], "series": {"val_score": [[0.3, 0.5], [0.3, 0.5]]}}
    for i, value in enumerate(values):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 10.0 ** -(i + 1)}, distributions={"lr": FloatDistribution(1e-6, 1.0, log=True)},
            value=value, user_attrs={"curves": curve},
        ))


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
# 15.3 No password anywhere (the forms SQLAlchemy accepts; the real server's cases are in tests/storage/test_storages.py)

URLS = [  # (url, secret, what must still be shown)
    ("postgresql://hpo:Secret-1@db.lab:5432/hpo", "Secret-1", "db.lab:5432/hpo"),
    ("postgresql://hpo@db.lab/hpo?password=Secret-2", "Secret-2", "db.lab/hpo?password=***"),
    ("postgresql+psycopg://hpo@db.lab/hpo?sslmode=require&password=Secret-3&application_name=w",
     "Secret-3", "sslmode=require"),
    ("postgresql://hpo:Se@cret-4@db.lab/hpo", "cret-4", "db.lab/hpo"),  # an "@" in the password, unencoded
    ("postgresql://hpo:Se%40cret-5@db.lab/hpo", "cret-5", "db.lab/hpo"),  # percent-encoded
    ("postgresql://hpo:pw/with?odd#chars-6@db.lab/hpo", "chars-6", "db.lab/hpo"),
    ("postgresql://hpo:Secret-7@db.lab:notaport/hpo", "Secret-7", "notaport"),  # make_url cannot parse this
    ("mysql+pymysql://hpo:Secret-8@db.lab/hpo?passwd=Secret-8b", "Secret-8", "db.lab/hpo"),
    ("postgresql://hpo@db.lab/hpo?sslpassword=Secret-9", "Secret-9", "sslpassword=***"),
    ("host=db.lab password='Se cret-10' user=hpo", "cret-10", "host=db.lab"),  # libpq keywords
]


@pytest.mark.parametrize("url,secret,shown", URLS, ids=[u[1] for u in URLS])
def test_redact_hides_every_credential_form(url, secret, shown):
    assert secret not in redact(url) and "Se@" not in redact(url)
    assert shown in redact(url)
    message = f"could not connect to {url} (as {url.split('//')[-1]}): rejected password={secret}"
    assert secret not in scrub(message, url)


def test_local_storages_are_shown_as_they_are():
    for url in ("sqlite:///studies/studies.db", "studies/bundled.journal", "/data/a@b:c.journal"):
        assert redact(url) == url  # a path is not a URL: nothing to hide, nothing hidden


# ---------------------------------------------------------------------------------------------------------
# 15.5 Mistyped configuration values; 16.4 validated before anything is created

MISTYPED = [
    ("study_name = 7", "--study-name must be a string, got 7"),
    ('results_dir = ["a"]', "--results-dir must be a string, got ['a']"),
    ("data_dir = 3", "--data-dir must be a string, got 3"),
    ("cache_dir = 3", "--cache-dir must be a string, got 3"),
    ("storage = 5", "--storage must be a string, got 5"),
    ("seed = -1", "--seed must be an integer >= 0, got -1"),
    ("trials = 2.5", "--trials must be an integer >= 1, got 2.5"),
    ("model = 3", "--model must be a string, got 3"),
    ("grid = [1]", "must be a [[grid]] table"),
]


@pytest.mark.parametrize("line,message", MISTYPED, ids=[m[0] for m in MISTYPED])
def test_mistyped_grid_values_are_one_line_and_leave_nothing(tmp_path, capsys, monkeypatch, line, message):
    monkeypatch.chdir(tmp_path)  # the default storage (studies/studies.db) and results would land here
    grid = tmp_path / "grid.toml"
    body = f'{line}\n[[grid]]\nalgos = ["fa"]\n' if not line.startswith("grid") else f"{line}\n"
    grid.write_text(body)
    assert main(["--config", str(grid)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]


OVERSIZED = [
    ("width = [20000]", "space parameter 'width': every choice must be an integer in [1, 16384], got 20000"),
    ("depth = 40", "space parameter 'depth': its value must be an integer in [1, 32], got 40"),
    ("batch_size = [100000]", "space parameter 'batch_size': every choice must be an integer in [1, 65536], got 100000"),
    # within the bounds, but 784-4096x4-10 has 784*4096 + 3*4096**2 + 4096*10 = 5.36e7 weights, x 32 bytes x 3 folds =
    # 4.79 GiB: more than the 1 GiB this machine "has"
    ("width = [64, 4096]\ndepth = [1, 4]", "space parameters width [64, 4096], depth [1, 4] reach networks of 5.36e+07 "
                                           "weights, which need about 4.79 GB to train 3 at once; this machine has 1 GB "
                                           "available: allow smaller values"),
]


@pytest.mark.parametrize("space,message", OVERSIZED, ids=["width", "depth", "batch", "memory"])
def test_a_space_whose_networks_could_not_be_built_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch,
                                                                                   space, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("hpo.space.tables.available_memory", lambda: 2**30)
    grid = tmp_path / "grid.toml"
    grid.write_text(f'trials = 1\n[space]\n{space}\n[[grid]]\nalgos = ["fa"]\ndatasets = ["mnist-5k"]\n')
    assert main(["--config", str(grid)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]


def test_non_utf8_grid_file_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "grid.toml"
    grid.write_bytes(b'study_name = "caf\xe9"\n[[grid]]\nalgos = ["fa"]\n')  # Latin-1, not UTF-8
    assert main(["--config", str(grid)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config file") and "is not UTF-8 text (byte 0xe9" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]


REFUSED_ON_THE_DATASET = [
    (["--model", "cnn", "--dataset", "teacher"], "--model cnn needs sequences (length, channels) or images"),
    (["--dataset", "digits", "--folds", "200"], "--folds must be at most 139 for dataset 'digits'"),
    (["--dataset", "digits", "--evals-per-epoch", "1000"], "--evals-per-epoch must be at most 7"),
    (["--dataset", "sinreg", "--algo", "sd"], "--algo sd is classification-only"),
]


@pytest.mark.parametrize("argv,message", REFUSED_ON_THE_DATASET, ids=[" ".join(r[0]) for r in REFUSED_ON_THE_DATASET])
def test_refused_on_the_loaded_dataset_before_any_storage_or_study_exists(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)  # where the default storage would be created
    assert main([*argv, "--trials", "1", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())  # no studies/studies.db, no results/


def test_a_grid_with_one_bad_study_creates_nothing(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    storage, results = tmp_path / "grid.journal", tmp_path / "results"
    grid.write_text(f'trials = 1\nepochs = 1\nstorage = "{storage}"\nresults_dir = "{results}"\n'
                    '[[grid]]\ndatasets = ["digits"]\nalgos = ["bp"]\n'
                    '[[grid]]\ndatasets = ["teacher"]\nmodels = ["cnn"]\nalgos = ["fa"]\n')
    assert main(["--config", str(grid)]) == 2
    assert "--model cnn needs" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]  # the good study did not run either


# ---------------------------------------------------------------------------------------------------------
# 15.6 and 16.5: SIGINT and SIGTERM stop a study cleanly, every time, and the study resumes


def start_study(storage: Path, results: Path, trials: int, *extra: str) -> subprocess.Popen:
    """A study process whose SIGINT is not inherited as ignored (as a shell's background job would have it)."""
    command = [sys.executable, "-m", "hpo.run", "--dataset", "digits", "--algo", "fa", "--folds", "2",
               "--pruner", "none", "--trials", str(trials), "--storage", str(storage), "--results-dir", str(results),
               *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


LAST_PARAMETER = "feedback_scale"  # the last parameter an fa MLP trial samples; then it builds and compiles


def wait_for_trial(storage: Path, process: subprocess.Popen, phase: str, study: str | None = None) -> None:
    """Until a trial of ``process``'s study is in ``phase``: "compiling" (every parameter sampled, not yet
    compiled) or "training" (compiled: ``compile_seconds`` is recorded just before training)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            names = [study] if study else study_names(open_storage(str(storage), create=False))
            trials = journal_study(storage, names[0]).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except (KeyError, IndexError, UsageError):
            trials = []
        for t in trials:
            if LAST_PARAMETER in t.params and ("compile_seconds" in t.user_attrs) == (phase == "training"):
                return
        time.sleep(0.02)
    raise AssertionError(f"no trial reached {phase}")


def interrupt(storage: Path, results: Path, trials: int, signum: int, phase: str, delay: float,
              *extra: str) -> tuple[int, str]:
    process = start_study(storage, results, trials, *extra)
    wait_for_trial(storage, process, phase)
    time.sleep(delay)
    process.send_signal(signum)
    out, err = process.communicate(timeout=TIMEOUT)
    return process.returncode, err


def assert_interrupted_cleanly(code: int, err: str, signum: int) -> None:
    assert code == 128 + signum, err  # 130 for SIGINT, 143 for SIGTERM; never 139 (segmentation fault)
    assert err.strip().splitlines() == [
        "interrupted: finished trials are stored; rerun the same command to resume"
    ], err


def assert_resumes_with_requeued_trials(storage: Path, results: Path, trials: int, interrupted: int) -> None:
    finished = run_cli("--dataset", "digits", "--algo", "fa", "--folds", "2", "--pruner", "none",
                       "--trials", str(trials), "--storage", str(storage), "--results-dir", str(results),
                       "--epochs", INTERRUPT_ARGS[-1])  # with the compilation cache: nothing to interrupt now
    assert finished.returncode == 0, finished.stderr
    all_trials = journal_study(storage, "digits-mlp-fa").get_trials()
    failed = [t for t in all_trials if t.state == TrialState.FAIL]
    assert len(failed) == interrupted  # one failed trial per interrupt, no more
    for t in failed:
        retries = [r for r in all_trials if r.system_attrs.get("failed_trial") == t.number]
        if "failed_trial" in t.system_attrs:
            assert not retries  # an interrupted retry is not retried again; a fresh trial takes its place
        else:  # re-queued once with the same parameters (those it had sampled when it was interrupted)
            assert len(retries) == 1 and t.params.items() <= retries[0].params.items()
    assert sum(t.state == TrialState.COMPLETE for t in all_trials) == trials
    assert not [t for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


# A fresh compilation cache per process: every trial compiles, so an interrupt can land during compilation (the
# moment that crashed with a segmentation fault); a larger epoch count leaves time to land in training too.
INTERRUPT_ARGS = ["--cache-dir", "none", "--epochs", "2"]


COMPILING = 2.0  # seconds after a trial's last parameter: inside its compilation (several seconds on a CPU)


@pytest.mark.slow  # a minute; SIGTERM is tested by default through the workers' parent, the finaliser case in-process
def test_sigint_during_compilation_and_sigterm_during_training_exit_cleanly_and_resume(tmp_path):
    """Before the fix, SIGINT in a compilation ended in a segmentation fault after the "interrupted" line (here 3
    runs in 4 interrupted 2 s after the last parameter, 4 in 4 at 3 s) and SIGTERM killed the process without
    re-queueing its trial."""
    storage, results = tmp_path / "s.journal", tmp_path / "results"
    for signum, phase, delay in ((signal.SIGINT, "compiling", COMPILING), (signal.SIGTERM, "training", 0.0)):
        code, err = interrupt(storage, results, 3, signum, phase, delay, *INTERRUPT_ARGS)
        assert_interrupted_cleanly(code, err, signum)
    assert_resumes_with_requeued_trials(storage, results, 3, interrupted=2)


@pytest.mark.slow
def test_ten_interrupts_at_random_points_exit_cleanly_every_time_and_resume(tmp_path):
    """Issue 16.5: one Ctrl-C in five ended in a segmentation fault right after the "interrupted" line: an XLA
    compilation left running by the interrupt, under the interpreter's shutdown (see hpo.parallel.interrupts)."""
    import random

    rng = random.Random(0)
    storage, results = tmp_path / "s.journal", tmp_path / "results"
    for i in range(10):
        signum = (signal.SIGINT, signal.SIGTERM)[i % 2]
        phase = rng.choice(["compiling", "training"])
        delay = rng.uniform(0.5, 3.0) if phase == "compiling" else rng.uniform(0.0, 0.5)
        code, err = interrupt(storage, results, 12, signum, phase, delay, *INTERRUPT_ARGS)
        assert_interrupted_cleanly(code, err, signum)
    assert_resumes_with_requeued_trials(storage, results, 12, interrupted=10)


def test_sigterm_to_the_parent_of_workers_stops_every_worker_and_requeues(tmp_path):
    """kill / scancel / docker stop reach the parent only: its workers must not train on as orphans."""
    storage, results = tmp_path / "s.journal", tmp_path / "results"
    process = start_study(storage, results, 6, "--workers", "2", "--epochs", "5")
    wait_for_trial(storage, process, "training")
    # the spawned workers, not multiprocessing's resource tracker, which exits on its own once the parent is gone
    workers = [pid for pid in child_pids(process.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("interrupted: "), err
    assert "Traceback" not in err
    for pid in workers:  # every worker has exited (none left training)
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    trials = journal_study(storage, "digits-mlp-fa").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING], (out, err)  # what each worker did
    interrupted = [t for t in trials if t.state == TrialState.FAIL and "surplus" not in t.user_attrs]
    assert interrupted and all(
        any(r.system_attrs.get("failed_trial") == t.number and r.state == TrialState.WAITING for r in trials)
        for t in interrupted
    )  # re-queued with the same parameters for the rerun


def child_pids(pid: int) -> list[int]:
    """Every process started by ``pid`` (its direct children, e.g. the spawned workers and their tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


# ---------------------------------------------------------------------------------------------------------
# 15.7 Report files honour the umask


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


# ---------------------------------------------------------------------------------------------------------
# 15.8 Smaller cases


def frozen_trial(state: TrialState, value=None, **attrs) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(state=state, value=value, user_attrs=attrs,
                                     intermediate_values={0: 3.5e32} if state == TrialState.PRUNED else None)


def test_a_pruned_trial_shows_why_it_was_pruned():
    diverged = frozen_trial(TrialState.PRUNED, pruned_reason="diverged: non-finite loss in epoch 2")
    assert trial_outcome(diverged, "mse") == "diverged: non-finite loss in epoch 2"  # not "mse 3.5e32"
    assert trial_outcome(frozen_trial(TrialState.COMPLETE, 0.9123), "accuracy") == "accuracy 0.9123"
    assert trial_outcome(frozen_trial(TrialState.FAIL, surplus="the total is reached"), "accuracy") == (
        "the total is reached"
    )


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


def test_two_processes_creating_a_new_sd_study_enqueue_its_warm_start_once(tmp_path):
    """The race: both see a new study (no attributes yet) and both enqueued the paper's configuration."""
    dataset = load_dataset("digits")
    journal = str(tmp_path / "s.journal")
    config = StudyConfig(algo="sd", dataset="digits", storage=journal)
    # Another process has just created the study and not yet written anything else: this one must not enqueue.
    optuna.create_study(study_name=config.name, storage=open_storage(journal), direction="maximize")
    open_study(config, dataset, open_storage(journal))
    assert not journal_study(Path(journal), config.name).get_trials()

    # Many processes creating the same new study at the same moment: one enqueue in all.
    config = StudyConfig(algo="sd", dataset="digits", storage=journal, study_name="raced")
    barrier = threading.Barrier(6)

    def create() -> None:
        storage = open_storage(journal)  # each its own storage object, as separate processes have
        barrier.wait()
        open_study(config, dataset, storage)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queued = journal_study(Path(journal), "raced").get_trials()
    assert len(queued) == 1 and queued[0].state == TrialState.WAITING and queued[0].user_attrs["starting_point"]


@pytest.fixture
def full_filesystem(tmp_path):
    """A real filesystem that runs out of space: a 12 MB tmpfs, room for one report set with its copy of plotly.js
    (needs mount rights; root in the test machine)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


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


def test_dashboard_on_a_network_address_warns_in_one_line(tmp_path):
    assert exposure_warning("127.0.0.1", 8080) is None and exposure_warning("localhost", 8080) is None
    assert exposure_warning("::1", 8080) is None
    warning = exposure_warning("0.0.0.0", 8080)
    assert warning.startswith("warning: --host 0.0.0.0 publishes the study storage to the network without "
                              "authentication") and "\n" not in warning
    storage = str(tmp_path / "s.journal")
    add_complete_study(storage, "digits-mlp-fa")
    # a child inherits an ignored SIGINT (as background jobs do), and pytest-xdist's workers can have it ignored:
    # the dashboard, like any program, then keeps ignoring Ctrl-C, so the child starts with the default
    process = subprocess.Popen([sys.executable, "-m", "hpo.dashboard", "--storage", storage, "--host", "0.0.0.0",
                                "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        banner = process.stdout.readline()
        assert banner.startswith("optuna-dashboard of ")
        assert process.stdout.readline() == "press Ctrl-C to stop\n"  # serving (or about to): Ctrl-C stops it
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()  # a dashboard that ignores Ctrl-C fails the test and is not left serving
            raise
    assert err.splitlines()[0].startswith("warning: --host 0.0.0.0 publishes the study storage")


def test_interrupt_exit_codes_follow_the_shell_convention():
    from hpo.parallel.interrupts import Interrupted, exit_code_of

    assert exit_code_of(Interrupted(signal.SIGINT)) == 130 and exit_code_of(Interrupted(signal.SIGTERM)) == 143
    assert exit_code_of(KeyboardInterrupt()) == 130


def test_a_signal_inside_a_finaliser_is_kept_silently_and_other_finaliser_errors_still_reported(monkeypatch):
    """JAX runs a garbage-collector callback; a SIGTERM that lands in one cannot be raised there and Python would
    print its traceback (seen once in the workers test). It must be silent and still be received."""
    import gc

    from hpo.parallel.interrupts import handle_interrupts, received

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reported.append(unraisable.exc_value))

    class SignalsWhenCollected:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)  # the handler runs here, inside the finaliser

    class FailsWhenCollected:
        def __del__(self):
            raise ValueError("a finaliser's own error")

    with handle_interrupts():
        SignalsWhenCollected()
        gc.collect()
        assert received() == signal.SIGTERM
        FailsWhenCollected()
        gc.collect()
        hook = sys.unraisablehook
    assert [type(e) for e in reported] == [ValueError]
    assert sys.unraisablehook is not hook and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


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


def test_a_full_disk_while_saving_the_best_network_is_one_line(tmp_path, full_filesystem, capsys):
    storage = tmp_path / "s.journal"
    results = full_filesystem / "results"
    filler = full_filesystem / "filler"
    free = os.statvfs(full_filesystem).f_bavail * os.statvfs(full_filesystem).f_frsize
    filler.write_bytes(b"x" * max(0, free - 8_000))  # room for a folder or two, not for the network's file
    assert main([*TINY, "--trials", "1", "--storage", str(storage), "--results-dir", str(results),
                 "--test-seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the best network to ") and "No space left on device" in err
    assert err.count("\n") == 1 and "the test scores are stored" in err
    assert journal_study(storage, "digits-mlp-bp").user_attrs["test"]["scores"]  # the result itself is kept
    assert not [p for p in results.rglob(".*") if p.is_file() and p.name != OWNER_FILE]  # no temporary file

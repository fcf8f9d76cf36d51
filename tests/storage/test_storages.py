"""Storages shared by many workers: exact totals, SIGKILL mid-trial and resume, clear errors, no password leaks.

Runs a real PostgreSQL server (tests/pg_server.py: its own cluster in a temp dir on 127.0.0.1) and real
``python -m hpo.run`` processes on a tiny study (digits, 1 epoch, 2 folds). Heartbeats are shortened through
HPO_HEARTBEAT_SECONDS / HPO_GRACE_SECONDS so that a killed worker's trial is noticed within seconds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pg_server
import pytest
from optuna.trial import TrialState

from hpo.errors import UsageError
from hpo.parallel.workers import counted_below
from hpo.storage import open_storage, redact

ROOT = Path(__file__).resolve().parents[2]
STUDY = "digits-mlp-bp"
TINY = ["--dataset", "digits", "--algo", "bp", "--epochs", "1", "--folds", "2", "--pruner", "none"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
KILLED = ["--epochs", "5"]  # kill tests: a longer training phase to catch the worker in (any speed works)
TIMEOUT = 150  # seconds a worker process may take at most on a loaded machine


@pytest.fixture(scope="module")
def postgres():
    reason = pg_server.missing_reason()
    if reason:
        pytest.skip(reason)
    with pg_server.PostgresServer.start() as server:
        yield server


def env(grace: int = 4) -> dict[str, str]:
    return {**os.environ, "HPO_HEARTBEAT_SECONDS": "1", "HPO_GRACE_SECONDS": str(grace), "PYTHONUNBUFFERED": "1"}


def worker(storage: str, results: Path, trials: int, *extra: str, grace: int = 4) -> subprocess.Popen:
    command = [sys.executable, "-m", "hpo.run", *TINY, "--trials", str(trials), "--storage", storage,
               "--results-dir", str(results), *extra]
    return subprocess.Popen(
        command, cwd=ROOT, env=env(grace), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, output
    return output


def trials_of(storage: str, study: str = STUDY) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=open_storage(storage, create=False)).get_trials()


def assert_exact(trials: list[optuna.trial.FrozenTrial], total: int) -> None:
    """``total`` finished trials, nothing left running, every surplus trial recorded as such, no repeats."""
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == total
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for t in trials:
        if "surplus" in t.user_attrs:
            assert t.state == TrialState.FAIL and not t.params
            assert counted_below(trials, t.number) >= total
    assert all(t.user_attrs["worker"]["trial"] == t.number for t in finished)  # each run by one claimed worker


def kill_mid_trial(
    process: subprocess.Popen, storage: str, study: str = STUDY, journal: Path | None = None
) -> optuna.trial.FrozenTrial:
    """SIGKILL ``process`` while it is training a trial: wait until the storage shows a running trial that has
    sampled all its parameters and compiled (``compile_seconds`` is recorded just before training), freeze the
    process (SIGSTOP), confirm the trial is still running (and, for a journal, that the process holds no file
    lock), then kill it. No sleeping and hoping."""
    deadline = time.monotonic() + TIMEOUT
    opened = None  # the study, opened once it exists, so that each poll is one quick read
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        opened = opened or _try_load(storage, study)
        running = [t for t in opened.get_trials(deepcopy=False) if training(t)] if opened else []
        if running:
            process.send_signal(signal.SIGSTOP)
            lock_held = journal is not None and os.path.lexists(f"{journal}.lock")
            still = [t for t in opened.get_trials() if training(t)]
            if still and not lock_held:
                process.kill()
                process.wait(timeout=30)
                process.stdout.close()
                return still[0]
            process.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the worker never showed a running trial")


def training(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.state == TrialState.RUNNING and "compile_seconds" in trial.user_attrs


def _try_load(storage: str, study: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=study, storage=open_storage(storage, create=False))
    except (KeyError, UsageError):  # the study or file is not created yet
        return None


def _poll_trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    opened = _try_load(storage, study)
    return opened.get_trials(deepcopy=False) if opened else []


def check_resumed(storage: str, killed: optuna.trial.FrozenTrial, total: int, study: str = STUDY) -> None:
    trials = trials_of(storage, study)
    assert_exact(trials, total)
    assert trials[killed.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1
    assert retries[0].params == killed.params
    assert retries[0].state in FINISHED


@pytest.mark.slow  # a minute of study processes on PostgreSQL
def test_two_concurrent_workers_reach_exact_total(postgres, tmp_path):
    total = 3
    # Started together (both create the schema and the study at once). A long grace period: the first worker
    # to start a trial is frozen until the other has started one too, so that both certainly work.
    processes = [worker(postgres.url, tmp_path / f"results{i}", total, grace=120) for i in range(2)]
    first = running_owner(postgres.url, {p.pid for p in processes})
    frozen = next(p for p in processes if p.pid == first)
    frozen.send_signal(signal.SIGSTOP)
    try:
        running_owner(postgres.url, {p.pid for p in processes} - {first})
    finally:
        frozen.send_signal(signal.SIGCONT)
    outputs = [finish(p) for p in processes]
    trials = trials_of(postgres.url)
    assert_exact(trials, total)
    assert {t.user_attrs["worker"]["pid"] for t in trials if t.state in FINISHED} == {p.pid for p in processes}
    params = [tuple(sorted(t.params.items())) for t in trials if t.state in FINISHED]
    assert len(set(params)) == total  # workers started together did not propose the same configurations
    for text in outputs:
        assert postgres.password not in text
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "summary.csv" for p in written)
    for path in written:  # summaries, charts, html: the password is nowhere
        assert postgres.password.encode() not in path.read_bytes(), path
    study = optuna.load_study(study_name=STUDY, storage=open_storage(postgres.url))
    stored = repr([study.user_attrs] + [(t.user_attrs, t.system_attrs) for t in trials])
    assert postgres.password not in stored


def running_owner(storage: str, pids: set[int]) -> int:
    """Wait until one of ``pids`` is training a trial (it has sampled parameters); return that pid."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for t in _poll_trials(storage, STUDY):
            owner = t.user_attrs.get("worker", {})
            if t.state == TrialState.RUNNING and t.params and owner.get("trial") == t.number and owner["pid"] in pids:
                return owner["pid"]
        time.sleep(0.05)
    raise AssertionError(f"none of {pids} started a trial")


@pytest.mark.slow  # a minute of study processes on PostgreSQL
def test_killed_worker_on_postgres_is_failed_by_heartbeat_and_retried(postgres, tmp_path):
    storage, study, total = postgres.url, "killed-on-postgres", 2
    name = ["--study-name", study]
    killed = kill_mid_trial(worker(storage, tmp_path / "r1", total, *name, *KILLED), storage, study)
    output = finish(worker(storage, tmp_path / "r2", total, *name, *KILLED))  # not on the same pid: heartbeats only
    assert "left running by dead process" not in output
    check_resumed(storage, killed, total, study)
    assert postgres.password not in output


@pytest.mark.parametrize("kind", [pytest.param("sqlite", marks=pytest.mark.slow), "journal"])  # one of them by default
def test_killed_worker_on_local_file_resumes(kind, tmp_path):
    journal = tmp_path / "studies.journal"
    storage = f"sqlite:///{tmp_path / 'studies.db'}" if kind == "sqlite" else str(journal)
    total = 2
    # A long heartbeat grace (SQLite has heartbeats too): the restarted worker must find the dead trial by its
    # owner's pid, at once, not by waiting for the heartbeat to go stale.
    first = worker(storage, tmp_path / "r1", total, *KILLED, grace=300)
    killed = kill_mid_trial(first, storage, STUDY, journal if kind == "journal" else None)
    # SQLite is the one-machine storage: resume it with two local worker processes (--workers, spawn).
    local = ["--workers", "2"] if kind == "sqlite" else []
    output = finish(worker(storage, tmp_path / "r2", total, *KILLED, *local, grace=300))
    assert f"trial #{killed.number} was left running by dead process {first.pid}" in output
    if local:
        assert "[w0] " in output and "[w1] " in output
    check_resumed(storage, killed, total)


def run_error(storage: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    command = [sys.executable, "-m", "hpo.run", *TINY, "--trials", "1", "--storage", storage,
               "--results-dir", str(tmp_path / "results")]
    result = subprocess.run(command, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    return result, time.monotonic() - start


def assert_one_line_error(result: subprocess.CompletedProcess, storage: str, secret: str) -> None:
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot open storage "), result.stderr
    assert redact(storage) in lines[0]
    assert secret not in result.stdout + result.stderr


def test_wrong_password_is_one_clear_line(postgres, tmp_path):
    storage = postgres.url_with_password("not-the-Password-42")
    result, seconds = run_error(storage, tmp_path)
    assert_one_line_error(result, storage, "not-the-Password-42")
    assert "password authentication failed" in result.stderr
    assert seconds < 60  # mostly interpreter and JAX start-up; the connection itself fails at once


def test_unreachable_server_is_one_clear_line(tmp_path):
    storage = f"postgresql://hpo:Secret-pw-7@127.0.0.1:{pg_server.free_port()}/hpo"  # nothing listens there
    result, _ = run_error(storage, tmp_path)
    assert_one_line_error(result, storage, "Secret-pw-7")
    assert "refused" in result.stderr


def test_silent_server_times_out_within_seconds():
    """A host that accepts the connection but never answers: the connect timeout, not a hang."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        storage = f"postgresql://hpo:Secret-pw-8@127.0.0.1:{listener.getsockname()[1]}/hpo"
        start = time.monotonic()
        with pytest.raises(UsageError) as error:
            open_storage(storage)
        assert time.monotonic() - start < 15
    assert str(error.value).startswith(f"cannot open storage {redact(storage)!r}")
    assert "Secret-pw-8" not in str(error.value) and "\n" not in str(error.value)


def test_heartbeat_settings_are_validated(monkeypatch):
    monkeypatch.setenv("HPO_GRACE_SECONDS", "1")
    monkeypatch.setenv("HPO_HEARTBEAT_SECONDS", "2")
    with pytest.raises(UsageError, match="HPO_GRACE_SECONDS"):
        open_storage("sqlite:///:memory:")


# ---------------------------------------------------------------------------------------------------------
# Passwords in every URL form, a database lost or frozen mid-study


def spawn(storage: str, results: Path, trials: int, *extra: str, **environment: str) -> subprocess.Popen:
    """A study process with its stdout and stderr apart (the one error line is on stderr)."""
    command = [sys.executable, "-m", "hpo.run", *TINY, "--trials", str(trials), "--storage", storage,
               "--results-dir", str(results), *extra]
    return subprocess.Popen(command, cwd=ROOT, env={**env(), **environment}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_until_training(storage: str, process: subprocess.Popen, study: str = STUDY) -> optuna.trial.FrozenTrial:
    deadline = time.monotonic() + TIMEOUT
    opened = None
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        opened = opened or _try_load(storage, study)
        running = [t for t in opened.get_trials(deepcopy=False) if training(t)] if opened else []
        if running:
            return running[0]
        time.sleep(0.05)
    raise AssertionError("the worker never started training")


def assert_lost_storage_line(err: str, storage: str, secret: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line, not a traceback
    assert lines[0].startswith(f"error: study '{STUDY}' lost its storage '{redact(storage)}': "), err
    assert lines[0].endswith("a running trial is recovered when a worker runs the study again")
    assert secret not in err


@pytest.mark.slow  # a minute of study processes on PostgreSQL
def test_passwords_in_the_query_string_or_from_pgpassword_are_never_shown(postgres, tmp_path, monkeypatch):
    """Every line of a run and the dashboard banner, with the password in the query string; and the
    documented password-free form (PGPASSWORD), which also keeps the password out of ``ps``."""
    base = f"postgresql://hpo@127.0.0.1:{postgres.port}/hpo"
    in_query = f"{base}?password={postgres.password}"
    output = finish(worker(in_query, tmp_path / "r1", 1, "--study-name", "password-forms"))
    assert "password-forms] 0 finished trials in " + f"{base}?password=***" in output
    assert postgres.password not in output

    monkeypatch.setenv("PGPASSWORD", postgres.password)  # libpq reads it when it connects
    study = optuna.load_study(study_name="password-forms", storage=open_storage(base, create=False))
    assert len(study.get_trials(states=FINISHED)) == 1

    dashboard = subprocess.Popen([sys.executable, "-m", "hpo.dashboard", "--storage", in_query, "--port", "0"],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not inherited ignored
    try:
        banner = dashboard.stdout.readline()
    finally:
        dashboard.send_signal(signal.SIGINT)
        rest, err = dashboard.communicate(timeout=60)
    assert banner.startswith(f"optuna-dashboard of {base}?password=*** on http://127.0.0.1:"), banner + err
    assert postgres.password not in banner + rest + err


def test_a_password_with_an_at_sign_is_hidden_whole(postgres):
    secret = "Se@cret-pw-9"  # SQLAlchemy cuts it at the "@" and takes "cret-pw-9@127.0.0.1" for the host
    storage = f"postgresql://hpo:{secret}@127.0.0.1:{postgres.port}/hpo"
    with pytest.raises(UsageError) as error:
        open_storage(storage)
    message = str(error.value)
    assert message.startswith("cannot open storage 'postgresql://hpo:***@127.0.0.1:")
    assert "cret-pw-9" not in message and "Se@" not in message and "\n" not in message


SHORT = ["--epochs", "2"]  # stopped and frozen servers: any moment of a trial does (its next request fails)


@pytest.fixture(scope="module")
def fragile_postgres():
    """A server of its own, for the tests that stop or freeze it."""
    reason = pg_server.missing_reason()
    if reason:
        pytest.skip(reason)
    with pg_server.PostgresServer.start() as server:
        yield server


@pytest.mark.slow  # a minute of study processes on PostgreSQL
def test_database_stopped_mid_study_is_one_line_exit_3_and_the_trial_is_recovered(fragile_postgres, tmp_path):
    server, total = fragile_postgres, 2
    storage = server.url
    process = spawn(storage, tmp_path / "r1", total, *SHORT)
    running = wait_until_training(storage, process)
    server.halt()  # as a crash of the database machine
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        server.resume()
    assert process.returncode == 3, err
    assert_lost_storage_line(err, storage, server.password)
    assert trials_of(storage)[running.number].state == TrialState.RUNNING  # left for recovery, not failed
    output = finish(worker(storage, tmp_path / "r2", total, *SHORT))  # its heartbeat is stale: failed, retried
    check_resumed(storage, running, total)
    assert server.password not in output


FROZEN_TIMEOUT = 2  # HPO_DB_TIMEOUT_SECONDS of the frozen-server test
# The documented bound (README "Storages"): a request left unanswered fails within HPO_DB_TIMEOUT_SECONDS + 20 s,
# and a worker makes one after every epoch. Slack: an epoch of the tiny study on a loaded machine, and exiting.
FROZEN_BOUND = FROZEN_TIMEOUT + 20 + 15


@pytest.mark.slow  # a minute of study processes on PostgreSQL
def test_frozen_database_stops_the_worker_within_the_documented_bound(fragile_postgres, tmp_path):
    server = fragile_postgres
    storage = f"postgresql://hpo:{server.password}@127.0.0.1:{server.port}/hpo"
    name = ["--study-name", "frozen"]
    process = spawn(storage, tmp_path / "r", 3, *name, *SHORT, HPO_DB_TIMEOUT_SECONDS=str(FROZEN_TIMEOUT))
    wait_until_training(storage, process, "frozen")
    pids = server.freeze()  # every server process stopped: connections stay open, nothing answers
    start = time.monotonic()
    try:
        out, err = process.communicate(timeout=FROZEN_BOUND + 30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"the worker still waited {FROZEN_BOUND + 30} s after the server froze") from None
    finally:
        server.thaw(pids)
    waited = time.monotonic() - start
    assert process.returncode == 3, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: study 'frozen' lost its storage '{redact(storage)}': ")
    assert waited < FROZEN_BOUND, waited


@pytest.mark.parametrize("scheme", ["", "sqlite:///"])
def test_a_fifo_as_storage_is_one_line_within_seconds(tmp_path, scheme):
    """Opening a FIFO blocks until a writer comes: a --storage that is one hung for ever."""
    fifo = tmp_path / "storage.fifo"
    os.mkfifo(fifo)
    run = subprocess.run([sys.executable, "-m", "hpo.run", "--dataset", "digits", "--trials", "1", "--storage",
                          f"{scheme}{fifo}", "--results-dir", str(tmp_path / "r")], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "is a FIFO, not a file" in run.stderr

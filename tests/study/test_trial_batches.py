"""Trial batches (--trial-batch K): trials that share programs train as one compiled program, each trial reports
and is pruned on its own and keeps a lone trial's attributes; exact totals, resumption, crash recovery and
--workers hold, on real storages (SQLite, a journal file, PostgreSQL started by the tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pg_server
import pytest
from optuna.trial import TrialState

from hpo.config import StudyConfig
from hpo.data import load_dataset
from hpo.parallel.workers import counted_below, run_trials
from hpo.storage import open_storage
from hpo.study import objective as objective_module
from hpo.study.objective import Objective
from hpo.study.runner import make_sampler
from models.compile import Compiler, provisional_mapping
from models.compile import compiler as compiler_module


def objective_of(config: StudyConfig, dataset, sharing: bool = True) -> Objective:
    """The study's objective with a compiler of its own: programs in memory only, sharing as the test says."""
    objective = Objective(config, dataset)
    objective.compiler = Compiler(sharing=sharing)
    return objective


ROOT = Path(__file__).resolve().parents[2]
STUDY = "digits-mlp-bp"
# every trial has the same program shape (one hidden layer of 32, batch 64), so a batch trains as one group
SHARED_SHAPE = {"depth": 1, "width": [32], "batch_size": [64]}
SPACE_FILE = "[space]\ndepth = 1\nwidth = [32]\nbatch_size = [64]\n"
TINY = ["--dataset", "digits", "--algo", "bp", "--epochs", "1", "--folds", "2", "--pruner", "none"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TIMEOUT = 240
LONE_ATTRS = {"fold_scores", "fold_std", "n_params", "curves", "diagnostics", "wall_seconds", "compile_seconds",
              "train_seconds", "overhead_seconds", "peak_memory_mb", "worker"}


# ----------------------------------------------------------------------------------------------------------
# In one process: grouping and pruning


@pytest.mark.filterwarnings("ignore:Fixed parameter lr_adam:UserWarning")  # 1e-5: below the range, on purpose
@pytest.mark.parametrize("fold_strategy", ["vmap", "sequential", "auto"])
def test_a_batch_trains_its_trials_as_one_group_and_prunes_each_on_its_own(monkeypatch, fold_strategy):
    """Three trials of one program shape: with vmapped runs one program over the three trials x two folds; with
    runs one after another (``auto`` undecided on a CPU too) trial by trial in the lone program, each told before
    the next trains. The pruner stops the one with a learning rate too small to learn in an epoch, the others
    complete with every attribute a lone trial has, and every trial's seconds add up."""
    config = StudyConfig(algo="bp", dataset="digits", folds=2, epochs=2, space={**SHARED_SHAPE, "optimizer": "adam"},
                         fold_strategy=fold_strategy)
    objective = objective_of(config, load_dataset("digits"), sharing=False)
    events = []
    real = objective_module.train_group

    def recording(members, *args, **kwargs):
        events.append(len(members))
        return real(members, *args, **kwargs)

    monkeypatch.setattr(objective_module, "train_group", recording)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.3))
    for lr in (1e-2, 1e-5, 3e-3):
        study.enqueue_trial({"lr_adam": lr, "activation": "relu"})
    trials = [study.ask() for _ in range(3)]
    heard = []
    outcomes = objective.run_batch(trials, lambda i, outcome: (heard.append(i), events.append(f"told {i}")))
    vmapped = (provisional_mapping() if fold_strategy == "auto" else fold_strategy) == "vmap"
    assert events == ([3, "told 0", "told 1", "told 2"] if vmapped else [1, "told 0", 1, "told 1", 1, "told 2"])
    assert objective.compiler.store.built == 1  # the group's program, or the lone trial's for all three
    assert sorted(heard) == [0, 1, 2]
    assert isinstance(outcomes[1], optuna.TrialPruned)
    assert isinstance(outcomes[0], float) and isinstance(outcomes[2], float) and outcomes[0] > 0.3
    for trial, outcome in zip(trials, outcomes):
        study.tell(trial, state=TrialState.PRUNED) if isinstance(outcome, Exception) else study.tell(trial, outcome)
    done = study.get_trials()
    assert "pruner stopped the trial after epoch 1" in done[1].user_attrs["pruned_reason"]
    for t in (done[0], done[2]):
        assert LONE_ATTRS - {"worker"} <= set(t.user_attrs)
        assert t.user_attrs["compile_seconds"] + t.user_attrs["train_seconds"] <= t.user_attrs["wall_seconds"] + 1e-6
    # the batch's seconds add up: each trial's share is recorded, pruned ones too
    assert all({"wall_seconds", "compile_seconds", "train_seconds", "overhead_seconds", "peak_memory_mb"}
               <= set(t.user_attrs) for t in done)


def test_a_trial_in_a_batch_trains_as_it_would_alone():
    config = StudyConfig(algo="bp", dataset="digits", folds=2, epochs=1, space={**SHARED_SHAPE, "optimizer": "adam"})
    dataset = load_dataset("digits")
    params = [{"lr_adam": lr, "activation": act} for lr, act in ((1e-2, "relu"), (3e-3, "tanh"))]
    together = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for p in params:
        together.enqueue_trial(p)
    batch = objective_of(config, dataset, sharing=False).run_batch([together.ask() for _ in params])
    alone = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    lone = []
    for p in params:
        alone.enqueue_trial(p)
        lone.append(objective_of(config, dataset, sharing=False)(alone.ask()))
    assert batch == pytest.approx(lone, abs=1e-6)  # same trial numbers, same seeds: the same networks


TWO_SHAPES = {"depth": 1, "width": [16, 32], "batch_size": [64], "optimizer": "adam", "activation": "relu"}


@pytest.mark.parametrize("ahead", [True, False])
def test_a_later_groups_program_compiles_in_the_background_while_the_first_group_trains(monkeypatch, ahead):
    """Two trials of two program shapes, compiling ahead: the second's program compiles in a background thread
    while the first trains (its first epoch waits until that compilation has begun, so a batch that compiled in
    turn would not get past it), each trial counts the seconds it waited for its program as compile seconds and
    the thread's as ``background_compile_seconds``, and both train as they would alone. Not compiling ahead
    (``--no-compile-ahead``, and the default on a small CPU), each compiles in turn as it trains."""
    config = StudyConfig(algo="bp", dataset="digits", folds=2, epochs=2, space=TWO_SHAPES, fold_strategy="sequential",
                         compile_ahead=ahead)
    dataset = load_dataset("digits")
    compiled_by: dict[int, str] = {}
    second_compiling = threading.Event()
    real_compile = compiler_module.compile_epoch

    def recording_compile(program):
        width = program.spec.config.hidden[0]
        compiled_by[width] = threading.current_thread().name
        if width == 32:
            second_compiling.set()
        return real_compile(program)

    monkeypatch.setattr(compiler_module, "compile_epoch", recording_compile)
    objective = objective_of(config, dataset, sharing=False)
    waited = []
    if ahead:
        objective.on_epoch = lambda number, epoch, *_: waited.append(second_compiling.wait(20)) if (number, epoch) == (0, 1) else None
    study = optuna.create_study(direction="maximize")
    for width in (16, 32):
        study.enqueue_trial({"width": width, "lr_adam": 3e-3})
    trials = [study.ask() for _ in range(2)]
    together = objective.run_batch(trials)
    assert objective.compiler.store.built == 2 and set(compiled_by) == {16, 32}
    for trial in trials:
        seconds = study._storage.get_trial(trial._trial_id).user_attrs
        assert seconds["compile_seconds"] + seconds["train_seconds"] <= seconds["wall_seconds"] + 1e-6
        assert ("background_compile_seconds" in seconds) == ahead
    if ahead:
        assert waited and all(waited)  # the first trial trained while the second's program compiled
        assert all(name.startswith("compile") for name in compiled_by.values())
    else:
        assert set(compiled_by.values()) == {threading.main_thread().name}
    alone = optuna.create_study(direction="maximize")
    lone = []
    for width in (16, 32):
        alone.enqueue_trial({"width": width, "lr_adam": 3e-3})
        lone.append(objective_of(config, dataset, sharing=False)(alone.ask()))
    assert together == pytest.approx(lone, abs=1e-6)


def test_a_narrower_group_trains_after_the_group_that_can_host_it_and_in_its_program(monkeypatch):
    """A batch of a one-layer network of 16 and a two-layer one of 32 at batch size 64, and a one-layer one at
    32: the larger at 64 trains before the narrower, its program and the other batch size's compiled ahead; the
    narrower one's program is not compiled ahead but decided as it trains, once the larger has trained: on
    digits padding into it costs far less than a compilation, so it trains in the larger program
    (``models.sharing``) and the batch compiles two programs."""
    space = {**TWO_SHAPES, "depth": {"low": 1, "high": 2}, "batch_size": [32, 64]}
    config = StudyConfig(algo="bp", dataset="digits", folds=2, epochs=2, space=space, fold_strategy="sequential",
                         compile_ahead=True)
    objective = objective_of(config, load_dataset("digits"))
    trained = []
    real = objective_module.train_group

    def recording(members, *args, **kwargs):
        trained.append((members[0].config.hidden, members[0].config.batch_size))
        return real(members, *args, **kwargs)

    monkeypatch.setattr(objective_module, "train_group", recording)
    study = optuna.create_study(direction="maximize")
    for depth, width, batch_size in ((1, 16, 64), (1, 16, 32), (2, 32, 64)):
        study.enqueue_trial({"depth": depth, "width": width, "batch_size": batch_size, "lr_adam": 3e-3})
    trials = [study.ask() for _ in range(3)]
    outcomes = objective.run_batch(trials)
    assert all(isinstance(outcome, float) for outcome in outcomes)
    assert trained.index(((32, 32), 64)) < trained.index(((16,), 64)) and len(trained) == 3
    attrs = [study._storage.get_trial(t._trial_id).user_attrs for t in trials]
    assert attrs[0]["shared_program"] == "hidden (16,) in the program of (32, 32)"
    assert "background_compile_seconds" not in attrs[0]
    assert all("shared_program" not in a and a["background_compile_seconds"] > 0 for a in attrs[1:])
    assert objective.compiler.store.built == 2


def test_startup_trials_are_asked_together_and_sample_what_they_would_alone(tmp_path, monkeypatch):
    """A worker asks the study's random start-up trials as one batch (then one trial at a time): their
    parameters, seeds and scores are those of a study that asks them one by one, on a real storage."""
    config = StudyConfig(algo="bp", dataset="digits", folds=2, epochs=1, space={**TWO_SHAPES, "width": [16, 32]},
                         fold_strategy="sequential", pruner="none")
    dataset = load_dataset("digits")
    runs = {}
    for startup in (0, 3):
        storage = open_storage(str(tmp_path / f"startup-{startup}.journal"))
        study = optuna.create_study(storage=storage, study_name=STUDY, direction="maximize",
                                    sampler=make_sampler(config))
        objective = objective_of(config, dataset, sharing=False)
        batches = []

        def counting(trials, *args, real=objective.run_batch, sizes=batches, **kwargs):
            sizes.append(len(trials))
            return real(trials, *args, **kwargs)

        objective.run_batch = counting
        run_trials(study, storage, str(tmp_path), objective, 4, lambda line: None, lambda *a: None, startup=startup)
        runs[startup] = [(t.number, t.params, t.value) for t in study.get_trials()]
        assert batches == ([3, 1] if startup else [1, 1, 1, 1])  # the start-up trials together, then one at a time
    assert runs[3] == runs[0]
    assert len({params["width"] for _, params, _ in runs[3]}) == 2


# ----------------------------------------------------------------------------------------------------------
# Through the command line, on real storages


def space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(SPACE_FILE)
    return path


def worker(storage: str, tmp_path: Path, trials: int, *extra: str, grace: int = 300) -> subprocess.Popen:
    command = [sys.executable, "-m", "hpo.run", *TINY, "--trials", str(trials), "--storage", storage,
               "--results-dir", str(tmp_path / "results"), "--space", str(space_file(tmp_path)), *extra]
    env = {**os.environ, "HPO_HEARTBEAT_SECONDS": "1", "HPO_GRACE_SECONDS": str(grace), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, output
    return output


def trials_of(storage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY, storage=open_storage(storage, create=False)).get_trials()


def assert_exact(trials: list[optuna.trial.FrozenTrial], total: int) -> None:
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == total
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for t in trials:
        if "surplus" in t.user_attrs:
            assert counted_below(trials, t.number) >= total
    for t in finished:
        assert LONE_ATTRS <= set(t.user_attrs), t.user_attrs.keys()
        assert t.user_attrs["worker"]["trial"] == t.number


@pytest.mark.slow  # 30-50 s of study processes or eager training; run with -m slow
def test_batches_reach_the_exact_total_and_resume(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    finish(worker(storage, tmp_path, 4, "--trial-batch", "3"))
    assert_exact(trials_of(storage), 4)
    output = finish(worker(storage, tmp_path, 7, "--trial-batch", "3"))  # resumed: only the missing 3 run
    trials = trials_of(storage)
    assert_exact(trials, 7)
    assert len(trials) == 7 and "4 finished trials" in output


# a batch of 3 trials trained as one program: with --fold-strategy auto, a loaded machine's measurement may train
# them one after another (each lone trial ends before the next compiles, and no whole batch is ever running)
ONE_PROGRAM_BATCH = ("--trial-batch", "3", "--epochs", "6", "--fold-strategy", "vmap")


def kill_mid_batch(process: subprocess.Popen, storage: str, size: int) -> list[optuna.trial.FrozenTrial]:
    """SIGKILL ``process`` while a whole batch of ``size`` trials trains (every one has compiled): freeze it,
    confirm, kill."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            running = [t for t in trials_of(storage) if t.state == TrialState.RUNNING and "compile_seconds" in t.user_attrs]
        except (KeyError, Exception):  # noqa: BLE001 -- the storage or study does not exist yet
            running = []
        if len(running) >= size:
            process.send_signal(signal.SIGSTOP)
            still = [t for t in trials_of(storage) if t.state == TrialState.RUNNING and "compile_seconds" in t.user_attrs]
            if len(still) >= size:
                process.kill()
                process.wait(timeout=30)
                process.stdout.close()
                return still
            process.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the worker never trained a whole batch")


def check_recovered(storage: str, killed: list[optuna.trial.FrozenTrial], total: int) -> None:
    trials = trials_of(storage)
    assert_exact(trials, total)
    for dead in killed:
        assert trials[dead.number].state == TrialState.FAIL
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
        assert len(retries) == 1 and retries[0].params == dead.params and retries[0].state in FINISHED


@pytest.mark.slow  # test_storage kills a lone trial's worker by default
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_killed_batch_is_failed_and_requeued_trial_by_trial(kind, tmp_path):
    storage = str(tmp_path / "studies.journal") if kind == "journal" else f"sqlite:///{tmp_path / 'studies.db'}"
    first = worker(storage, tmp_path, 3, *ONE_PROGRAM_BATCH)
    killed = kill_mid_batch(first, storage, 3)
    output = finish(worker(storage, tmp_path, 3, *ONE_PROGRAM_BATCH))
    for dead in killed:
        assert f"trial #{dead.number} was left running by dead process {first.pid}" in output
    check_recovered(storage, killed, 3)


@pytest.mark.slow  # a PostgreSQL server of its own and a heartbeat grace period to wait out
def test_a_killed_batch_on_postgres_is_failed_by_heartbeats_and_requeued(tmp_path):
    reason = pg_server.missing_reason()
    if reason:
        pytest.skip(reason)
    with pg_server.PostgresServer.start() as server:
        first = worker(server.url, tmp_path, 3, *ONE_PROGRAM_BATCH, grace=4)
        killed = kill_mid_batch(first, server.url, 3)
        finish(worker(server.url, tmp_path, 3, *ONE_PROGRAM_BATCH, grace=4))
        check_recovered(server.url, killed, 3)


@pytest.mark.slow  # two spawned worker processes, each starting JAX
def test_batches_of_several_workers_reach_the_exact_total(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    output = finish(worker(storage, tmp_path, 6, "--trial-batch", "2", "--workers", "2"))
    assert "[w0] " in output and "[w1] " in output
    trials = trials_of(storage)
    assert_exact(trials, 6)
    assert len({t.user_attrs["worker"]["pid"] for t in trials if t.state in FINISHED}) == 2

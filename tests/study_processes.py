"""What the tests that run studies as real processes share: the tiny study, how to start and watch one, and
how to find its workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from hpo.errors import UsageError
from hpo.storage import open_storage, study_names

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



def child_pids(pid: int) -> list[int]:
    """Every process started by ``pid`` (its direct children, e.g. the spawned workers and their tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found



def frozen_trial(state: TrialState, value=None, **attrs) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(state=state, value=value, user_attrs=attrs,
                                     intermediate_values={0: 3.5e32} if state == TrialState.PRUNED else None)



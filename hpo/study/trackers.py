"""Experiment trackers: every finished trial of a study also logged to MLflow or Weights & Biases.

    python -m hpo.run --algo fa --trials 50 --tracker mlflow   # pip install -e ".[mlflow]"; then: mlflow ui
    python -m hpo.run --algo fa --trials 50 --tracker wandb    # pip install -e ".[wandb]"; offline unless WANDB_MODE

The study storage stays the record (resume, workers, reports); a tracker receives a copy of each trial when it
has finished (complete or pruned), from the worker that ran it: its parameters, its cross-validated score, the
fold scores, and the learning curves and diagnostics (mean over folds at every evaluation point; for a pruned
trial, which stores no curves, its reported validation score per epoch).

* **mlflow** logs through MLflow's own client (one MLflow run per trial, named by its number, in an experiment
  named after the study: parameters, the CV score, fold scores and curves as metrics, the study's settings, the
  trial's state and pruning reason as tags). The store is MLflow's default, the local SQLite file ``mlflow.db``
  in the working directory (MLflow 3 refuses a plain-directory store), or ``$MLFLOW_TRACKING_URI``;
  ``mlflow ui`` in the same directory shows it.
* **wandb** logs one W&B run per trial, grouped by study, in project ``$WANDB_PROJECT`` (default
  ``bioplausible-hpo``). It runs offline unless ``WANDB_MODE`` says otherwise, so a study never needs a network
  or an account: the runs are written under ``./wandb`` (or ``$WANDB_DIR``) and ``wandb sync`` uploads them.

A missing extra is a one-line error before anything is created (``check_tracker``). A tracker that fails to log
a trial prints one line and the study goes on: the trial is safe in the study storage either way.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial

from hpo.errors import UsageError
from hpo.record import StudyRecord, decode_curves, read_study, read_trial
from hpo.storage import redact

TrialCallback = Callable[[optuna.Study, FrozenTrial], None]

EXTRAS = {"mlflow": ("mlflow",), "wandb": ("wandb",)}  # tracker -> modules its extra installs
WANDB_PROJECT = "bioplausible-hpo"  # default W&B project ($WANDB_PROJECT overrides)


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (MLflow takes seconds)."""
    if module in sys.modules:  # find_spec refuses some modules once they are imported
        return True
    return importlib.util.find_spec(module) is not None


def check_tracker(name: str) -> None:
    """Raise a one-line UsageError if the packages of tracker ``name`` are not installed."""
    missing = [module for module in EXTRAS.get(name, ()) if not installed(module)]
    if missing:
        raise UsageError(
            f"--tracker {name} needs {' and '.join(m.replace('_', '-') for m in missing)}, "
            f"which {'is' if len(missing) == 1 else 'are'} not installed; "
            f"install it with: pip install -e '.[{name}]'"
        )


def metric_key(metric: str) -> str:
    """The tracker's name of a study's objective: ``cv_accuracy``, ``cv_mse``."""
    return f"cv_{metric}"


def trial_curves(trial: FrozenTrial) -> list[dict[str, float]]:
    """The trial's curves as one dict per evaluation point (mean over folds; ``epoch``: its position in epochs).

    A trial that stored no curves (pruned) gives its intermediate values: the mean validation score per epoch.
    """
    attr = read_trial(trial).curves
    if attr and "series" in attr:
        import numpy as np

        epochs, series = decode_curves(attr)
        points = []
        for i, epoch in enumerate(epochs):
            point = {"epoch": float(epoch)}
            for name, folds in series.items():
                column = folds[:, i]
                if np.isfinite(column).any():
                    point[name] = float(np.nanmean(column))
            points.append(point)
        return points
    return [{"epoch": float(step + 1), "val_score": float(v)} for step, v in sorted(trial.intermediate_values.items())]


def trial_summary(trial: FrozenTrial, metric: str) -> dict[str, Any]:
    """Scalars of one trial: state, CV score, fold scores, reason of a pruned trial, timing and size."""
    summary: dict[str, Any] = {"state": trial.state.name.lower()}
    if trial.value is not None:
        summary[metric_key(metric)] = float(trial.value)
    record = read_trial(trial)
    for i, score in enumerate(record.fold_scores or []):
        summary[f"fold_{i}_{metric}"] = float(score)
    for key in ("fold_std", "wall_seconds", "compile_seconds", "train_seconds", "n_params", "pruned_reason"):
        if getattr(record, key) is not None:
            summary[key] = getattr(record, key)
    return summary


class MLflowTracker:
    """One MLflow run per trial (named by its number) in one experiment per study, through MLflow's own client:
    parameters, the CV score, fold scores and the rest of ``trial_summary`` as metrics, the curves per evaluation
    point, and the study's settings, the trial's state and pruning reason as tags."""

    def __init__(self, metric: str):
        import mlflow

        # MLflow creating its database and each experiment: INFO lines that ask nothing of the user
        for logger in ("alembic", "mlflow"):
            logging.getLogger(logger).setLevel(logging.WARNING)
        self.metric = metric
        self.client = mlflow.MlflowClient()
        self.experiments: dict[str, str] = {}  # study name -> experiment id

    def where(self) -> str:
        import mlflow

        return f"MLflow at {redact(mlflow.get_tracking_uri())} (view with: mlflow ui)"

    def experiment(self, name: str) -> str:
        """The id of the study's experiment, created by the first worker that logs to it."""
        from mlflow.exceptions import MlflowException

        if name not in self.experiments:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                try:
                    self.experiments[name] = self.client.create_experiment(name)
                except MlflowException:  # another worker created it in the meantime
                    self.experiments[name] = self.client.get_experiment_by_name(name).experiment_id
            else:
                self.experiments[name] = found.experiment_id
        return self.experiments[name]

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        summary = trial_summary(trial, self.metric)
        tags: dict[str, str] = {**{k: str(v) for k, v in _plain(read_study(study)).items()},
                                **{k: str(summary[k]) for k in ("state", "pruned_reason") if k in summary}}
        run = self.client.create_run(self.experiment(study.study_name), run_name=str(trial.number))
        metrics = [Metric(k, float(v), now, 0) for k, v in summary.items() if isinstance(v, int | float)]
        for step, point in enumerate(trial_curves(trial), start=1):  # step: evaluation point (= epoch at 1 per epoch)
            metrics += [Metric(name, value, now, step) for name, value in point.items() if name != "epoch"]
        params = [Param(k, str(v)) for k, v in trial.params.items()]
        tag_list = [RunTag(k, v) for k, v in tags.items()]
        for start in range(0, max(len(metrics), 1), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(run.info.run_id, metrics=metrics[start : start + 1000],
                                  params=params if start == 0 else [], tags=tag_list if start == 0 else [])
        self.client.set_terminated(run.info.run_id, "FINISHED" if trial.state.name == "COMPLETE" else "KILLED")


class WandbTracker:
    """One W&B run per trial, grouped by study: config = parameters and study settings, history = curves,
    summary = CV score, fold scores and the rest of ``trial_summary``."""

    def __init__(self, metric: str):
        import wandb

        self.wandb = wandb
        self.metric = metric
        self.mode = os.environ.get("WANDB_MODE") or "offline"  # never needs a network or an account by default

    def where(self) -> str:
        project = os.environ.get("WANDB_PROJECT") or WANDB_PROJECT
        directory = os.environ.get("WANDB_DIR") or "."
        upload = "; upload with: wandb sync" if self.mode == "offline" else ""
        return f"W&B project {project!r}, {self.mode} mode, runs under {directory}/wandb{upload}"

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        wandb = self.wandb
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True)
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT,
            group=study.study_name,
            name=f"{study.study_name}-trial-{trial.number}",
            job_type="trial",
            tags=[trial.state.name.lower()],
            config={**trial.params, "study": study.study_name, "trial": trial.number, **_plain(read_study(study))},
            mode=self.mode,
            reinit="create_new",
            settings=settings,
        )
        try:
            for step, point in enumerate(trial_curves(trial), start=1):
                run.log(point, step=step)
            run.summary.update(trial_summary(trial, self.metric))
        finally:
            run.finish()


def _plain(record: StudyRecord) -> dict[str, Any]:
    """The study's settings (numbers and names), not records such as its space or test scores."""
    return {k: v for k, v in record.to_attrs().items() if isinstance(v, str | int | float | bool)}


TRACKER_CLASSES: dict[str, type[MLflowTracker] | type[WandbTracker]] = {"mlflow": MLflowTracker,
                                                                         "wandb": WandbTracker}


def make_tracker(name: str, metric: str, out: Callable[[str], None] = print) -> TrialCallback | None:
    """The trial callback of tracker ``name`` (None for ``none``), after one line saying where trials go;
    failures to log a trial are reported, not raised."""
    if name == "none":
        return None
    check_tracker(name)
    tracker = TRACKER_CLASSES[name](metric)
    out(f"logging every trial to {tracker.where()}")

    def log(study: optuna.Study, trial: FrozenTrial) -> None:
        try:
            tracker(study, trial)
        except Exception as error:  # noqa: BLE001 -- the trial is stored; one line, and the study goes on
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            print(f"warning: {name} could not log trial #{trial.number}: {first}", file=sys.stderr, flush=True)

    return log

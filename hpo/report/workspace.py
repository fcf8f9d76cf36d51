"""Helpers of the workspace notebook (``notebooks/workspace.ipynb``): open studies, pick trials, plot curves.

The notebook only calls these and ``hpo.report.summary``; everything it shows can be produced from a script too::

    from hpo.report.workspace import best_trial, open_study, study_folder, trial_curve_plots
    study = open_study("studies/bundled.journal", "digits-mlp-fa")
    trial_curve_plots(study, best_trial(study), study_folder("results/bundled", "digits-mlp-fa"))
"""

from __future__ import annotations

import os
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.config import DEFAULT_STORAGE
from hpo.errors import UsageError
from hpo.files import study_folder
from hpo.record import decode_curves, read_study, read_trial
from hpo.report.folders import storage_label
from hpo.storage import open_storage, redact, study_names

STORAGE_ENV = "HPO_STORAGE"  # the notebook's storage when set (tests and scripts inject one this way)
RESULTS_ENV = "HPO_RESULTS_DIR"  # the notebook's results directory when set
NOTEBOOK_OUTPUT = Path("notebooks") / "output"  # where the notebook's charts go by default (ignored by git)
__all__ = ["best_trial", "notebook_settings", "open_study", "study_folder", "top_level_charts", "trial_curve_plots"]


def project_root() -> Path:
    """The repository root (where ``studies/`` and ``results/`` live), whatever the notebook's directory."""
    return Path(__file__).resolve().parents[2]


def notebook_settings() -> tuple[str, str]:
    """(storage URL, results directory) of the notebook: the environment's, else the default storage of
    ``hpo.run`` and ``notebooks/output/<storage name>``. Not the storage's own folder under ``results/``: the
    notebook redraws every chart, and the committed ones are ``python -m hpo.report``'s to write."""
    storage = os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    return storage, os.environ.get(RESULTS_ENV) or str(NOTEBOOK_OUTPUT / storage_label(storage))


def open_study(storage_url: str, name: str) -> optuna.Study:
    """Load study ``name``; an unknown name is an error listing the names the storage has."""
    storage = open_storage(storage_url, create=False)
    names = study_names(storage)
    if name not in names:
        raise UsageError(f"no study {name!r} in {redact(storage_url)!r}; studies: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def best_trial(study: optuna.Study) -> FrozenTrial:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UsageError(f"study {study.study_name!r} has no complete trial yet")
    return study.best_trial


def top_level_charts(results_dir: str | Path) -> list[Path]:
    """The cross-study PNG charts ``hpo.report.summary`` wrote at the top of ``results_dir`` (comparison first)."""
    found = sorted(Path(results_dir).glob("[!.]*.png"), key=lambda p: (p.name != "comparison.png", p.name))
    return found


def trial_curve_plots(study: optuna.Study, trial: FrozenTrial, directory: str | Path) -> list[Path]:
    """Plot one trial's learning curves (and alignment and weight change, when it recorded diagnostics) into
    ``directory`` with the plotting functions of ``hpo.report.curves``; return the PNGs written. For the best trial and
    ``study_folder(results, study.study_name)`` these are the files the report writes."""
    from hpo.report.curves import alignment_png, learning_curves_png, weight_change_png

    attr = read_trial(trial).curves
    if not attr or "series" not in attr:
        raise UsageError(f"trial #{trial.number} of {study.study_name!r} has no stored curves")
    epochs, series = decode_curves(attr)
    directory = Path(directory)
    title = f"{study.study_name} #{trial.number}"
    written = [directory / "curves.png"]
    learning_curves_png(title, epochs, series, written[0], read_study(study).metric)
    for name, plot in (("alignment.png", alignment_png), ("weight_change.png", weight_change_png)):
        if plot(title, epochs, series, directory / name):
            written.append(directory / name)
    return written

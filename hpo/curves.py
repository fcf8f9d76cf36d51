"""Learning curves and diagnostics of every trial: their compact storage format and their plots.

Storage. A complete trial keeps two Optuna user attributes (JSON, so the dashboard shows them and the report
reads them back without retraining):

* ``curves``: ``{"epoch": [...], "series": {name: [[fold 1 values], [fold 2 values], ...]}}`` with one value
  per evaluation point (``epoch`` is each point's position in epochs), for the learning curves
  (``train_loss``, ``train_score``, ``val_loss``, ``val_score``) and the diagnostics of
  ``models.diagnostics`` (``update_angle/<layer>``, ``wb_angle/<layer>``, ...). Values have 4 significant
  digits; an undefined value (an angle to an all-zero gradient) is ``null``.
* ``diagnostics``: the final value of every diagnostic (mean over folds), for tables and filters.

Why user attributes and not Optuna artifacts: they live in the study storage itself, so every backend works
the same (a PostgreSQL study shared by workers on several machines needs no shared filesystem for an artifact
store), they are copied and committed with the storage, and the dashboard shows them. They are small: a
network of 3 hidden layers with diagnostics (24 series), 10 epochs, 3 folds and one evaluation per epoch
stores about 6 kB per trial (300 kB for a 50-trial study; pruned trials store no curves);
``tests/test_diagnostics.py`` checks the bound. ``--evals-per-epoch N`` multiplies it by N.

Plots (``write_curve_plots``, called by ``hpo.report.write_reports``): for the best trial of each study,
``results/studies/<study>/curves.png`` (learning curves per fold and mean), ``alignment.png`` (angles per
layer over training) and ``weight_change.png``; across studies, ``results/alignment.png`` (final angles of
every rule, grouped by dataset and model).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from hpo.files import atomic_path, pyplot, study_folder

LEARNING = ("train_loss", "train_score", "val_loss", "val_score")
SIGNIFICANT = 4  # digits kept in storage: angles to 0.01 degree, losses to 0.1 %


def _compact(value: float) -> float | None:
    value = float(value)
    return None if not math.isfinite(value) else float(f"{value:.{SIGNIFICANT}g}")


def encode_curves(points: dict[str, np.ndarray], point_epochs: np.ndarray) -> dict[str, Any]:
    """The ``curves`` user attribute from ``CVResult.points`` ((points, folds) arrays) and their positions."""
    return {
        "epoch": [_compact(e) for e in point_epochs],
        "series": {name: [[_compact(v) for v in fold] for fold in np.asarray(a).T] for name, a in points.items()},
    }


def result_curves(result: Any) -> dict[str, Any]:
    """The ``curves`` user attribute of a ``CVResult``: its evaluation points, or for a trainer that records
    none (one evaluation per epoch, e.g. segregated dendrites) its per-epoch curves, at epochs 1, 2, ..."""
    if result.points:
        return encode_curves(result.points, result.point_epochs)
    n_epochs = len(next(iter(result.curves.values())))
    return encode_curves(result.curves, np.arange(1, n_epochs + 1))


def decode_curves(attr: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Positions (points,) and name -> (folds, points) float arrays (NaN where stored as null)."""
    epochs = np.asarray(attr["epoch"], float)
    series = {name: np.array(folds, dtype=float) for name, folds in attr["series"].items()}
    return epochs, series


def final_diagnostics(points: dict[str, np.ndarray]) -> dict[str, float | None]:
    """The ``diagnostics`` user attribute: each diagnostic's value at the last point, mean over folds."""
    return {
        name: _compact(np.nanmean(a[-1])) if np.isfinite(a[-1]).any() else None
        for name, a in points.items()
        if name not in LEARNING
    }


# ----------------------------------------------------------------------------------------------------------
# Plots


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    pyplot().close(fig)


def _layered(series: dict[str, np.ndarray], metric: str) -> dict[str, np.ndarray]:
    prefix = f"{metric}/"
    return {name[len(prefix):]: a for name, a in series.items() if name.startswith(prefix)}


def _mean_and_folds(ax, epochs: np.ndarray, folds: np.ndarray, label: str, colour) -> None:
    for fold in folds:
        ax.plot(epochs, fold, color=colour, alpha=0.3, lw=0.8)
    ax.plot(epochs, np.nanmean(folds, axis=0), color=colour, lw=1.8, label=label)


def learning_curves_png(title: str, epochs: np.ndarray, series: dict[str, np.ndarray], path: Path) -> None:
    """Loss and score, train and validation, per fold (thin) and mean over folds (thick)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, kind in zip(axes, ("loss", "score")):
        for split, colour in (("train", "#264653"), ("val", "#e76f51")):
            if f"{split}_{kind}" in series:
                _mean_and_folds(ax, epochs, series[f"{split}_{kind}"], split, colour)
        ax.set_xlabel("epoch")
        ax.set_ylabel(kind)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: learning curves (thin: folds, thick: mean)", fontsize=10)
    _save(fig, path)


ANGLE_PANELS = (
    ("update_angle", "rule's update vs backprop gradient"),
    ("error_angle", "delivered hidden error vs backprop's"),
    ("wb_angle", "forward W vs feedback B"),
)


def alignment_png(title: str, epochs: np.ndarray, series: dict[str, np.ndarray], path: Path) -> bool:
    """One panel per kind of angle present, one line per layer (mean over folds, band: min-max over folds)."""
    panels = [(m, t, _layered(series, m)) for m, t in ANGLE_PANELS if _layered(series, m)]
    if not panels:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (_, subtitle, by_layer) in zip(axes[0], panels):
        for layer, folds in by_layer.items():
            line = ax.plot(epochs, np.nanmean(folds, 0), lw=1.6, label=layer)[0]
            ax.fill_between(epochs, np.nanmin(folds, 0), np.nanmax(folds, 0), color=line.get_color(), alpha=0.15)
        ax.axhline(90, color="grey", lw=0.8, ls="--")
        ax.set_ylim(0, 120)
        ax.set_title(subtitle, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("angle (degrees)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: alignment with backprop", fontsize=10)
    _save(fig, path)
    return True


def weight_change_png(title: str, epochs: np.ndarray, series: dict[str, np.ndarray], path: Path) -> bool:
    """Relative weight change between evaluation points and the rule/backprop gradient-norm ratio per layer."""
    panels = [
        (t, _layered(series, m))
        for m, t in (("weight_change", "||W_t - W_t-1|| / ||W_t||"), ("norm_ratio", "||rule update|| / ||bp grad||"))
        if _layered(series, m)
    ]
    if not panels:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (subtitle, by_layer) in zip(axes[0], panels):
        for layer, folds in by_layer.items():
            ax.plot(epochs, np.nanmean(folds, 0), lw=1.6, label=layer)
        ax.set_yscale("log")
        ax.set_title(subtitle, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: weight change per layer (mean over folds)", fontsize=10)
    _save(fig, path)
    return True


def final_angles(summary: dict[str, Any]) -> dict[str, float]:
    """Final update angles per layer (output layer left out: it is 0 for every rule) and total."""
    angles = {
        name.split("/", 1)[1]: value
        for name, value in summary.items()
        if name.startswith("update_angle/") and value is not None
    }
    angles.pop("output", None)
    return angles


def alignment_comparison_png(rows: list[dict[str, Any]], path: Path) -> bool:
    """Final update angle to backprop per layer and in total, bars per rule, one panel per dataset/model.

    ``rows``: ``{"dataset", "model", "algo", "diagnostics"}`` of each study's best trial.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if final_angles(row["diagnostics"]):
            groups.setdefault(f"{row['dataset']} / {row['model']}", []).append(row)
    if not groups:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(max(6.0, 4.8 * len(groups)), 4.0), squeeze=False)
    for ax, (title, group) in zip(axes[0], sorted(groups.items())):
        group = sorted(group, key=lambda r: r["algo"])
        names = sorted({k for r in group for k in final_angles(r["diagnostics"])}, key=lambda k: (k == "total", k))
        width = 0.8 / len(names)
        x = np.arange(len(group))
        for i, name in enumerate(names):
            values = [final_angles(r["diagnostics"]).get(name, np.nan) for r in group]
            ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
        ax.axhline(90, color="grey", lw=0.8, ls="--")
        ax.set_xticks(x, [r["algo"] for r in group])
        ax.set_ylim(0, 100)
        ax.set_ylabel("final update angle to backprop (degrees)")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Update angle to backprop at the end of training (best trial of each study)", fontsize=10)
    _save(fig, path)
    return True


def write_curve_plots(studies: list, results: Path) -> None:
    """Per-study curve plots of each best trial and the cross-rule ``alignment.png``, from storage alone."""
    from optuna.trial import TrialState

    rows = []
    for study in studies:
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            continue
        best = study.best_trial
        if "curves" not in best.user_attrs or "series" not in best.user_attrs["curves"]:
            continue
        epochs, series = decode_curves(best.user_attrs["curves"])
        directory = study_folder(results, study.study_name)
        title = f"{study.study_name} #{best.number}"
        learning_curves_png(title, epochs, series, directory / "curves.png")
        alignment_png(title, epochs, series, directory / "alignment.png")
        weight_change_png(title, epochs, series, directory / "weight_change.png")
        attrs = study.user_attrs
        rows.append(
            {
                "dataset": attrs.get("dataset", ""),
                "model": attrs.get("model", ""),
                "algo": attrs.get("algo", ""),
                "diagnostics": best.user_attrs.get("diagnostics", {}),
            }
        )
    alignment_comparison_png(rows, results / "alignment.png")

"""Plots of every trial's learning curves and diagnostics, read from the stored record (``hpo.record``: the
``curves`` and ``diagnostics`` fields and their format).

Plots (``write_curve_plots``, called by ``hpo.report.summary.write_reports``): for the best trial of each study,
``<results>/studies/<study>/curves.png`` (learning curves per fold and mean), ``alignment.png`` (angles per
layer over training) and ``weight_change.png``; across studies, ``results/alignment.png`` (final angles of
every rule, grouped by dataset and model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpo.files import atomic_path, pyplot, study_folder
from hpo.record import decode_curves, read_study, read_trial

# ----------------------------------------------------------------------------------------------------------
# Plots


def _save(fig, path: Path, legend: bool = False) -> None:
    fig.tight_layout(rect=(0, 0.08, 1, 1) if legend else (0, 0, 1, 1))  # room for a figure legend below
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png", bbox_inches="tight", pad_inches=0.1)
    pyplot().close(fig)


def _layered(series: dict[str, np.ndarray], metric: str) -> dict[str, np.ndarray]:
    """``metric/<layer>`` series by layer, in network order (see ``layer_order``); ``total`` last."""
    prefix = f"{metric}/"
    layers = {name[len(prefix):]: a for name, a in series.items() if name.startswith(prefix)}
    return {layer: layers[layer] for layer in sorted(layers, key=layer_order)}


LAYER_KINDS = ("conv", "dense", "output", "total")  # input to output: how models.networks names its layers


def layer_order(layer: str) -> tuple[int, int, str]:
    """Sort key of layer names in network order: conv_0, conv_1, ..., dense_0, ..., output, then total."""
    kind, _, index = layer.rpartition("_") if layer[-1:].isdigit() else (layer, "", "")
    rank = LAYER_KINDS.index(kind) if kind in LAYER_KINDS else len(LAYER_KINDS)
    return rank, int(index) if index.isdigit() else 0, layer


LAYER_WORDS = {"dense": "hidden", "conv": "conv"}  # how charts and tables name a layer kind, counted from 1


def layer_label(layer: str) -> str:
    """A layer as readers see it: ``dense_0`` -> ``hidden 1``, ``conv_1`` -> ``conv 2``, ``total`` -> ``all
    layers``; ``output`` stays."""
    kind, _, index = layer.rpartition("_") if layer[-1:].isdigit() else (layer, "", "")
    if index.isdigit() and kind in LAYER_WORDS:
        return f"{LAYER_WORDS[kind]} {int(index) + 1}"
    return "all layers" if layer == "total" else layer


HIDDEN_COLOURS = ("#264653", "#2a9d8f", "#8ab17d", "#e9c46a", "#f4a261")  # hidden 1, 2, ... (dense_0, ...)
CONV_COLOURS = ("#457b9d", "#9b5de5", "#c77dff", "#5e548e")  # conv 1, 2, ...
OUTPUT_COLOUR = "#e76f51"
TOTAL_COLOUR = "#a0a0a0"


def layer_colour(layer: str) -> str:
    """A layer's colour in every chart of every report: fixed by its name (``hidden 2`` is always the same green,
    whichever layers a network or a figure has), never by its place among the layers a figure happens to show."""
    kind, _, index = layer.rpartition("_") if layer[-1:].isdigit() else (layer, "", "")
    if kind == "dense" and index.isdigit():
        return HIDDEN_COLOURS[int(index) % len(HIDDEN_COLOURS)]
    if kind == "conv" and index.isdigit():
        return CONV_COLOURS[int(index) % len(CONV_COLOURS)]
    return TOTAL_COLOUR if layer == "total" else OUTPUT_COLOUR


def layer_colours(layers) -> dict[str, str]:
    """The colour of each layer (``layer_colour``), in network order, for a figure's legend."""
    return {layer: layer_colour(layer) for layer in sorted(set(layers), key=layer_order)}


def first_layer(layers) -> str | None:
    """The layer next to the input (its feedback matrix would carry the error to the input)."""
    ordered = sorted((layer for layer in layers if layer not in ("output", "total")), key=layer_order)
    return ordered[0] if ordered else None


def _mean_and_folds(ax, epochs: np.ndarray, folds: np.ndarray, label: str, colour) -> None:
    for fold in folds:
        ax.plot(epochs, fold, color=colour, alpha=0.3, lw=0.8)
    ax.plot(epochs, np.nanmean(folds, axis=0), color=colour, lw=1.8, label=label)


METRIC_LABELS = {"accuracy": "accuracy", "mse": "MSE"}  # the dataset's metric (hpo.data) as axes name it


def metric_label(metric: str | None) -> str:
    return METRIC_LABELS.get(metric or "", metric or "score")


def learning_curves_png(
    title: str, epochs: np.ndarray, series: dict[str, np.ndarray], path: Path, metric: str | None = None
) -> None:
    """Loss and score (named after the study's ``metric``), train and validation, per fold (thin) and mean
    over folds (thick)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, kind in zip(axes, ("loss", "score")):
        for split, colour in (("train", "#264653"), ("val", "#e76f51")):
            if f"{split}_{kind}" in series:
                _mean_and_folds(ax, epochs, series[f"{split}_{kind}"], split, colour)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss" if kind == "loss" else metric_label(metric))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a study whose trials recorded no curve draws none
            ax.legend(fontsize=8)
    fig.suptitle(f"{title}: learning curves (thin: folds, thick: mean)", fontsize=10)
    _save(fig, path)


ANGLE_PANELS = (
    ("update_angle", "rule's update vs backprop gradient"),
    ("error_angle", "delivered hidden error vs backprop's"),
    ("wb_angle", "forward W vs feedback B"),
)


def angle_panels(series: dict[str, np.ndarray]) -> list[tuple[str, str, dict[str, np.ndarray]]]:
    """(metric, subtitle, layer -> (folds, points)) of each kind of angle present.

    The W-B angle of the first layer is left out: that B would carry the error on to the input, which no rule
    does, so it never takes part in learning (under fa it stays at its initial ~90 degrees and says nothing).
    """
    panels = []
    for metric, subtitle in ANGLE_PANELS:
        by_layer = _layered(series, metric)
        if metric == "wb_angle":
            unused = first_layer(by_layer)
            by_layer = {layer: a for layer, a in by_layer.items() if layer != unused}
            subtitle += f"\n({layer_label(unused)}'s B is never used: not shown)" if unused else ""
        if by_layer:
            panels.append((metric, subtitle, by_layer))
    return panels


def alignment_png(title: str, epochs: np.ndarray, series: dict[str, np.ndarray], path: Path) -> bool:
    """One panel per kind of angle present, one line per layer (mean over folds, band: min-max over folds);
    a layer has the same colour in every panel."""
    panels = angle_panels(series)
    if not panels:
        return False
    colours = layer_colours(layer for _, _, by_layer in panels for layer in by_layer)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (_, subtitle, by_layer) in zip(axes[0], panels):
        for layer, folds in by_layer.items():
            colour = colours[layer]
            ax.plot(epochs, np.nanmean(folds, 0), lw=1.6, label=layer, color=colour)
            ax.fill_between(epochs, np.nanmin(folds, 0), np.nanmax(folds, 0), color=colour, alpha=0.15)
        ax.axhline(90, color="grey", lw=0.8, ls="--")
        ax.set_ylim(0, 120)
        ax.set_title(subtitle, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("angle (degrees)")
        ax.grid(alpha=0.3)
    _figure_legend(fig, colours)
    fig.suptitle(f"{title}: alignment with backprop", fontsize=10)
    _save(fig, path, legend=True)
    return True


def _figure_legend(fig, colours: dict[str, str]) -> None:
    """One legend for the whole figure, below the panels: a layer's colour is the same in every panel."""
    from matplotlib.patches import Patch

    handles = [Patch(color=colour, label=layer_label(layer)) for layer, colour in colours.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)


def weight_change_png(title: str, epochs: np.ndarray, series: dict[str, np.ndarray], path: Path) -> bool:
    """Relative weight change between evaluation points and the rule/backprop gradient-norm ratio per layer
    (a layer has the same colour in both panels)."""
    panels = [
        (t, _layered(series, m))
        for m, t in (("weight_change", "||W_t - W_t-1|| / ||W_t||"), ("norm_ratio", "||rule update|| / ||bp grad||"))
        if _layered(series, m)
    ]
    if not panels:
        return False
    colours = layer_colours(layer for _, by_layer in panels for layer in by_layer)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for ax, (subtitle, by_layer) in zip(axes[0], panels):
        for layer, folds in by_layer.items():
            ax.plot(epochs, np.nanmean(folds, 0), lw=1.6, label=layer, color=colours[layer])
        ax.set_yscale("log")
        ax.set_title(subtitle, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="both")
    _figure_legend(fig, colours)
    fig.suptitle(f"{title}: weight change per layer (mean over folds)", fontsize=10)
    _save(fig, path, legend=True)
    return True


def final_angles(summary: dict[str, Any], metric: str = "update_angle") -> dict[str, float]:
    """A best trial's final angles per layer from its ``diagnostics``: ``update_angle`` (the rule's update against
    backprop's gradient; the output layer left out: 0 for every rule) or ``wb_angle`` (W against the matrix that
    carries the layer's error back; the first layer left out: its B carries nothing, see ``first_layer``)."""
    angles = {
        name.split("/", 1)[1]: value
        for name, value in summary.items()
        if name.startswith(f"{metric}/") and value is not None
    }
    if metric == "update_angle":
        angles.pop("output", None)
    else:
        angles.pop(first_layer(angles) or "", None)
    return angles


ALIGNMENT_ROWS = (
    ("update_angle", "final update angle to backprop (deg)"),
    ("wb_angle", "final W-B angle (deg)"),
)


def alignment_comparison_png(rows: list[dict[str, Any]], path: Path) -> bool:
    """The best trial of each rule at the end of training, one panel per dataset/model: the update angle to
    backprop per hidden layer (top row) and the angle between W and the matrix that carries its error back
    (bottom row; only rules that have such a matrix), bars per rule.

    ``rows``: ``{"dataset", "model", "algo", "diagnostics"}`` of each study's best trial. A layer has one colour in
    every panel (one legend below them); backprop's group, 0 degrees by definition, says so instead of showing
    bars of height 0.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if final_angles(row["diagnostics"]):
            groups.setdefault(f"{row['dataset']} / {row['model']}", []).append(row)
    if not groups:
        return False
    kinds = [(m, label) for m, label in ALIGNMENT_ROWS
             if any(final_angles(r["diagnostics"], m) for g in groups.values() for r in g)]
    colours = layer_colours(k for rows_ in groups.values() for r in rows_ for m, _ in kinds
                            for k in final_angles(r["diagnostics"], m))
    plt = pyplot()
    fig, axes = plt.subplots(len(kinds), len(groups), figsize=(max(6.0, 4.8 * len(groups)), 3.6 * len(kinds) + 0.7),
                             squeeze=False)
    for row_axes, (metric, label) in zip(axes, kinds):
        for ax, (title, group) in zip(row_axes, sorted(groups.items())):
            group = sorted(group, key=lambda r: r["algo"])
            names = sorted({k for r in group for k in final_angles(r["diagnostics"], metric)}, key=layer_order)
            width = 0.8 / max(1, len(names))
            x = np.arange(len(group))
            for i, name in enumerate(names):
                values = [np.nan if r["algo"] == "bp" else final_angles(r["diagnostics"], metric).get(name, np.nan)
                          for r in group]
                ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name, color=colours[name])
            for position, row in zip(x, group):
                if row["algo"] == "bp" and metric == "update_angle":  # backprop's update is the reference
                    ax.text(position, 4, "0 by\ndefinition", ha="center", va="bottom", fontsize=7, color="#555555")
                elif not final_angles(row["diagnostics"], metric):
                    ax.text(position, 4, "no B" if metric == "wb_angle" else "none", ha="center", va="bottom",
                            fontsize=7, color="#555555")
            ax.axhline(90, color="grey", lw=0.8, ls="--")
            ax.set_xticks(x, [r["algo"] for r in group])
            ax.set_ylim(0, 100)
            ax.set_ylabel(label, fontsize=9)
            ax.set_title(title, fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    _figure_legend(fig, colours)
    fig.suptitle("Alignment at the end of training (best trial of each study)", fontsize=10)
    _save(fig, path, legend=True)
    return True


def write_curve_plots(studies: list, results: Path) -> None:
    """Per-study curve plots of each best trial and the cross-rule ``alignment.png``, from storage alone."""
    from optuna.trial import TrialState

    rows = []
    for study in studies:
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            continue
        best = study.best_trial
        trial = read_trial(best)
        if not isinstance(trial.curves, dict) or "series" not in trial.curves:
            continue
        epochs, series = decode_curves(trial.curves)
        directory = study_folder(results, study.study_name)
        title = f"{study.study_name} #{best.number}"
        record = read_study(study)
        learning_curves_png(title, epochs, series, directory / "curves.png", record.metric)
        alignment_png(title, epochs, series, directory / "alignment.png")
        weight_change_png(title, epochs, series, directory / "weight_change.png")
        rows.append(
            {
                "dataset": record.dataset or "",
                "model": record.model or "",
                "algo": record.algo or "",
                "diagnostics": trial.diagnostics or {},
            }
        )
    alignment_comparison_png(rows, results / "alignment.png")

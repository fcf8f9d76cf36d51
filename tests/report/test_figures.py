"""The charts say what they show: one colour per layer across panels, backprop's 0 by definition, no unused W-B
angle, the metric's name on the axes. Figures are inspected as matplotlib objects before they are saved."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.patches import Rectangle

from hpo.report import curves


@pytest.fixture
def figures(monkeypatch):
    """The figures the plotting functions would save, kept open for inspection."""
    kept = []
    monkeypatch.setattr(curves, "_save", lambda fig, path, legend=False: kept.append(fig))
    return kept


def series_of(layers: list[str], hidden: list[str]) -> dict[str, np.ndarray]:
    """Angles for 2 folds x 3 points: update angles per layer and total, errors of hidden layers, W-B per layer."""
    rng = np.random.default_rng(0)
    names = [f"update_angle/{layer}" for layer in layers] + ["update_angle/total"]
    names += [f"error_angle/{layer}" for layer in hidden] + [f"wb_angle/{layer}" for layer in layers]
    names += ["val_score", "train_score", "val_loss", "train_loss"]
    return {name: rng.uniform(10, 90, (2, 3)) for name in names}


def line_colours(ax) -> dict[str, str]:
    return {line.get_label(): to_hex(line.get_color()) for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_alignment_drops_the_unused_first_layer_and_keeps_colours(figures):
    series = series_of(["dense_0", "dense_1", "output"], ["dense_0", "dense_1"])
    assert curves.alignment_png("fa", np.arange(1, 4.0), series, None)
    (fig,) = figures
    update, error, wb = fig.axes
    assert list(line_colours(update)) == ["dense_0", "dense_1", "output", "total"]
    assert list(line_colours(wb)) == ["dense_1", "output"]  # dense_0's B would carry the error to the input
    assert "hidden 1's B is never used" in wb.get_title()  # layers as readers count them
    for ax in (error, wb):  # a layer has one colour in every panel
        for layer, colour in line_colours(ax).items():
            assert colour == line_colours(update)[layer]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["hidden 1", "hidden 2", "output", "all layers"]


def test_cnn_first_layer_is_the_first_convolution():
    series = series_of(["conv_0", "conv_1", "dense_0", "output"], ["conv_0", "conv_1", "dense_0"])
    (_, _, by_layer), = [p for p in curves.angle_panels(series) if p[0] == "wb_angle"]
    assert list(by_layer) == ["conv_1", "dense_0", "output"]
    assert sorted(["dense_10", "output", "dense_2", "conv_1", "total"], key=curves.layer_order) == [
        "conv_1", "dense_2", "dense_10", "output", "total"]


def test_cross_rule_alignment_colours_and_backprop(figures):
    def row(dataset, model, algo, angles):
        return {"dataset": dataset, "model": model, "algo": algo,
                "diagnostics": {f"update_angle/{k}": v for k, v in angles.items()}}

    rows = [
        row("digits", "mlp", "bp", {"dense_0": 0.0, "dense_1": 0.0, "output": 0.0, "total": 0.0}),
        row("digits", "mlp", "fa", {"dense_0": 80.0, "dense_1": 55.0, "output": 0.0, "total": 43.0}),
        row("mnist1d", "cnn", "bp", {"conv_0": 0.0, "dense_0": 0.0, "output": 0.0, "total": 0.0}),
        row("mnist1d", "cnn", "kp", {"conv_0": 47.0, "dense_0": 69.0, "output": 0.0, "total": 30.0}),
    ]
    assert curves.alignment_comparison_png(rows, None)
    (fig,) = figures
    colours = {}
    for ax in fig.axes:
        bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() > 0]
        for container in ax.containers:
            colour = to_hex(container.patches[0].get_facecolor())
            assert colours.setdefault(container.get_label(), colour) == colour  # the same layer, the same colour
        bp_position = [t.get_text() for t in ax.get_xticklabels()].index("bp")
        assert not [b for b in bars if abs(b.get_x() + b.get_width() / 2 - bp_position) < 0.45]  # no bp bars
        assert "0 by\ndefinition" in [t.get_text() for t in ax.texts]
    assert len(set(colours.values())) == len(colours) == 4  # conv_0, dense_0, dense_1, total (output left out)


def test_learning_curves_name_the_metric(figures):
    series = series_of(["dense_0", "output"], ["dense_0"])
    curves.learning_curves_png("regression", np.arange(1, 4.0), series, None, metric="mse")
    curves.learning_curves_png("digits", np.arange(1, 4.0), series, None, metric="accuracy")
    assert [[ax.get_ylabel() for ax in fig.axes] for fig in figures] == [["loss", "MSE"], ["loss", "accuracy"]]

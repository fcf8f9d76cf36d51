"""The comparison charts of a results folder (PNG and interactive HTML) and each study's optimisation history and
parameter importances."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from hpo.files import atomic_path, pyplot
from hpo.report.comparison import SIGNIFICANCE
from hpo.report.folders import write_html
from hpo.report.importance import BOOTSTRAPS, FEW_TRIALS, Importance
from hpo.report.tables import _plus_minus, p_value

# The points of each rule: (column, interval column, legend label, colour); the start-up label is completed by
# ``point_labels`` with the number of random trials the studies had
BARS = (
    ("best", None, "best CV (all trials)", "#2a9d8f"),
    ("startup_mean", "startup_std", "start-up CV mean ± std", "#e9c46a"),
    ("startup_worst", None, "start-up CV worst", "#e76f51"),
    ("test_mean", "test_ci95", "test mean ± 95% CI over seeds (best config)", "#264653"),
)
MAX_PANELS_PER_ROW = 4  # wider grids of (dataset, model) panels wrap onto further rows


def _groups(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One panel per (dataset, model) with complete trials; ``label`` names each bar group.

    The label is the rule, or the study name where the rule alone would be ambiguous (two studies of one rule,
    e.g. different seeds or samplers, or a study created outside ``hpo.run`` without attributes).
    """
    done = frame[frame["complete"] > 0]
    groups = []
    for (dataset, model), group in done.groupby(["dataset", "model"], sort=True):
        algos = group["algo"].astype(str)
        ambiguous = algos.duplicated(keep=False) | (algos == "")
        group = group.assign(label=np.where(ambiguous, group["study"].astype(str), algos))
        title = " / ".join(part for part in (dataset, model) if part) or "studies"
        groups.append((title, group))
    return groups


def _grid(n_panels: int) -> tuple[int, int]:
    cols = min(n_panels, MAX_PANELS_PER_ROW)
    return -(-n_panels // cols), cols


def _score_limits(group: pd.DataFrame) -> tuple[float | None, float | None]:
    """Y range that shows the differences between rules with every point and interval whole. Points, not bars: a
    bar's length says its value from zero, so bars on an axis that starts at 0.53 in one panel and 0 in another
    mislead; a point with its interval reads the same on any range. Losses start at 0."""
    lows, highs = [], []
    for column, error, _, _ in BARS:
        spread = group[error].fillna(0) if error else 0
        lows.append((group[column] - spread).min())  # pandas skips missing scores (a study with no test score)
        highs.append((group[column] + spread).max())
    low, high = float(pd.Series(lows).min()), float(pd.Series(highs).max())
    if group["direction"].iloc[0] != "maximize":
        return 0.0, None
    if np.isnan(low):  # no score at all yet: matplotlib's own range
        return None, None
    span = max(high - low, 0.02)
    return low - 0.08 * span, high + 0.12 * span


def point_labels(frame: pd.DataFrame) -> dict[str, str]:
    """Each series' legend label; the start-up ones say how many random trials the studies had (one number where
    they all had the same, else "n per study in the summary")."""
    counts = {int(n) + int(u) for n, u in zip(frame["startup_n"], frame["startup_unscored"])}
    population = f"{counts.pop()} random trials" if len(counts) == 1 else "random trials, n per study in the summary"
    return {column: label.replace("start-up CV", f"start-up ({population}) CV") if column.startswith("startup")
            else label for column, _, label, _ in BARS}


def _differs_from_bp(group: pd.DataFrame) -> np.ndarray:
    """Rules whose test mean differs from bp's (Welch's p, Holm-adjusted for the rules compared, below
    ``SIGNIFICANCE``): marked on the charts."""
    return (group["p_vs_bp_holm"] < SIGNIFICANCE).to_numpy()


COMPARISON_TITLE = (
    "CV score over trials (best; start-up population: mean ± std, worst) and test score over seeds (mean ± 95% CI)"
)


def comparison_png(frame: pd.DataFrame, path: Path) -> None:
    """Points with intervals per (dataset, model) and rule (``BARS``); * above a test point: it differs from bp's."""
    plt = pyplot()
    groups = _groups(frame)
    if not groups:
        return
    labels = point_labels(frame)
    rows, cols = _grid(len(groups))
    fig, axes = plt.subplots(rows, cols, figsize=(max(5.0, 4.8 * cols), 4.4 * rows), squeeze=False)
    width = 0.7 / len(BARS)
    for ax, (title, group) in zip(axes.flat, groups, strict=False):  # spare axes of the last row stay empty
        x = np.arange(len(group))
        for i, (column, error, _, colour) in enumerate(BARS):
            err = group[error].to_numpy(dtype=float) if error else None
            ax.errorbar(x + (i - (len(BARS) - 1) / 2) * width, group[column], yerr=err, fmt="o", ms=5, capsize=3,
                        lw=1.2, label=labels[column], color=colour)
        test_x = x + (len(BARS) - 1) / 2 * width
        tops = group["test_mean"] + group["test_ci95"].fillna(0)
        for xi, top in zip(test_x[_differs_from_bp(group)], tops[_differs_from_bp(group)]):
            ax.annotate("*", (xi, top), ha="center", va="bottom", fontsize=12, color=BARS[-1][3])
        long_labels = (group["label"] != group["algo"]).any()  # study names: rotate so they do not overlap
        ax.set_xticks(x, group["label"], rotation=20 if long_labels else 0, ha="right" if long_labels else "center")
        ax.set_title(title)
        ax.set_ylabel(str(group["metric"].iloc[0]))
        ax.set_ylim(*_score_limits(group))
        ax.set_xlim(-0.6, len(group) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    # one legend for every panel, below them, where it can cover no point
    handles, legend = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, legend, loc="lower center", ncol=2 if cols > 1 else 1, fontsize=8, frameon=False)
    title = f"{COMPARISON_TITLE};  *: test mean differs from bp's (Welch p, Holm-adjusted, < {SIGNIFICANCE})"
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 12)), fontsize=10)
    fig.tight_layout(rect=(0, 0.08 if cols > 1 else 0.16, 1, 1))
    with atomic_path(path) as tmp:  # "tight": a title or legend wider than the panels is never cut off
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)


def comparison_html(frame: pd.DataFrame, path: Path, bundle: Path) -> None:
    """The same grouped bars as an interactive plotly page that loads plotly.js from ``bundle``; hovering a bar
    shows the comparison with bp."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    groups = _groups(frame)
    if not groups:
        return
    labels = point_labels(frame)
    rows, cols = _grid(len(groups))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[t for t, _ in groups])
    for i, (_, group) in enumerate(groups):
        row, col = divmod(i, cols)
        row, col = row + 1, col + 1
        hover = group.assign(
            vs_bp=[_plus_minus(r.delta_vs_bp, r.delta_vs_bp_ci95) or "-" for r in group.itertuples()],
            p=[p_value(p) or "-" for p in group["p_vs_bp"]],
            p_holm=[p_value(p) or "-" for p in group["p_vs_bp_holm"]],
        )
        stars = np.where(_differs_from_bp(group), "*", "").tolist()
        for column, error, _, colour in BARS:
            error_y = dict(type="data", array=group[error].fillna(0).tolist()) if error else None
            fig.add_trace(
                go.Scatter(
                    name=labels[column], x=group["label"].tolist(), y=group[column].tolist(), error_y=error_y,
                    mode="markers+text" if column == "test_mean" else "markers", marker=dict(color=colour, size=8),
                    legendgroup=column, showlegend=i == 0, offsetgroup=column,
                    text=stars if column == "test_mean" else None, textposition="top center",
                    customdata=hover[["study", "complete", "startup_n", "test_n", "vs_bp", "p", "p_holm"]].to_numpy(),
                    hovertemplate="%{customdata[0]}<br>" + labels[column] + ": %{y:.4f}<br>complete trials "
                    "%{customdata[1]}, start-up scored %{customdata[2]}, test seeds %{customdata[3]}<br>test vs bp "
                    "%{customdata[4]} (p %{customdata[5]}, Holm %{customdata[6]})<extra></extra>",
                ),
                row=row, col=col,
            )
        limits = _score_limits(group)
        fig.update_yaxes(
            title_text=str(group["metric"].iloc[0]), range=None if None in limits else limits, row=row, col=col
        )
    fig.update_layout(scattermode="group", title=COMPARISON_TITLE + f"; *: differs from bp (Welch p, Holm-adjusted, "
                      f"< {SIGNIFICANCE})")
    write_html(fig, path, bundle)


def study_plots(study: optuna.Study, directory: Path, bundle: Path, importance: dict[str, Importance]) -> None:
    """Optuna's optimisation history, and the parameter importances with their bootstrap spread
    (``hpo.report.importance``), each as an interactive page and a PNG for the README."""
    plt = pyplot()
    from optuna.visualization import matplotlib as opt_mpl

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return
    with warnings.catch_warnings(), plt.rc_context():  # optuna's matplotlib plots switch the style to ggplot
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # optuna's matplotlib backend
        write_html(optuna.visualization.plot_optimization_history(study), directory / "history.html", bundle)
        ax = opt_mpl.plot_optimization_history(study)
        _save(ax.figure, directory / "history.png")
    if importance:
        importance_html(importance, len(complete), directory / "importance.html", bundle)
        importance_chart(importance, len(complete), directory / "importance.png")


def _save(fig, path: Path) -> None:
    fig.set_size_inches(7, 4.2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    pyplot().close(fig)


def importance_title(n_complete: int) -> str:
    """The importance chart's title; a study of few complete trials says its estimate is rough."""
    title = f"Parameter importances (PED-ANOVA, ± std over {BOOTSTRAPS} bootstraps of {n_complete} complete trials)"
    if n_complete < FEW_TRIALS:
        title += f": rough, from fewer than {FEW_TRIALS} trials"
    return title


def importance_chart(importance: dict[str, Importance], n_complete: int, path: Path) -> None:
    plt = pyplot()
    names = list(importance)[::-1]  # most important on top
    fig, ax = plt.subplots()
    ax.barh(names, [importance[n].mean for n in names], xerr=[importance[n].std for n in names], color="#2a9d8f",
            capsize=3)
    ax.set_xlabel("importance (each study's sum to 1)")
    ax.set_xlim(0, None)
    ax.set_title(textwrap.fill(importance_title(n_complete), 70), fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def importance_html(importance: dict[str, Importance], n_complete: int, path: Path, bundle: Path) -> None:
    import plotly.graph_objects as go

    names = list(importance)[::-1]
    figure = go.Figure(go.Bar(
        x=[importance[n].mean for n in names], y=names, orientation="h", marker_color="#2a9d8f",
        error_x=dict(type="data", array=[importance[n].std for n in names]),
        hovertemplate="%{y}: %{x:.3f}<extra></extra>",
    ))
    figure.update_layout(title=importance_title(n_complete), xaxis_title="importance (each study's sum to 1)")
    write_html(figure, path, bundle)

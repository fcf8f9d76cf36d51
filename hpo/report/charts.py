"""The comparison charts of a results folder (PNG and interactive HTML) and each study's optimisation history and
parameter importances."""

from __future__ import annotations

import functools
import json
import re
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


# Optuna's PED-ANOVA importance warns once per conditional parameter (lr_sgd, momentum, conv2_kernel[3], ...)
# that is active in only a few trials, for each of the two charts of every study: 8-13 lines per report that
# ask nothing of the user. They are caught here and summed up in one line (see ``importance_note``).
REGIMES_WARNING = re.compile(r"Some regimes for parameter `(?P<param>[^`]+)` have less than (?P<n>\d+) trials")


def study_plots(study: optuna.Study, directory: Path, bundle: Path, sparse_params: set[str] | None = None) -> None:
    """Optuna's optimisation history and parameter importances (html, and png for the README).

    Parameters whose importance Optuna could only estimate roughly (active in too few trials) are added to
    ``sparse_params`` instead of being printed as warnings.
    """
    plt = pyplot()
    from optuna.visualization import matplotlib as opt_mpl

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return
    plots = {"history": (optuna.visualization.plot_optimization_history, opt_mpl.plot_optimization_history)}
    if len(complete) >= 2 and len({json.dumps(t.params, sort_keys=True) for t in complete}) >= 2:
        # the parameters in a fixed order: Optuna lists them from a set, so equal importances would swap places
        # from run to run and a regenerated report would differ from the last one
        names = sorted({name for t in complete for name in t.distributions})
        plots["importance"] = (
            functools.partial(optuna.visualization.plot_param_importances, params=names),
            functools.partial(opt_mpl.plot_param_importances, params=names),
        )
    for name, (plotly_fn, mpl_fn) in plots.items():
        # optuna's matplotlib plots switch the global style to ggplot; the context keeps that to these charts
        with warnings.catch_warnings(record=True) as caught, plt.rc_context():
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # optuna's matplotlib backend
            figure = plotly_fn(study)
            write_html(figure, directory / f"{name}.html", bundle)
            ax = mpl_fn(study)
            fig = ax.figure
            fig.set_size_inches(7, 4.2)
            fig.tight_layout()
            with atomic_path(directory / f"{name}.png") as tmp:
                fig.savefig(tmp, dpi=90, format="png")
            plt.close(fig)
        for warning in caught:
            match = REGIMES_WARNING.search(str(warning.message))
            if match and sparse_params is not None:
                sparse_params.add(match["param"])
            elif not match:  # anything else is news: pass it on as it came
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def importance_note(sparse_params: set[str]) -> str | None:
    """One line in place of Optuna's per-parameter warnings about rough importance estimates."""
    if not sparse_params:
        return None
    names = sorted(sparse_params)
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return (
        f"note: parameter importances of conditional parameters active in few trials ({shown}) are rough "
        "estimates (Optuna's PED-ANOVA)"
    )

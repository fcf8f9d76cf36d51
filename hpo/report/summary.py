"""Summaries and charts, regenerated from the study storage alone (no training).

    python -m hpo.report [--storage URL] [--results-dir DIR] [--study PATTERN]

Writes to the storage's own results folder (``results/<storage name>/``, see ``hpo.report.folders``) ``summary.csv``,
``summary.md``, ``comparison.png`` (matplotlib), ``comparison.html`` (plotly, loading the folder's own copy of
plotly.js: no network), ``efficiency/<dataset>-<model>.png`` and, per study, its optimisation history, parameter
importances and search space (``space.md``) under ``studies/<name>/``. Every file is written to a temporary name
and renamed, so an interrupted report never leaves a half-written file. What the columns mean:
``hpo.report.comparison``.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import re
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from hpo.cli import Steps, plural
from hpo.config import DEFAULT_STORAGE
from hpo.errors import UsageError
from hpo.files import atomic_path, check_writable, pyplot, study_folder, write_text, written_together
from hpo.record import STARTUP_TRIALS, read_study, read_trial
from hpo.report.comparison import (
    ALIGNMENT_COLUMNS,
    PREDATES_STARTUP_MARK,
    PREDATES_TEST_SEEDS,
    SIGNIFICANCE,
    STARTUP_COLUMNS,
    TEST_COLUMNS,
    VS_BP_COLUMNS,
    add_vs_bp,
    alignment_columns,
    best_params_tables,
    efficiency_png,
    markdown_table,
    score_columns,
    startup_columns,
)
from hpo.report.curves import write_curve_plots
from hpo.report.folders import plotly_bundle, record_owner, results_dir_for, storage_argument, write_html
from hpo.space.overrides import space_table
from hpo.storage import open_storage, redact, study_names

SUMMARY_COLUMNS = [
    "study", "dataset", "model", "algo", "metric", "direction", "complete", "pruned", "failed", "best",
    "best_trial", "best_fold_std", *STARTUP_COLUMNS, *TEST_COLUMNS[:5], *VS_BP_COLUMNS, *ALIGNMENT_COLUMNS,
    "interrupted", "surplus", "median_trial_seconds", "train_seconds", "compile_seconds", "wall_seconds",
    "test_scores", "best_params",
]


def study_row(study: optuna.Study) -> dict:
    """One summary row: counts, the best CV score and trial, the spread over the random start-up trials and the
    best configuration's test scores over seeds (``hpo.report.comparison``); the comparison with bp comes later."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    values = np.array([t.value for t in complete], dtype=float)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    record = read_study(study)
    row = {
        "study": study.study_name,
        "dataset": record.dataset or "",
        "model": record.model or "",
        "algo": record.algo or "",
        "metric": record.metric or "value",
        "direction": "maximize" if maximize else "minimize",
        "complete": len(complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "best": np.nan, "best_trial": None, "best_fold_std": np.nan,
        **startup_columns(trials, maximize),
        **alignment_columns(None),
        "median_trial_seconds": np.nan, "train_seconds": 0.0, "compile_seconds": 0.0, "wall_seconds": 0.0,
        "best_params": "",
    }
    records = [read_trial(t) for t in trials]
    # a failed trial that a signal stopped (re-queued) or that the study did not need (surplus) is not a failure
    ended = [(t, r) for t, r in zip(trials, records) if t.state == TrialState.FAIL]
    row["interrupted"] = sum(r.interrupted is not None for _, r in ended)
    row["surplus"] = sum(r.surplus is not None for _, r in ended)
    row["failed"] = len(ended) - row["interrupted"] - row["surplus"]
    timed = [r.wall_seconds for r in records if r.wall_seconds is not None]
    if timed:
        row["median_trial_seconds"] = float(np.median(timed))
        row["wall_seconds"] = float(np.sum(timed))
    row["train_seconds"] = float(sum(r.train_seconds or 0.0 for r in records))
    row["compile_seconds"] = float(sum(r.compile_seconds or 0.0 for r in records))
    best = study.best_trial if len(values) else None
    if best is not None:
        row.update(
            best=float(values.max() if maximize else values.min()),
            best_trial=best.number,
            best_fold_std=np.nan if read_trial(best).fold_std is None else read_trial(best).fold_std,
            best_params=json.dumps(best.params, sort_keys=True),
            **alignment_columns(read_trial(best).diagnostics),
        )
    row.update(score_columns(record.test, None if best is None else best.number))
    return row


def load_studies(storage_url: str, pattern: str = "*") -> list[optuna.Study]:
    storage = open_storage(storage_url, create=False)
    names = [n for n in study_names(storage) if fnmatch.fnmatch(n, pattern)]
    return [optuna.load_study(study_name=n, storage=storage) for n in names]


def summarize(studies: list[optuna.Study]) -> pd.DataFrame:
    rows = [study_row(s) for s in studies]
    frame = add_vs_bp(pd.DataFrame(rows, columns=SUMMARY_COLUMNS))
    return frame.sort_values(["dataset", "model", "algo"], kind="stable").reset_index(drop=True)


def _number(value: Any, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def _plus_minus(centre: Any, spread: Any, n: Any = None) -> str:
    text = _number(centre)
    if text and _number(spread):
        text += f" ± {_number(spread)}"
    return f"{text} (n={int(n)})" if text and n is not None else text


def p_value(p: Any) -> str:
    """A p-value for a table: 3 decimals, or scientific below 0.001 (never a misleading 0.000)."""
    if p is None or not np.isfinite(p):
        return ""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


SPREAD_NOTE = (
    f"Start-up: the study's first {STARTUP_TRIALS} trials, drawn at random from the rule's search space before "
    "Bayesian optimisation starts and never pruned, so the same population for every rule (hpo.study.population); "
    "mean ± sample std and worst of their CV scores, n of them with a score (diverged ones counted apart)."
)
TEST_NOTE = (
    "Test: the best configuration retrained on the whole training split with n seeds and scored on the test "
    "split: mean ± half-width of the Student-t 95% interval. vs bp: test mean minus bp's on the same dataset "
    "and model ± Welch's 95% interval, and Welch's two-sided p."
)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The readable summary: one row per study, statistics with their spread in one cell."""
    return pd.DataFrame({
        "study": frame["study"],
        "trials (complete / pruned / failed)": [f"{r.complete} / {r.pruned} / {r.failed}" for r in frame.itertuples()],
        "best CV": frame["best"].map(_number),
        "start-up CV mean ± std": [_plus_minus(r.startup_mean, r.startup_std, r.startup_n) for r in frame.itertuples()],
        "start-up worst": frame["startup_worst"].map(_number),
        "test mean ± 95% CI": [_plus_minus(r.test_mean, r.test_ci95, r.test_n or None) for r in frame.itertuples()],
        "test vs bp ± 95% CI": [_plus_minus(r.delta_vs_bp, r.delta_vs_bp_ci95) for r in frame.itertuples()],
        "p vs bp": frame["p_vs_bp"].map(p_value),
        "W-B angle (deg)": frame["wb_angle"].map(lambda v: v if isinstance(v, str) else ""),
        "update vs bp (deg)": frame["update_angle"].map(lambda v: v if isinstance(v, str) else ""),
    })


def _notes(frame: pd.DataFrame) -> list[str]:
    """Markdown lines about rows that need them: notes shared by many studies (a run older than test seeds or
    the start-up mark) once, with the studies listed; any other note per study."""
    def listed(rows, detail=lambda r: "") -> str:
        return ", ".join(f"`{r.study}`{detail(r)}" for r in rows)

    rows = list(frame.itertuples())
    old_startup = [r for r in rows if r.startup_note == PREDATES_STARTUP_MARK]
    old_test = [r for r in rows if r.test_note == PREDATES_TEST_SEEDS]
    lines = []
    if old_startup:
        lines.append(f"- Start-up {PREDATES_STARTUP_MARK}: {listed(old_startup, lambda r: f' ({r.startup_unscored} unscored)')}.")
    if old_test:
        lines.append(f"- Test: {PREDATES_TEST_SEEDS}: {listed(old_test)}.")
    for r in rows:
        if r.startup_note and r.startup_note != PREDATES_STARTUP_MARK:
            lines.append(f"- `{r.study}`: start-up {r.startup_note}")
        elif not r.startup_note and r.startup_unscored:
            lines.append(f"- `{r.study}`: {r.startup_unscored} start-up trial(s) ended without a score (diverged)")
        if r.test_note and r.test_note != PREDATES_TEST_SEEDS:
            lines.append(f"- `{r.study}`: test {r.test_note}")
    return ["", "Notes:", "", *lines] if lines else []


def to_markdown(frame: pd.DataFrame) -> str:
    parts = [markdown_table(summary_table(frame)), "", SPREAD_NOTE, "", TEST_NOTE]
    parts += [*_notes(frame)]
    parts += ["", "## Best hyperparameters", ""]
    for title, table in best_params_tables(frame):
        parts += [f"### {title}", "", markdown_table(table), ""]
    return "\n".join(parts).rstrip() + "\n"


# The bars of each rule: (column, error-bar column, legend label, colour)
BARS = (
    ("best", None, "best CV (all trials)", "#2a9d8f"),
    ("startup_mean", "startup_std", f"start-up CV mean ± std ({STARTUP_TRIALS} random trials)", "#e9c46a"),
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
    """Y range that shows the differences between rules and every bar and error bar whole: from below the lowest
    bar or error bar to above the highest. Scores in [0, 1] (accuracy) start at 0 at the lowest; the top is never
    cut at 1, since a mean plus its spread can pass it. Losses start at 0."""
    lows, highs = [], []
    for column, error, _, _ in BARS:
        spread = group[error].fillna(0) if error else 0
        lows.append(np.nanmin(group[column] - spread))
        highs.append(np.nanmax(group[column] + spread))
    low, high = float(np.nanmin(lows)), float(np.nanmax(highs))
    if group["direction"].iloc[0] != "maximize":
        return 0.0, None
    span = max(high - low, 0.05)
    values = group[[column for column, *_ in BARS]]
    bounded = bool(((values.min() >= 0) & (values.max() <= 1)).all())  # scores in [0, 1], e.g. accuracy
    lower, upper = low - 0.3 * span, high + 0.12 * span
    return (max(0.0, lower), upper) if bounded else (lower, upper)


def _differs_from_bp(group: pd.DataFrame) -> np.ndarray:
    """Rules whose test mean differs from bp's (Welch p below ``SIGNIFICANCE``): marked on the charts."""
    return (group["p_vs_bp"] < SIGNIFICANCE).to_numpy()


COMPARISON_TITLE = (
    "CV score over trials (best; start-up population: mean ± std, worst) and test score over seeds (mean ± 95% CI)"
)


def comparison_png(frame: pd.DataFrame, path: Path) -> None:
    """Grouped bars per (dataset, model) and rule (``BARS``); * above a test bar: it differs from bp's."""
    plt = pyplot()
    groups = _groups(frame)
    if not groups:
        return
    rows, cols = _grid(len(groups))
    fig, axes = plt.subplots(rows, cols, figsize=(max(5.0, 4.8 * cols), 4.4 * rows), squeeze=False)
    width = 0.8 / len(BARS)
    for ax, (title, group) in zip(axes.flat, groups, strict=False):  # spare axes of the last row stay empty
        x = np.arange(len(group))
        for i, (column, error, label, colour) in enumerate(BARS):
            err = group[error].to_numpy(dtype=float) if error else None
            ax.bar(x + (i - (len(BARS) - 1) / 2) * width, group[column], width, yerr=err, capsize=2, label=label,
                   color=colour)
        test_x = x + (len(BARS) - 1) / 2 * width
        tops = group["test_mean"] + group["test_ci95"].fillna(0)
        for xi, top in zip(test_x[_differs_from_bp(group)], tops[_differs_from_bp(group)]):
            ax.annotate("*", (xi, top), ha="center", va="bottom", fontsize=12, color=BARS[-1][3])
        long_labels = (group["label"] != group["algo"]).any()  # study names: rotate so they do not overlap
        ax.set_xticks(x, group["label"], rotation=20 if long_labels else 0, ha="right" if long_labels else "center")
        ax.set_title(title)
        ax.set_ylabel(str(group["metric"].iloc[0]))
        ax.set_ylim(*_score_limits(group))
        ax.set_xlim(-0.75, len(group) - 0.25)  # a lone rule keeps bars of the usual width
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    # one legend for every panel, below them, where it can cover no bar
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2 if cols > 1 else 1, fontsize=8, frameon=False)
    title = f"{COMPARISON_TITLE};  *: test mean differs from bp's (Welch p < {SIGNIFICANCE})"
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
    rows, cols = _grid(len(groups))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[t for t, _ in groups])
    for i, (_, group) in enumerate(groups):
        row, col = divmod(i, cols)
        row, col = row + 1, col + 1
        hover = group.assign(
            vs_bp=[_plus_minus(r.delta_vs_bp, r.delta_vs_bp_ci95) or "-" for r in group.itertuples()],
            p=[p_value(p) or "-" for p in group["p_vs_bp"]],
        )
        stars = np.where(_differs_from_bp(group), "*", "").tolist()
        for column, error, label, colour in BARS:
            error_y = dict(type="data", array=group[error].fillna(0).tolist()) if error else None
            fig.add_trace(
                go.Bar(
                    name=label, x=group["label"].tolist(), y=group[column].tolist(), error_y=error_y,
                    marker_color=colour, legendgroup=column, showlegend=i == 0,
                    text=stars if column == "test_mean" else None, textposition="outside",
                    customdata=hover[["study", "complete", "startup_n", "test_n", "vs_bp", "p"]].to_numpy(),
                    hovertemplate="%{customdata[0]}<br>" + label + ": %{y:.4f}<br>complete trials %{customdata[1]}, "
                    "start-up scored %{customdata[2]}, test seeds %{customdata[3]}<br>test vs bp %{customdata[4]} "
                    "(p %{customdata[5]})<extra></extra>",
                ),
                row=row, col=col,
            )
        limits = _score_limits(group)
        fig.update_yaxes(
            title_text=str(group["metric"].iloc[0]), range=None if None in limits else limits, row=row, col=col
        )
    fig.update_layout(barmode="group", title=COMPARISON_TITLE + f"; *: differs from bp (Welch p < {SIGNIFICANCE})")
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


def write_reports(storage_url: str, results_dir: str | Path | None = None, pattern: str = "*", out=print) -> pd.DataFrame:
    """Regenerate every summary and chart of the storage's studies under ``results_dir`` (default: the
    storage's own folder, ``hpo.report.folders.results_dir_for``) from the storage alone."""
    studies = load_studies(storage_url, pattern)
    if not studies:
        raise UsageError(f"no study matching {pattern!r} in storage {redact(storage_url)!r}")
    results = check_writable(results_dir_for(storage_url, results_dir))
    record_owner(results, storage_url)
    sparse_params: set[str] = set()
    try:
        # a full disk mid-report keeps the previous report set whole; a long report says how far it is
        with written_together() as publish, Steps("report", out) as steps:
            steps.report(f"summarising {plural(len(studies), 'study')}")
            frame = summarize(studies)
            with atomic_path(results / "summary.csv") as tmp:
                frame.to_csv(tmp, index=False, float_format="%.6g")
            write_text(results / "summary.md", to_markdown(frame))
            steps.report("comparison charts")
            comparison_png(frame, results / "comparison.png")
            bundle = plotly_bundle(results)
            comparison_html(frame, results / "comparison.html", bundle)
            efficiency_png(studies, results)
            for i, study in enumerate(studies, 1):
                steps.report(f"charts of study {i}/{len(studies)}, {study.study_name}")
                folder = study_folder(results, study.study_name)
                study_plots(study, folder, bundle, sparse_params)
                write_text(folder / "space.md", space_table(read_study(study).space))
            steps.report("learning and alignment curves")
            write_curve_plots(studies, results)
            publish()  # the index lists the files found in place
            write_index(results, [s.study_name for s in studies], storage_url)
    except OSError as error:
        raise UsageError(
            f"cannot write the reports to {str(results)!r}: {error.strerror or error}; the previous reports are kept"
        ) from None
    note = importance_note(sparse_params)
    if note:
        out(note)
    out(f"wrote summaries and charts of {plural(len(studies), 'study')} to {results}/ (browse {results / 'index.html'})")
    return frame


IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif")
PAGE_SUFFIXES = (".html",)
DATA_SUFFIXES = (".csv", ".md", ".json", ".txt")


def _result_files(results: Path, studies: list[str] | None = None) -> dict[str, list[Path]]:
    """Files under ``results`` grouped by their directory (relative, POSIX), skipping hidden files and index.html.

    Discovered rather than listed, so charts written by other tools (diagnostics) appear without changes here.
    With ``studies`` given, study folders of other studies (left by an earlier report) are not shown.
    """
    shown = None if studies is None else {study_folder(results, name).resolve() for name in studies}
    study_root = study_folder(results, "x").parent.resolve()
    sections: dict[str, list[Path]] = {}
    for path in sorted(results.rglob("*")):
        relative = path.relative_to(results)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts) or relative == Path("index.html"):
            continue
        folder = path.parent.resolve()
        if shown is not None and folder.is_relative_to(study_root) and not any(folder.is_relative_to(s) for s in shown):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES + PAGE_SUFFIXES + DATA_SUFFIXES:
            sections.setdefault(relative.parent.as_posix(), []).append(relative)
    # top level (the comparison) first, then the efficiency plots, then each study, then anything else
    order = lambda item: (item[0] != ".", item[0] != "efficiency", not item[0].startswith("studies/"), item[0])  # noqa: E731
    return dict(sorted(sections.items(), key=order))


def index_html(results: Path, studies: list[str] | None = None, storage: str | None = None) -> str:
    """A page that embeds every image and links every page and table found under ``results``: of the
    ``studies`` only, where given (the storage's; see ``_result_files``)."""
    from html import escape
    from urllib.parse import quote

    def href(path: Path) -> str:
        return escape(quote(path.as_posix()))

    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8"><title>Study results</title>',
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}figure{display:inline-block;margin:0 1em 1em 0;"
        "vertical-align:top}img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:90%}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>",
        "<h1>Study results</h1>",
        "<p>Regenerate with <code>python -m hpo.report"
        + (f" --storage {escape(storage_argument(storage))}" if storage else "")
        + "</code>. Every chart of "
        + (f"the {plural(len(studies), 'study')} of this storage" if studies is not None else "this directory")
        + " is shown below; click a chart for its interactive version where one exists.</p>",
    ]
    summary = results / "summary.csv"
    frame = read_summary(summary) if summary.is_file() else None
    if frame is not None:
        parts.append(summary_table(frame).to_html(index=False, border=0))
        parts += [f"<p>{escape(SPREAD_NOTE)}</p>", f"<p>{escape(TEST_NOTE)}</p>"]
        notes = [line.removeprefix("- ").replace("`", "") for line in _notes(frame) if line.startswith("- ")]
        if notes:
            parts.append("<ul>" + "".join(f"<li>{escape(note)}</li>" for note in notes) + "</ul>")
        parts.append("<h2>Best hyperparameters</h2>")
        for title, table in best_params_tables(frame):
            parts += [f"<h3>{escape(title)}</h3>", table.to_html(index=False, border=0)]
    for directory, files in _result_files(results, studies).items():
        title = {".": "All studies"}.get(directory, directory.removeprefix("studies/"))
        parts.append(f"<h2>{escape(title)}</h2>")
        by_stem: dict[str, dict[str, Path]] = {}
        for path in files:
            by_stem.setdefault(path.stem, {})[path.suffix.lower()] = path
        links = []
        for stem, variants in by_stem.items():
            image = next((variants[s] for s in IMAGE_SUFFIXES if s in variants), None)
            page = variants.get(".html")
            if image is not None:
                target = page or image
                caption = escape(stem) + (f' (<a href="{href(page)}">interactive</a>)' if page else "")
                parts.append(
                    f'<figure><a href="{href(target)}"><img src="{href(image)}" alt="{escape(stem)}"></a>'
                    f"<figcaption>{caption}</figcaption></figure>"
                )
            elif page is not None:
                links.append(page)
            links.extend(variants[s] for s in DATA_SUFFIXES if s in variants)
        if links:
            items = "".join(f'<li><a href="{href(p)}">{escape(p.name)}</a></li>' for p in links)
            parts.append(f"<ul>{items}</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_index(results_dir: str | Path, studies: list[str] | None = None, storage: str | None = None) -> Path:
    """Write ``index.html`` (atomically) linking every chart under ``results_dir`` (of ``studies`` only, where
    given); return its path."""
    results = Path(results_dir)
    path = results / "index.html"
    write_text(path, index_html(results, studies, storage))
    return path


SUMMARY_TEXT = ["study", "dataset", "model", "algo", "startup_note", "test_note", "test_scores", "best_params"]


def read_summary(path: Path) -> pd.DataFrame | None:
    """``summary.csv`` read back as ``summarize`` made it (empty text cells as empty strings, not NaN), or None
    if it is not one of ours (another tool's table, or a summary of an earlier version)."""
    try:
        frame = pd.read_csv(path, dtype={column: str for column in SUMMARY_TEXT})
    except (ValueError, pd.errors.ParserError):
        return None
    if not set(SUMMARY_COLUMNS) <= set(frame.columns):
        return None
    frame[SUMMARY_TEXT] = frame[SUMMARY_TEXT].fillna("")
    return frame


def print_summary(frame: pd.DataFrame, out=print) -> None:
    """The summary table and each table of best hyperparameters, as text."""
    out(summary_table(frame).to_string(index=False))
    for title, table in best_params_tables(frame):
        out(f"\nbest hyperparameters, {title}:")
        out(table.to_string(index=False))


BUNDLED_STORAGE = "studies/bundled.journal"  # the committed run of studies/bundled.toml


def missing_storage_hint(storage_url: str) -> str:
    """Where to look instead when the default local database is absent but the committed run is (a fresh clone)."""
    default_file = Path(DEFAULT_STORAGE.split(":///", 1)[1])
    if storage_url == DEFAULT_STORAGE and not default_file.exists() and Path(BUNDLED_STORAGE).is_file():
        return f"; the committed run is in {BUNDLED_STORAGE}: add --storage {BUNDLED_STORAGE}"
    return ""


def main(argv: list[str] | None = None) -> int:
    """``python -m hpo.report``; the exit code (``hpo.cli.run_command``)."""
    from hpo.cli import run_command

    parser = argparse.ArgumentParser(prog="python -m hpo.report", description=__doc__.split("\n")[0])
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help="study storage URL or journal file")
    parser.add_argument(
        "--results-dir", help="where to write (default: results/<storage name>, e.g. results/bundled for "
        "studies/bundled.journal)"
    )
    parser.add_argument("--study", default="*", help="only studies whose name matches this glob pattern")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def body() -> None:
        try:
            frame = write_reports(args.storage, args.results_dir, args.study)
        except UsageError as error:
            raise UsageError(f"{error}{missing_storage_hint(args.storage)}") from None
        print_summary(frame)

    return run_command(body, interrupted="interrupted: the previous reports are kept as they were")

"""Summaries and charts, regenerated from the study storage alone (no training).

    python -m hpo.report [--storage URL] [--results-dir DIR] [--study PATTERN]

Writes to the storage's own results folder (``results/<storage name>/``, see ``hpo.results``) ``summary.csv``,
``summary.md``, ``comparison.png`` (matplotlib), ``comparison.html`` (plotly, loading the folder's own copy of
plotly.js: no network) and, per study, its optimisation history, parameter importances and search space
(``space.md``) under ``studies/<name>/``. Every file is written to a temporary name and renamed, so an interrupted
report never leaves a half-written file.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from hpo.config import DEFAULT_STORAGE
from hpo.curves import write_curve_plots
from hpo.errors import UsageError
from hpo.files import atomic_path, check_writable, pyplot, study_folder, write_text, written_together
from hpo.results import plotly_bundle, record_owner, results_dir_for, storage_identity, write_html
from hpo.space_config import space_table
from hpo.storage import open_storage, redact, study_names

SUMMARY_COLUMNS = [
    "study", "dataset", "model", "algo", "metric", "direction", "complete", "pruned", "failed", "best", "worst",
    "mean", "std", "best_trial", "best_fold_std", "test_score", "median_trial_seconds", "compile_seconds",
    "wall_seconds", "best_params",
]


def study_row(study: optuna.Study) -> dict:
    """One summary row: counts, best/worst/mean/std over complete trials, the best trial and its test score."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    values = np.array([t.value for t in complete], dtype=float)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    attrs = study.user_attrs
    row = {
        "study": study.study_name,
        "dataset": attrs.get("dataset", ""),
        "model": attrs.get("model", ""),
        "algo": attrs.get("algo", ""),
        "metric": attrs.get("metric", "value"),
        "direction": "maximize" if maximize else "minimize",
        "complete": len(complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "best": np.nan, "worst": np.nan, "mean": np.nan, "std": np.nan,
        "best_trial": None, "best_fold_std": np.nan, "test_score": np.nan,
        "median_trial_seconds": np.nan, "compile_seconds": 0.0, "wall_seconds": 0.0, "best_params": "",
    }
    timed = [t.user_attrs["wall_seconds"] for t in trials if "wall_seconds" in t.user_attrs]
    if timed:
        row["median_trial_seconds"] = float(np.median(timed))
        row["wall_seconds"] = float(np.sum(timed))
    row["compile_seconds"] = float(sum(t.user_attrs.get("compile_seconds", 0.0) for t in trials))
    if len(values):
        best = study.best_trial
        row.update(
            best=float(values.max() if maximize else values.min()),
            worst=float(values.min() if maximize else values.max()),
            mean=float(values.mean()),
            std=float(values.std()),
            best_trial=best.number,
            best_fold_std=best.user_attrs.get("fold_std", np.nan),
            best_params=json.dumps(best.params, sort_keys=True),
        )
        test = attrs.get("test")
        if test and test.get("trial") == best.number:
            row["test_score"] = test["score"]
    return row


def load_studies(storage_url: str, pattern: str = "*") -> list[optuna.Study]:
    storage = open_storage(storage_url, create=False)
    names = [n for n in study_names(storage) if fnmatch.fnmatch(n, pattern)]
    return [optuna.load_study(study_name=n, storage=storage) for n in names]


def summarize(studies: list[optuna.Study]) -> pd.DataFrame:
    rows = [study_row(s) for s in studies]
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return frame.sort_values(["dataset", "model", "algo"], kind="stable").reset_index(drop=True)


def to_markdown(frame: pd.DataFrame) -> str:
    shown = frame.drop(columns=["direction", "best_params", "wall_seconds"])
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for _, row in shown.iterrows():
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append("" if np.isnan(value) else f"{value:.4f}")
            else:
                cells.append("" if value is None else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    params = [f"- `{r.study}` (trial #{r.best_trial}): `{r.best_params}`" for r in frame.itertuples() if r.best_params]
    return "\n".join(lines) + "\n\nBest configurations:\n\n" + "\n".join(params) + "\n"


STAT_COLOURS = {"best": "#2a9d8f", "mean": "#e9c46a", "worst": "#e76f51"}  # bar colour of each statistic
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
    """Y range that shows the differences between rules and every bar and error bar whole: from below the
    lowest of worst and mean - std to above the highest of best and mean + std. Scores in [0, 1] (accuracy)
    start at 0 at the lowest; the top is never cut at 1, since mean + std of a skewed spread can pass it.
    Losses start at 0."""
    spread = group["std"].fillna(0)
    low = float(min(np.nanmin(group["worst"]), np.nanmin(group["mean"] - spread)))
    high = float(max(np.nanmax(group["best"]), np.nanmax(group["mean"] + spread)))
    if group["direction"].iloc[0] != "maximize":
        return 0.0, None
    span = max(high - low, 0.05)
    bounded = bool(((group["worst"] >= 0) & (group["best"] <= 1)).all())  # scores in [0, 1], e.g. accuracy
    lower, upper = low - 0.3 * span, high + 0.08 * span
    return (max(0.0, lower), upper) if bounded else (lower, upper)


def comparison_png(frame: pd.DataFrame, path: Path) -> None:
    """Grouped bars per (dataset, model): best, mean (error bar: std over trials) and worst of each rule."""
    plt = pyplot()
    groups = _groups(frame)
    if not groups:
        return
    rows, cols = _grid(len(groups))
    fig, axes = plt.subplots(rows, cols, figsize=(max(5.0, 4.2 * cols), 4.2 * rows), squeeze=False)
    width = 0.26
    for ax, (title, group) in zip(axes.flat, groups, strict=False):  # spare axes of the last row stay empty
        x = np.arange(len(group))
        for i, stat in enumerate(("best", "mean", "worst")):
            err = group["std"].to_numpy() if stat == "mean" else None
            ax.bar(x + (i - 1) * width, group[stat], width, yerr=err, capsize=3, label=stat, color=STAT_COLOURS[stat])
        long_labels = (group["label"] != group["algo"]).any()  # study names: rotate so they do not overlap
        ax.set_xticks(x, group["label"], rotation=20 if long_labels else 0, ha="right" if long_labels else "center")
        ax.set_title(title)
        ax.set_ylabel(f"CV {group['metric'].iloc[0]}")
        ax.set_ylim(*_score_limits(group))
        ax.set_xlim(-0.75, len(group) - 0.25)  # a lone rule keeps bars of the usual width
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    # one legend for every panel, above them, where it can cover no bar
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Cross-validated score over trials:\nbest, mean +- std, worst", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def comparison_html(frame: pd.DataFrame, path: Path, bundle: Path) -> None:
    """The same grouped bars as an interactive plotly page that loads plotly.js from ``bundle``."""
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
        for stat in ("best", "mean", "worst"):
            error = dict(type="data", array=group["std"].tolist()) if stat == "mean" else None
            fig.add_trace(
                go.Bar(
                    name=stat, x=group["label"].tolist(), y=group[stat].tolist(), error_y=error,
                    marker_color=STAT_COLOURS[stat], legendgroup=stat, showlegend=i == 0,
                    customdata=group[["study", "complete", "test_score"]].to_numpy(),
                    hovertemplate="%{customdata[0]}<br>" + stat + " %{y:.4f}<br>complete trials %{customdata[1]}"
                    "<br>test %{customdata[2]:.4f}<extra></extra>",
                ),
                row=row, col=col,
            )
        limits = _score_limits(group)
        fig.update_yaxes(
            title_text=f"CV {group['metric'].iloc[0]}", range=None if None in limits else limits, row=row, col=col
        )
    fig.update_layout(barmode="group", title="Cross-validated score over trials: best, mean ± std, worst")
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
    storage's own folder, ``hpo.results.results_dir_for``) from the storage alone."""
    studies = load_studies(storage_url, pattern)
    if not studies:
        raise UsageError(f"no study matching {pattern!r} in storage {redact(storage_url)!r}")
    results = check_writable(results_dir_for(storage_url, results_dir))
    record_owner(results, storage_url)
    frame = summarize(studies)
    sparse_params: set[str] = set()
    try:
        with written_together() as publish:  # a full disk mid-report keeps the previous report set whole
            with atomic_path(results / "summary.csv") as tmp:
                frame.to_csv(tmp, index=False, float_format="%.6g")
            write_text(results / "summary.md", to_markdown(frame))
            comparison_png(frame, results / "comparison.png")
            bundle = plotly_bundle(results)
            comparison_html(frame, results / "comparison.html", bundle)
            for study in studies:
                folder = study_folder(results, study.study_name)
                study_plots(study, folder, bundle, sparse_params)
                write_text(folder / "space.md", space_table(study.user_attrs))
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
    out(f"wrote summaries and charts of {len(studies)} studies to {results}/ (browse {results / 'index.html'})")
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
    # top level (the comparison) first, then each study, then anything else
    return dict(sorted(sections.items(), key=lambda item: (item[0] != ".", not item[0].startswith("studies/"), item[0])))


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
        + (f" --storage {escape(storage_identity(storage))}" if storage else "")
        + "</code>. Every chart of "
        + (f"the {len(studies)} studies of this storage" if studies is not None else "this directory")
        + " is shown below; click a chart for its interactive version where one exists.</p>",
    ]
    summary = results / "summary.csv"
    if summary.is_file():
        table = pd.read_csv(summary).drop(columns=["best_params"], errors="ignore")
        parts.append(table.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4f}", border=0))
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


def print_summary(frame: pd.DataFrame, out=print) -> None:
    shown = frame[["study", "complete", "pruned", "failed", "best", "worst", "mean", "std", "test_score"]]
    out(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


BUNDLED_STORAGE = "studies/bundled.journal"  # the committed run of studies/bundled.toml


def missing_storage_hint(storage_url: str) -> str:
    """Where to look instead when the default local database is absent but the committed run is (a fresh clone)."""
    default_file = Path(DEFAULT_STORAGE.split(":///", 1)[1])
    if storage_url == DEFAULT_STORAGE and not default_file.exists() and Path(BUNDLED_STORAGE).is_file():
        return f"; the committed run is in {BUNDLED_STORAGE}: add --storage {BUNDLED_STORAGE}"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpo.report", description=__doc__.split("\n")[0])
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help="study storage URL or journal file")
    parser.add_argument(
        "--results-dir", help="where to write (default: results/<storage name>, e.g. results/bundled for "
        "studies/bundled.journal)"
    )
    parser.add_argument("--study", default="*", help="only studies whose name matches this glob pattern")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        frame = write_reports(args.storage, args.results_dir, args.study)
    except UsageError as error:
        print(f"error: {error}{missing_storage_hint(args.storage)}", file=sys.stderr)
        return 2
    print_summary(frame)
    return 0


if __name__ == "__main__":
    sys.exit(main())

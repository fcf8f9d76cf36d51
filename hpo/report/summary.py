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

import fnmatch
from pathlib import Path

import optuna
import pandas as pd

from hpo.config import DEFAULT_STORAGE
from hpo.console import Steps, plural
from hpo.errors import UsageError
from hpo.files import atomic_path, check_writable, study_folder, write_text, written_together
from hpo.record import read_study
from hpo.report.charts import comparison_html, comparison_png, study_plots
from hpo.report.comparison import (
    best_params_tables,
    efficiency_png,
)
from hpo.report.curves import write_curve_plots
from hpo.report.folders import plotly_bundle, record_owner, results_dir_for
from hpo.report.importance import cross_rule_importance, study_importance
from hpo.report.index import write_index
from hpo.report.tables import summarize, summary_table, to_markdown
from hpo.space.overrides import space_table
from hpo.storage import open_storage, redact, study_names


def load_studies(storage_url: str, pattern: str = "*") -> list[optuna.Study]:
    storage = open_storage(storage_url, create=False)
    names = [n for n in study_names(storage) if fnmatch.fnmatch(n, pattern)]
    return [optuna.load_study(study_name=n, storage=storage) for n in names]


def write_reports(storage_url: str, results_dir: str | Path | None = None, pattern: str = "*", out=print) -> pd.DataFrame:
    """Regenerate every summary and chart of the storage's studies under ``results_dir`` (default: the
    storage's own folder, ``hpo.report.folders.results_dir_for``) from the storage alone."""
    studies = load_studies(storage_url, pattern)
    if not studies:
        raise UsageError(f"no study matching {pattern!r} in storage {redact(storage_url)!r}")
    results = check_writable(results_dir_for(storage_url, results_dir))
    record_owner(results, storage_url)
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
            steps.report("parameter importances")
            importances = {s.study_name: study_importance(s) for s in studies}
            cross_rule_importance(studies, results, importances)
            for i, study in enumerate(studies, 1):
                steps.report(f"charts of study {i}/{len(studies)}, {study.study_name}")
                folder = study_folder(results, study.study_name)
                study_plots(study, folder, bundle, importances[study.study_name])
                write_text(folder / "space.md", space_table(read_study(study).space))
            steps.report("learning and alignment curves")
            write_curve_plots(studies, results)
            publish()  # the index lists the files found in place
            write_index(results, [s.study_name for s in studies], storage_url, frame)
    except OSError as error:
        detail = error.strerror or str(error)
        # the file, where one in particular failed (a folder where index.html goes), else the folder
        named = error.filename and str(error.filename) != str(results)
        where = f" ({error.filename}: {detail})" if named else f": {detail}"
        raise UsageError(
            f"cannot write the reports to {str(results)!r}{where}; the previous reports are kept"
        ) from None
    out(f"wrote summaries and charts of {plural(len(studies), 'study')} to {results}/ (browse {results / 'index.html'})")
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

"""The index page of a results folder: every chart and table found under it, the summary, and how to
regenerate it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hpo.console import plural
from hpo.files import study_folder, write_text
from hpo.report.comparison import best_params_tables
from hpo.report.folders import storage_argument
from hpo.report.tables import SPREAD_NOTE, SUMMARY_COLUMNS, TEST_NOTE, _notes, summary_table

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


def index_html(results: Path, studies: list[str] | None = None, storage: str | None = None,
               frame: pd.DataFrame | None = None) -> str:
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
    if frame is None and summary.is_file():
        frame = read_summary(summary)
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


def write_index(results_dir: str | Path, studies: list[str] | None = None, storage: str | None = None,
                frame: pd.DataFrame | None = None) -> Path:
    """Write ``index.html`` (atomically) linking every chart under ``results_dir`` (of ``studies`` only, where
    given); return its path. ``frame``: the summary as computed (else read back from ``summary.csv``, whose values
    are rounded to 6 digits: rounding them again to 4 could show 0.7126 where ``summary.md`` shows 0.7125)."""
    results = Path(results_dir)
    path = results / "index.html"
    write_text(path, index_html(results, studies, storage, frame))
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

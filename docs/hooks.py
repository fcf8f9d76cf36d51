"""MkDocs hooks (``mkdocs.yml``: ``hooks``): the site carries the charts and tables it shows.

The pages link the committed results as ``../results/...``, which works where the Markdown is read in the
repository. At build time every chart and table under ``results/`` (PNG, Markdown, CSV) is added to the site at
``results/...``, and the pages' ``../results/`` links are pointed there; so the built site needs nothing outside
itself, and ``mkdocs build --strict`` fails on a link to a file it does not carry.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
CARRIED = (".png", ".md", ".csv")  # charts and tables; the interactive pages load a 4.8 MB script each: not carried
RESULTS_LINK = re.compile(r"(\]\(|src=\")\.\./results/")


def on_files(files: Files, config) -> Files:
    for path in sorted((ROOT / "results").rglob("*")):
        if path.is_file() and path.suffix in CARRIED and not any(p.startswith(".") for p in path.parts):
            files.append(File(path.relative_to(ROOT).as_posix(), str(ROOT), config["site_dir"],
                              config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    return RESULTS_LINK.sub(r"\1results/", markdown)

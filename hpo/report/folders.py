"""Where a storage's results go, and the files every results folder shares.

**One folder per storage.** Unless ``--results-dir`` says otherwise, the report of a storage is written to
``results/<label>/``, where the label is the storage file's name without its suffix (``sqlite:///studies/studies.db``
-> ``results/studies/``, ``studies/bundled.journal`` -> ``results/bundled/``) or, for a database server, the
database's name (``postgresql://user:***@host:5432/hpo`` -> ``results/hpo/``). So the quick start never writes
into the committed run's folder.

Two storages with the same label (``a/x.db`` and ``b/x.db``) would share a folder; each results folder therefore
records the storage it belongs to (``.storage``), and a derived folder that belongs to another storage is refused
with one line that asks for ``--results-dir``. An explicit ``--results-dir`` is the user's choice and is used as
given.

**No network.** Every interactive chart loads plotly.js from ``plotly.min.js`` at the top of its results folder
(written once, by ``plotly_bundle``) through a relative path, so the pages work offline and from a copied folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hpo.errors import UsageError
from hpo.files import atomic_path, read_own_file, write_text
from hpo.storage import is_rdb_url, redact

RESULTS_ROOT = Path("results")  # parent of the derived per-storage folders (relative to the working directory)
OWNER_FILE = ".storage"  # inside a results folder: the storage its report was written from
PLOTLY_JS = "plotly.min.js"  # inside a results folder: the plotly.js every chart of the folder loads


def storage_label(storage: str) -> str:
    """The folder name a storage's results get: its file's stem, or its database's name on a server."""
    if is_rdb_url(storage):
        from sqlalchemy.engine import make_url

        url = make_url(storage)
        if url.drivername.startswith("sqlite"):
            database = url.database or ""
            name = "memory" if database in ("", ":memory:") else Path(database).stem
        else:
            name = url.database or url.host or "database"
    else:
        name = Path(storage).stem
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")  # one path component, never hidden
    return label or "storage"


def storage_identity(storage: str) -> str:
    """What names a storage in ``.storage``: a file's path relative to the working directory where it lies
    below it (so every clone of the repository agrees), else absolute; a server URL without its password."""
    if is_rdb_url(storage) and not storage.startswith("sqlite"):
        return redact(storage)
    path = storage.split(":///", 1)[1] if storage.startswith("sqlite") else storage
    if path in ("", ":memory:"):
        return storage
    absolute = Path(path).resolve()
    try:
        return absolute.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return absolute.as_posix()


def storage_argument(storage: str) -> str:
    """The ``--storage`` value that names this storage again (for "regenerate with" lines): ``storage_identity``,
    with ``sqlite:///`` kept for a SQLite file (a bare path is read as a journal)."""
    identity = storage_identity(storage)
    if storage.startswith("sqlite") and identity != storage:
        return f"sqlite:///{identity}"
    return identity


def results_dir_for(storage: str, results_dir: str | Path | None) -> Path:
    """The folder a storage's results are written to: ``results_dir`` if given, else ``results/<label>``.

    A derived folder already holding another storage's report raises a UsageError (see the module docstring).
    """
    if results_dir is not None:
        return Path(results_dir)
    derived = RESULTS_ROOT / storage_label(storage)
    owner = recorded_owner(derived)
    if owner is not None and owner != storage_identity(storage):
        whose = "an unknown storage: its .storage is not a file this project wrote" if owner == UNKNOWN_OWNER \
            else f"storage {redact(owner)!r}"
        raise UsageError(
            f"results folder {derived.as_posix()!r} holds the report of {whose}, not of {redact(storage)!r}; choose "
            "a folder for this storage with --results-dir"
        )
    return derived


OWNER_LIMIT = 4096  # bytes: a storage identity is one line


def recorded_owner(results: Path) -> str | None:
    """The storage whose report ``results`` holds (its ``OWNER_FILE``), None where there is none. A marker this
    project did not write (a link, a FIFO, a long or binary file, more than one line) is never read out: its owner
    is ``UNKNOWN_OWNER``, which no storage is, so the folder is refused without showing what the file holds."""
    path = results / OWNER_FILE
    if not os.path.lexists(path):
        return None
    data = read_own_file(path, OWNER_LIMIT)
    try:
        text = data.decode("utf-8").strip() if data is not None else ""
    except UnicodeDecodeError:
        text = ""
    if not text or "\n" in text or not text.isprintable():
        return UNKNOWN_OWNER
    return text


UNKNOWN_OWNER = "(a .storage file this project did not write)"


def record_owner(results: Path, storage: str) -> None:
    identity = storage_identity(storage)
    if recorded_owner(results) != identity:
        write_text(results / OWNER_FILE, identity + "\n")


def plotly_bundle(results: Path) -> Path:
    """Write plotly.js (the copy of the installed plotly package) as ``results/plotly.min.js`` unless it is
    already there, byte for byte; return its path."""
    from plotly.offline import get_plotlyjs

    path = results / PLOTLY_JS
    script = get_plotlyjs()
    current = read_own_file(path, 2 * len(script.encode()))  # never a FIFO or a link waited on or read through
    if current != script.encode():
        write_text(path, script)
    return path


def write_html(figure, path: Path, bundle: Path) -> None:
    """Write a plotly figure to ``path`` as a page that loads plotly.js from ``bundle`` (see ``plotly_bundle``)
    through a relative path: no network, and the folder can be moved or copied whole."""
    relative = Path(os.path.relpath(bundle, path.parent)).as_posix()
    with atomic_path(path) as tmp:
        # a fixed element id (plotly draws a random one) so that regenerating a report changes no unchanged page
        figure.write_html(tmp, include_plotlyjs=relative, full_html=True, div_id=f"{path.stem}-chart")

"""Writing result and cache files: atomically (temporary name, then rename), with the user's umask, and
matplotlib set up for files (no display).

Every module that writes a file uses these, so an interrupted or failed write never leaves half a file where a
reader (a browser, another worker, the notebook) would find it.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from hpo.errors import UsageError


def _temporary_name(path: Path) -> Path:
    """A name beside ``path``, unique per process and call, hidden (leading dot) so listings skip it."""
    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}{path.suffix}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on failure remove it.

    The caller creates the file at the yielded path (``open``, ``savefig``, ``to_csv``), so it gets the usual
    permissions of the umask: a shared results folder or a web server can read it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through ``write(handle)`` on a temporary file that is then renamed over it."""
    with atomic_path(path) as tmp, open(tmp, "xb") as handle:
        write(handle)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_writable(directory: str | Path) -> Path:
    """Fail early, before any training, if files cannot be written to ``directory`` (created if missing)."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UsageError(f"results directory {str(path)!r} is not writable: {error.strerror or error}") from None
    return path


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (charts are written, never shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

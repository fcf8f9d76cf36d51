"""Writing result and cache files: atomically (temporary name, then rename), with the user's umask, and
matplotlib set up for files (no display).

Every module that writes a file uses these, so an interrupted or failed write never leaves half a file where a
reader (a browser, another worker, the notebook) would find it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import tempfile
import tomllib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from pathlib import Path
from typing import IO

from hpo.errors import UsageError


def user_cache_dir() -> Path:
    """This tool's folder in the user's cache directory: ``$XDG_CACHE_HOME/bioplausible-hpo`` or
    ``~/.cache/bioplausible-hpo`` (downloaded data, array caches, compiled programs)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "bioplausible-hpo"


def _temporary_name(path: Path) -> Path:
    """A name beside ``path``, unique per process and call, hidden (leading dot) so listings skip it."""
    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}{path.suffix}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on failure remove it.

    The caller creates the file at the yielded path (``open``, ``savefig``, ``to_csv``), so it gets the usual
    permissions of the umask: a shared results folder or a web server can read it. Inside ``written_together``
    the rename waits for the end of that block.
    """
    kind = special_file(path)
    if kind is not None:  # a folder or a FIFO where the file goes: refused before anything is written or renamed
        raise OSError(errno.EEXIST, f"a {kind} stands where the file goes", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        yield tmp
        batch = _BATCH.get()
        if batch is None:
            os.replace(tmp, path)
        else:
            batch.pending.append((tmp, path))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _Batch:
    """Files of one ``written_together`` block: written (temporary names), then published, or all rolled back."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []  # (temporary file, its final path), not yet renamed
        self.published: list[tuple[Path, Path | None]] = []  # (final path, backup of its previous version)

    def publish(self) -> None:
        """Rename every pending file into place, keeping the previous version of each until the block ends."""
        while self.pending:
            tmp, path = self.pending.pop(0)
            backup = None
            if path.exists():
                backup = _temporary_name(path)
                try:
                    os.link(path, backup)  # the old version stays in place until the rename replaces it
                except OSError:
                    os.replace(path, backup)  # no hard links on this filesystem: a moment without the file
            self.published.append((path, backup))
            os.replace(tmp, path)

    def roll_back(self) -> None:
        """Remove the pending files and put the previous version of every published one back."""
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)
        for path, backup in reversed(self.published):
            if backup is None:
                path.unlink(missing_ok=True)
            else:
                os.replace(backup, path)
        self.pending, self.published = [], []

    def discard_backups(self) -> None:
        for _, backup in self.published:
            if backup is not None:
                backup.unlink(missing_ok=True)


_BATCH: ContextVar[_Batch | None] = ContextVar("hpo_files_batch", default=None)


@contextmanager
def written_together() -> Iterator[Callable[[], None]]:
    """Files written with ``atomic_path`` in the block replace their previous versions all together, or not at all.

    A failure anywhere in the block (a full disk while writing the tenth chart) leaves every file as it was
    before the block: a report set is never half old and half new. The block gets a function that publishes
    what was written so far (to write a file that reads the others, such as an index page); a later failure
    still rolls those back.
    """
    batch = _Batch()
    token = _BATCH.set(batch)
    try:
        yield batch.publish
        batch.publish()
    except BaseException:
        try:
            batch.roll_back()
        finally:
            _BATCH.reset(token)
        raise
    _BATCH.reset(token)
    batch.discard_backups()


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through ``write(handle)`` on a temporary file that is then renamed over it."""
    with atomic_path(path) as tmp, open(tmp, "xb") as handle:
        write(handle)


def file_kind(mode: int) -> str:
    """What a ``st_mode`` that is not a regular file's is: ``FIFO``, ``character device``, ..."""
    for test, kind in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return kind
    return "special file"


def special_file(path: Path) -> str | None:
    """What ``path`` is if it exists and is not a regular file (following links; ``link to nothing`` for a
    dangling one), else None. A FIFO would block whoever opens it and ``/dev/zero`` never ends: nothing the
    project reads may be one."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "link to nothing" if os.path.islink(path) else None
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else file_kind(mode)


def read_own_file(path: Path, limit: int) -> bytes | None:
    """The bytes of a small file the project wrote itself (a results folder's marker, a cached bundle), or None
    where ``path`` is missing, a symbolic link, not a regular file (a FIFO is never waited on) or longer than
    ``limit`` bytes: such a file was not written by us, and its content must never be read or shown."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = handle.read(limit + 1)
    return data if len(data) <= limit else None


def read_toml(path: str | Path, what: str) -> dict:
    """The document of a TOML file the user gave (``what``: "config file", "space file"), or one line saying why
    not: unreadable, a FIFO or device, not UTF-8 (with the byte and its offset), or not TOML."""
    path = Path(path)
    kind = special_file(path)
    if kind is not None:
        raise UsageError(f"{what} {str(path)!r} is a {kind}, not a file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"cannot read {what} {str(path)!r}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{what} {str(path)!r} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
            f"{error.start}); TOML files must be UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{what} {str(path)!r} is not valid TOML: {error}") from None


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_writable(directory: str | Path) -> Path:
    """Fail early, before any training, if files cannot be written to ``directory``.

    Leaves nothing behind: the folders it creates to find out are removed again (writing a file creates them).
    """
    path = Path(directory)
    created: list[Path] = []
    try:
        for folder in reversed([p for p in (path, *path.parents) if not p.exists()]):
            folder.mkdir()
            created.append(folder)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UsageError(f"results directory {str(path)!r} is not writable: {error.strerror or error}") from None
    finally:
        for folder in reversed(created):
            with suppress(OSError):
                folder.rmdir()
    return path


# A study name used as it is for its results folder: one path component, no hidden file, no separator, short.
# '+' is not allowed here and always precedes the hash of a mapped name, so no kept name equals a mapped one.
_KEPT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SLUG_CHARACTERS = 60  # of a mapped name, before its hash: folder names stay far below the 255-byte limit
HASH_CHARACTERS = 12  # hex digits of the name's SHA-256 that make a mapped folder name unique


def path_component(name: str) -> str:
    """One safe path component for ``name``, which may come from a storage other people can write to (a study's
    name, its ``dataset`` and ``model`` attributes), so it is never used as a path: a name made of letters, digits,
    ``.``, ``_`` and ``-`` (starting with a letter or digit, at most 100 characters) is kept as it is
    (``digits-mlp-fa``), and any other name (``../../etc``, ``/tmp/x``, a name of 300 bytes, control characters)
    becomes a slug of its safe characters, ``+`` and a hash of the whole name (``etc+74ccf3c5b4c1``), so two
    different names never share a component."""
    if _KEPT_NAME.fullmatch(name):
        return name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:SLUG_CHARACTERS].rstrip("._-") or "study"
    return f"{slug}+{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:HASH_CHARACTERS]}"


def study_folder(results: str | Path, name: str) -> Path:
    """The folder of study ``name``'s files under ``results``: always ``results/studies/<path_component(name)>``."""
    return Path(results) / "studies" / path_component(name)


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (charts are written, never shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

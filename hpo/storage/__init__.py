"""Study storage: SQLite and PostgreSQL through Optuna's RDB storage, or a journal file; URLs shown safely.

    urls.py     what a --storage value names, and its display with every password hidden
    rdb.py      SQLite and PostgreSQL: heartbeats, bounded waits on a server, workers racing to create tables
    journal.py  a journal file: checked to be one before it is touched, made whole after a crash
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage

from hpo.errors import UsageError
from hpo.files import special_file
from hpo.storage.journal import TORN_SUFFIX, check_journal, open_journal
from hpo.storage.rdb import MAX_RETRY, heartbeat_settings, open_rdb
from hpo.storage.urls import (
    check_url,
    first_line,
    is_rdb_url,
    is_server_url,
    local_path,
    redact,
    scrub,
    url_secrets,
)

# What a storage raises when it fails under a running study: SQLAlchemy's errors (Optuna wraps some in its
# StorageInternalError; psycopg's are wrapped by SQLAlchemy). A journal file's OS errors become StorageError.
STORAGE_FAILURES = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)


def writable(path: Path) -> bool:
    """Whether ``path`` and its folder can really be written (opened for appending, a file created beside it; the
    file itself is left as it is): permissions, read-only mounts and immutable files alike, for any user."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError:
        return False
    return True


def refuse_special(url: str) -> None:
    """A local storage path that is there but is not a regular file (a FIFO would block the first read or write,
    a device would be written to) is one line naming it; a directory is said by ``check_journal``."""
    path = local_path(url)
    kind = special_file(path) if path is not None else None
    if kind not in (None, "directory"):
        raise UsageError(f"storage {redact(url)!r} is a {kind}, not a file; give a journal file, sqlite:///FILE or a "
                         "postgresql:// URL")


def check_storage(url: str) -> None:
    """Refuse an unusable storage before anything is created.

    A database server is connected to (and Optuna's tables created if the database is empty); an existing local
    file is opened; for a local file that does not exist yet, only its folder is checked: nothing is created.
    """
    check_url(url)
    path = local_path(url)
    refuse_special(url)
    if not is_rdb_url(url):
        check_journal(Path(url))
    if path is not None and path.is_file() and not writable(path):
        # a study writes every trial (and SQLite its journal file beside the database): unusable, not lost later
        raise UsageError(f"storage {redact(url)!r} is read-only ({path} or its folder cannot be written): a study "
                         "must write to it; copy it somewhere writable, or report from it with python -m hpo.report")
    if path is None or path.exists():
        open_storage(url)
        return
    if is_rdb_url(url):
        heartbeat_settings()
    folder = next(p for p in path.parents if p.exists())
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(f"cannot open storage {redact(url)!r}: {error.strerror or error} ({folder})") from None


def open_storage(url: str, create: bool = True) -> BaseStorage:
    """Open (creating if needed) the storage behind ``url``.

    ``sqlite:///path``, ``postgresql://user:password@host:port/db`` (and other SQLAlchemy URLs) use
    Optuna's RDB storage with heartbeats, so a trial whose worker died is failed and retried once with the
    same parameters. Anything else is taken as the path of an Optuna journal file (for shared filesystems
    without a database server). Errors name the storage (password hidden) and never show a traceback.
    With ``create=False`` a local file (SQLite database or journal) must already exist.
    """
    check_url(url)
    local = local_path(url)
    refuse_special(url)
    if not create and local is not None and not local.is_file():
        raise UsageError(f"storage {redact(url)!r} does not exist")
    try:
        if is_rdb_url(url):
            return open_rdb(url)
        return open_journal(Path(url), repair=create)
    except UsageError:
        raise
    except Exception as error:  # noqa: BLE001 -- any driver error becomes one clear line
        raise UsageError(f"cannot open storage {redact(url)!r}: {first_line(error, url)}") from None


def study_names(storage: BaseStorage) -> list[str]:
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))


__all__ = [
    "MAX_RETRY", "STORAGE_FAILURES", "TORN_SUFFIX", "check_storage", "first_line", "heartbeat_settings", "is_rdb_url",
    "is_server_url", "open_storage", "redact", "scrub", "study_names", "url_secrets",
]

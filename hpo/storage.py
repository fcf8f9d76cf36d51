"""Study storage: SQLite/PostgreSQL through Optuna's RDB storage, or a journal file, and safe display of URLs."""

from __future__ import annotations

import os
import re
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage

from hpo.errors import UsageError

RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
HEARTBEAT_SECONDS = 30  # a running trial writes a heartbeat this often (RDB storage); env HPO_HEARTBEAT_SECONDS
GRACE_SECONDS = 90  # a trial without a heartbeat for this long is stale: failed and retried; env HPO_GRACE_SECONDS
CONNECT_TIMEOUT_SECONDS = 5  # a database server that does not answer within this is reported as unreachable
MAX_RETRY = 1  # a trial whose worker died is re-queued this many times with the same parameters
SCHEMA_ATTEMPTS = 4  # tries to open a storage whose tables other workers are creating at the same moment


def is_rdb_url(url: str) -> bool:
    return re.match(rf"^({'|'.join(RDB_SCHEMES)})(\+\w+)?://", url) is not None


def is_server_url(url: str) -> bool:
    """True for a database server (PostgreSQL, MySQL) that workers on many machines share.

    Dead workers of such storages are found by heartbeats only; for a local file (SQLite, journal) the
    owner process of a running trial can also be checked directly (see ``hpo.workers``).
    """
    return is_rdb_url(url) and not url.startswith("sqlite")


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds; the environment can shorten them (tests, fast clusters)."""
    values = []
    for name, default in (("HPO_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS), ("HPO_GRACE_SECONDS", GRACE_SECONDS)):
        text = os.environ.get(name, "")
        if not text:
            values.append(default)
            continue
        if not text.isdigit() or int(text) < 1:
            raise UsageError(f"{name} must be a whole number of seconds >= 1, got {text!r}")
        values.append(int(text))
    interval, grace = values
    if grace <= interval:
        raise UsageError(
            f"HPO_GRACE_SECONDS ({grace}) must be longer than the heartbeat interval ({interval}), "
            "or live trials would be failed as stale"
        )
    return interval, grace


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``: the only form in which a URL is ever shown."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def open_storage(url: str, create: bool = True) -> BaseStorage:
    """Open (creating if needed) the storage behind ``url``.

    ``sqlite:///path``, ``postgresql://user:password@host:port/db`` (and other SQLAlchemy URLs) use
    Optuna's RDB storage with heartbeats, so a trial whose worker died is failed and retried once with the
    same parameters. Anything else is taken as the path of an Optuna journal file (for shared filesystems
    without a database server). Errors name the storage (password hidden) and never show a traceback.
    With ``create=False`` a local file (SQLite database or journal) must already exist.
    """
    if not url:
        raise UsageError("--storage must not be empty")
    if "://" in url and not is_rdb_url(url):
        raise UsageError(
            f"unsupported storage URL {redact(url)!r}; use sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DB "
            "or the path of a journal file"
        )
    local = url.split(":///", 1)[-1] if url.startswith("sqlite") else None if is_rdb_url(url) else url
    if not create and local and local != ":memory:" and not Path(local).is_file():
        raise UsageError(f"storage {redact(url)!r} does not exist")
    try:
        if is_rdb_url(url):
            return _open_rdb(url)
        return _open_journal(Path(url))
    except UsageError:
        raise
    except Exception as error:  # noqa: BLE001 -- any driver error becomes one clear line
        raise UsageError(f"cannot open storage {redact(url)!r}: {_first_line(error, url)}") from None


def _open_rdb(url: str) -> BaseStorage:
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    engine_kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    interval, grace = heartbeat_settings()
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                # Heartbeats and the retry callback are marked experimental; they are what makes crashes lose nothing.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=interval,
                    grace_period=grace,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as e:
            # Workers that start together on an empty database race to create Optuna's tables; the loser's
            # CREATE or INSERT collides with the winner's committed one. The tables now exist: open again.
            if attempt + 1 == SCHEMA_ATTEMPTS or not _is_schema_race(e):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _is_schema_race(error: Exception) -> bool:
    text = str(error).lower()
    return isinstance(error, sqlalchemy.exc.IntegrityError) or "already exists" in text or "duplicate" in text


def _open_journal(path: Path) -> BaseStorage:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if path.exists() and path.is_dir():
        raise UsageError(f"journal storage {str(path)!r} is a directory; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _first_line(error: Exception, url: str) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return scrub(text, url)


def scrub(text: str, url: str) -> str:
    """``text`` with the URL's password removed wherever it appears, alone or inside the URL."""
    match = re.search(r"://[^:/@]*:([^@]*)@", url)
    text = text.replace(url, redact(url))
    if match and match.group(1):
        text = text.replace(match.group(1), "***")
    return redact(text)


def study_names(storage: BaseStorage) -> list[str]:
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))

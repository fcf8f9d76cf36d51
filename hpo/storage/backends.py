"""Study storage: SQLite/PostgreSQL through Optuna's RDB storage, or a journal file, and safe display of URLs."""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file

from hpo.errors import StorageError, UsageError

RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
HEARTBEAT_SECONDS = 30  # a running trial writes a heartbeat this often (RDB storage); env HPO_HEARTBEAT_SECONDS
GRACE_SECONDS = 90  # a trial without a heartbeat for this long is stale: failed and retried; env HPO_GRACE_SECONDS
CONNECT_TIMEOUT_SECONDS = 5  # a database server that does not answer within this is reported as unreachable
# Every request to a database server is answered within this many seconds, or the worker stops with one line
# (env HPO_DB_TIMEOUT_SECONDS): the server cancels a statement running longer (statement_timeout), TCP gives up
# on data the server's machine does not acknowledge (tcp_user_timeout), and the client stops waiting
# ANSWER_MARGIN_SECONDS later (a stopped server process, whose kernel still acknowledges everything).
DB_TIMEOUT_SECONDS = 60
ANSWER_MARGIN_SECONDS = 5  # after the server's own statement_timeout, which gives the clearer message
KEEPALIVE_SECONDS = (10, 5, 4)  # idle time, probe interval, probes: an idle connection to a dead host drops in 30 s
ANSWER_TIMEOUT_ARG = "hpo_answer_timeout"  # connect argument read (and removed) by _connect_with_deadline
MAX_RETRY = 1  # a trial whose worker died is re-queued this many times with the same parameters
SCHEMA_ATTEMPTS = 4  # tries to open a storage whose tables other workers are creating at the same moment


# What a storage raises when it fails under a running study: SQLAlchemy's errors (Optuna wraps some in its
# StorageInternalError; psycopg's are wrapped by SQLAlchemy). A journal file's OS errors become StorageError.
STORAGE_FAILURES = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)


def is_rdb_url(url: str) -> bool:
    return re.match(rf"^({'|'.join(RDB_SCHEMES)})(\+\w+)?://", url) is not None


def is_server_url(url: str) -> bool:
    """True for a database server (PostgreSQL, MySQL) that workers on many machines share.

    Dead workers of such storages are found by heartbeats only; for a local file (SQLite, journal) the
    owner process of a running trial can also be checked directly (see ``hpo.parallel.workers``).
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


# Query-string keys whose values are credentials (password, passwd, sslpassword, pwd, a token, a secret).
CREDENTIAL_KEY = r"[^=&#;\s]*(?:pass|pwd|secret|token)[^=&#;\s]*"


def database_timeout() -> int:
    """Seconds a database server has to answer any request (``DB_TIMEOUT_SECONDS``; env HPO_DB_TIMEOUT_SECONDS)."""
    text = os.environ.get("HPO_DB_TIMEOUT_SECONDS", "")
    if not text:
        return DB_TIMEOUT_SECONDS
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"HPO_DB_TIMEOUT_SECONDS must be a whole number of seconds >= 1, got {text!r}")
    return int(text)


def redact(url: str) -> str:
    """The URL with every password replaced by ``***``: the only form in which a URL is ever shown.

    Hides the password of ``user:password@`` (up to the *last* ``@``, so a password containing ``@`` or ``/``
    is hidden whole, even where SQLAlchemy itself would cut it at the first ``@``), credential values of the
    query string (``?password=...``, ``&sslpassword=...``) and ``password=...`` in a libpq keyword string.
    Works on any string, parseable or not; it may hide more than the password, never less.
    """
    text = re.sub(r"^([\w+.-]+://[^:/?#@]*:).*@", r"\1***@", str(url), flags=re.DOTALL)
    text = re.sub(rf"([?&;]{CREDENTIAL_KEY}=)[^&#;]*", r"\1***", text, flags=re.IGNORECASE)
    return _hide_keywords(text)


def _hide_keywords(text: str) -> str:
    """``password=secret`` (libpq keyword/value strings, driver messages) -> ``password=***``."""
    return re.sub(r"\b(password|passwd|pwd)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&;]+)", r"\1\2***", text, flags=re.I)


def url_secrets(url: str) -> list[str]:
    """Every credential in ``url``, raw and decoded, longest first: what ``scrub`` removes from any text.

    Taken from SQLAlchemy's own parse (``make_url``) where the URL parses, and from the raw text either way
    (a password with an ``@`` is parsed by SQLAlchemy only up to that ``@``).
    """
    from urllib.parse import unquote

    from sqlalchemy.engine import make_url

    found: list[str] = []
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 -- unparseable: the raw text below still finds the credentials
        parsed = None
    userinfo = re.match(r"^[\w+.-]+://[^:/?#@]*:(.*)@", url, flags=re.DOTALL)
    if userinfo:
        found.append(userinfo.group(1))
        # SQLAlchemy takes what follows a password's first "@" for the host name, which driver errors then show
        found.extend(userinfo.group(1).split("@", 1)[1:])
    if parsed is not None:
        # SQLAlchemy cuts a password at its first "@"; that piece is hidden as part of the whole one above
        if parsed.password and not (userinfo and userinfo.group(1).startswith(f"{parsed.password}@")):
            found.append(str(parsed.password))
        for key, value in parsed.query.items():
            if re.fullmatch(CREDENTIAL_KEY, key, flags=re.IGNORECASE):
                found.extend([value] if isinstance(value, str) else value)
    for key, value in re.findall(r"[?&;]([^=&#;]*)=([^&#;]*)", url):
        if re.fullmatch(CREDENTIAL_KEY, unquote(key), flags=re.IGNORECASE):
            found.extend((value, unquote(value)))
    for quoted, bare in re.findall(r"\b(?:password|passwd|pwd)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|([^\s&;]+))", url, re.I):
        found.append(quoted or bare)
    return sorted({s for s in found if s}, key=len, reverse=True)


def check_storage(url: str) -> None:
    """Refuse an unusable storage before anything is created.

    A database server is connected to (and Optuna's tables created if the database is empty); an existing local
    file is opened; for a local file that does not exist yet, only its folder is checked: nothing is created.
    """
    _check_url(url)
    path = _local_path(url)
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


def _check_url(url: str) -> None:
    if not url:
        raise UsageError("--storage must not be empty")
    if "://" in url and not is_rdb_url(url):
        raise UsageError(
            f"unsupported storage URL {redact(url)!r}; use sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DB "
            "or the path of a journal file"
        )


def _local_path(url: str) -> Path | None:
    """The file of a SQLite database or a journal, or None (a database server, an in-memory database)."""
    if url.startswith("sqlite"):
        local = url.split(":///", 1)[1] if ":///" in url else ""
        return Path(local) if local and local != ":memory:" else None
    return None if is_rdb_url(url) else Path(url)


def open_storage(url: str, create: bool = True) -> BaseStorage:
    """Open (creating if needed) the storage behind ``url``.

    ``sqlite:///path``, ``postgresql://user:password@host:port/db`` (and other SQLAlchemy URLs) use
    Optuna's RDB storage with heartbeats, so a trial whose worker died is failed and retried once with the
    same parameters. Anything else is taken as the path of an Optuna journal file (for shared filesystems
    without a database server). Errors name the storage (password hidden) and never show a traceback.
    With ``create=False`` a local file (SQLite database or journal) must already exist.
    """
    _check_url(url)
    local = _local_path(url)
    if not create and local is not None and not local.is_file():
        raise UsageError(f"storage {redact(url)!r} does not exist")
    try:
        if is_rdb_url(url):
            return _open_rdb(url)
        return _open_journal(Path(url), repair=create)
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
        engine_kwargs["connect_args"] = postgres_connect_args(url, database_timeout())
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


def postgres_connect_args(url: str, timeout: int) -> dict:
    """libpq settings that bound every wait on a PostgreSQL server (see ``DB_TIMEOUT_SECONDS``).

    Settings given in the URL's query string win (``?connect_timeout=20``); ``options`` are appended to ours.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    idle, interval, count = KEEPALIVE_SECONDS
    defaults = {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": count,
        "tcp_user_timeout": timeout * 1000,
    }
    args: dict = {key: value for key, value in defaults.items() if key not in parsed.query}
    args["options"] = " ".join(filter(None, [f"-c statement_timeout={timeout * 1000}", parsed.query.get("options")]))
    if parsed.get_driver_name() == "psycopg":  # psycopg 3 (SQLAlchemy's default driver): bound the client's wait too
        _install_answer_deadline()
        args[ANSWER_TIMEOUT_ARG] = timeout + ANSWER_MARGIN_SECONDS
    return args


def _install_answer_deadline() -> None:
    from sqlalchemy import event
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    if not event.contains(PGDialect_psycopg, "do_connect", _connect_with_deadline):
        event.listen(PGDialect_psycopg, "do_connect", _connect_with_deadline)


def _connect_with_deadline(dialect, connection_record, cargs, cparams):
    """SQLAlchemy's connect hook: a psycopg connection whose every wait for the server ends within the deadline.

    A stopped (SIGSTOP) or wedged server process keeps its sockets open and its kernel acknowledges every
    byte, so neither TCP keepalives nor tcp_user_timeout notice it and the server cannot enforce its own
    statement_timeout: only the client can stop waiting. Engines without ``ANSWER_TIMEOUT_ARG`` connect as usual.
    """
    timeout = cparams.pop(ANSWER_TIMEOUT_ARG, None)
    if timeout is None:
        return None
    connection = _answering_connection_class().connect(*cargs, **cparams)
    connection.answer_timeout = timeout
    return connection


@functools.cache
def _answering_connection_class():
    import psycopg

    wait_timeout = getattr(psycopg.errors, "_WaitTimeout", psycopg.OperationalError)

    class AnsweringConnection(psycopg.Connection):
        """A psycopg connection that waits at most ``answer_timeout`` seconds for any answer of the server."""

        answer_timeout: float | None = None

        def wait(self, gen, *args, **kwargs):
            if self.answer_timeout is None or kwargs.get("timeout") is not None or len(args) > 1:
                return super().wait(gen, *args, **kwargs)
            try:
                return super().wait(gen, *args, timeout=self.answer_timeout, **kwargs)
            except wait_timeout:
                # Half a request is on the wire: the connection cannot be used again. Closed, SQLAlchemy drops it.
                self.pgconn.finish()
                raise psycopg.OperationalError(
                    f"the connection is lost: the server sent no answer within {self.answer_timeout:g} s"
                ) from None

    return AnsweringConnection


def _is_schema_race(error: Exception) -> bool:
    text = str(error).lower()
    return isinstance(error, sqlalchemy.exc.IntegrityError) or "already exists" in text or "duplicate" in text


def _open_journal(path: Path, repair: bool) -> BaseStorage:
    from optuna.storages import JournalStorage

    if path.exists() and path.is_dir():
        raise UsageError(f"journal storage {str(path)!r} is a directory; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = RepairingJournalBackend(str(path))
    if repair:  # a writer: make the file whole now, so the first append of this process lands on a clean line
        backend.repair()
    try:
        return JournalStorage(backend)
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        raise UsageError(
            f"journal {str(path)!r} has a damaged record inside ({type(error).__name__}: {error}): an older version "
            "appended a record onto one left unfinished by a crash; delete the unfinished start of that line"
        ) from None


TORN_SUFFIX = ".torn"  # copies of the unfinished last records cut off a journal: <journal>.torn-<time>-<pid>


class RepairingJournalBackend(JournalFileBackend):
    """Optuna's journal file, made whole again after a writer died in the middle of an append.

    A worker that dies while appending (SIGKILL, power loss, a full disk) leaves an unfinished last line.
    Optuna skips such a line when reading, but its next append would be glued onto it and turn it into a
    damaged line in the middle of the file, which then fails to load everywhere. So, under the journal's own
    lock (the one every append holds, so no live writer is mid-append), each append first cuts the file back to
    its last complete line, keeping what it cut in a ``.torn-*`` file beside it and saying so in one line.
    """

    def repair(self) -> str | None:
        with get_lock_file(self._lock):
            return self._cut_torn_tail()

    def append_logs(self, logs: list[dict]) -> None:
        try:
            with get_lock_file(self._lock):
                self._cut_torn_tail()
                text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
                with open(self._file_path, "ab") as f:  # as JournalFileBackend.append_logs
                    f.write(text.encode("utf-8"))
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as error:  # a full disk, a lost network filesystem: one line, not a traceback
            raise StorageError(f"cannot append to the journal: {error.strerror or error}") from None

    def read_logs(self, log_number_from: int):
        try:
            yield from super().read_logs(log_number_from)
        except OSError as error:
            raise StorageError(f"cannot read the journal: {error.strerror or error}") from None

    def _cut_torn_tail(self) -> str | None:
        """Cut an unfinished last line (call with the lock held); return the line said about it, or None."""
        path = Path(self._file_path)
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return None
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return None
            keep = _after_last_newline(f, size)
            f.seek(keep)
            torn = f.read()
            copy = path.with_name(f"{path.name}{TORN_SUFFIX}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            with open(copy, "xb") as saved:
                saved.write(torn)
                saved.flush()
                os.fsync(saved.fileno())
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        # The log-number cache of the base class points into the old tail; an offset past the cut is stale.
        self._log_number_offset = {n: o for n, o in self._log_number_offset.items() if o <= keep}
        message = (
            f"journal {str(path)!r}: cut off {len(torn)} bytes of an unfinished last record (a writer died while "
            f"appending it); they are kept in {str(copy)!r}"
        )
        print(message, file=sys.stderr, flush=True)
        return message


def _after_last_newline(f, size: int, block: int = 1 << 16) -> int:
    """Offset just after the last b"\\n" of the open file ``f`` of ``size`` bytes (0 if it has none)."""
    end = size
    while end > 0:
        start = max(0, end - block)
        f.seek(start)
        chunk = f.read(end - start)
        found = chunk.rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def _first_line(error: Exception, url: str) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return scrub(text, url)


def scrub(text: str, url: str) -> str:
    """``text`` with the URL's password removed wherever it appears: alone, inside the URL, or in another URL."""
    text = text.replace(url, redact(url))
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    text = re.sub(r"([\w+.-]+://[^:/?#@\s]*:)\S*@", r"\1***@", text)  # URLs inside a message end at a space
    text = re.sub(rf"([?&;]{CREDENTIAL_KEY}=)[^&#;\s]*", r"\1***", text, flags=re.IGNORECASE)
    return _hide_keywords(text)


def study_names(storage: BaseStorage) -> list[str]:
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))

"""SQLite and PostgreSQL through Optuna's RDB storage: heartbeats, bounded waits on a server, racing workers."""

from __future__ import annotations

import functools
import os
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage

from hpo.errors import UsageError

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


def database_timeout() -> int:
    """Seconds a database server has to answer any request (``DB_TIMEOUT_SECONDS``; env HPO_DB_TIMEOUT_SECONDS)."""
    text = os.environ.get("HPO_DB_TIMEOUT_SECONDS", "")
    if not text:
        return DB_TIMEOUT_SECONDS
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"HPO_DB_TIMEOUT_SECONDS must be a whole number of seconds >= 1, got {text!r}")
    return int(text)


def open_rdb(url: str) -> BaseStorage:
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
    given = parsed.query.get("options")
    given = " ".join(given) if isinstance(given, tuple) else given  # a query key given twice
    args["options"] = " ".join(filter(None, [f"-c statement_timeout={timeout * 1000}", given]))
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

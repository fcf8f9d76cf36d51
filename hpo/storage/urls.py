"""Storage URLs: which kind of storage a value names, and the only form in which one is ever shown (no password)."""

from __future__ import annotations

import re
from pathlib import Path

from hpo.errors import UsageError

RDB_SCHEMES = ("sqlite", "postgresql", "mysql")


def is_rdb_url(url: str) -> bool:
    return re.match(rf"^({'|'.join(RDB_SCHEMES)})(\+\w+)?://", url) is not None


def is_server_url(url: str) -> bool:
    """True for a database server (PostgreSQL, MySQL) that workers on many machines share.

    Dead workers of such storages are found by heartbeats only; for a local file (SQLite, journal) the
    owner process of a running trial can also be checked directly (see ``hpo.parallel.workers``).
    """
    return is_rdb_url(url) and not url.startswith("sqlite")


# Query-string keys whose values are credentials (password, passwd, sslpassword, pwd, a token, a secret).
CREDENTIAL_KEY = r"[^=&#;\s]*(?:pass|pwd|secret|token)[^=&#;\s]*"


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


def check_url(url: str) -> None:
    if not url:
        raise UsageError("--storage must not be empty")
    if "://" in url and not is_rdb_url(url):
        raise UsageError(
            f"unsupported storage URL {redact(url)!r}; use sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DB "
            "or the path of a journal file"
        )


def local_path(url: str) -> Path | None:
    """The file of a SQLite database or a journal, or None (a database server, an in-memory database)."""
    if url.startswith("sqlite"):
        local = url.split(":///", 1)[1] if ":///" in url else ""
        return Path(local) if local and local != ":memory:" else None
    return None if is_rdb_url(url) else Path(url)


def first_line(error: BaseException, url: str = "") -> str:
    """The first line of an error's message, every credential of ``url`` (and any URL in it) hidden."""
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

"""Browse the studies of a storage in optuna-dashboard.

    python -m hpo.dashboard [--storage URL] [--port P] [--host H] [--artifact-dir DIR]

Serves the storage written by ``hpo.run`` on http://127.0.0.1:8080/dashboard (only this machine can connect
unless ``--host`` says otherwise). Every trial's per-fold scores, timing, curves and diagnostics are its user
attributes (the dashboard cuts long values at 1024 characters: the full curves are plotted by ``hpo.report.summary``);
its mean validation score per evaluation is the trial's intermediate values, plotted by the dashboard.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from hpo.cli import command_parser, run_command
from hpo.config import DEFAULT_STORAGE
from hpo.errors import UsageError
from hpo.report.summary import missing_storage_hint
from hpo.storage import open_storage, redact

DEFAULT_HOST = "127.0.0.1"  # loopback only: a study database is not published to the network by default
DEFAULT_PORT = 8080  # optuna-dashboard's usual port


def artifact_store(artifact_dir: str | Path | None):
    """A FileSystemArtifactStore on ``artifact_dir`` (which must exist), or None without one.

    ``hpo.run`` keeps every trial detail in user attributes inside the storage, so no artifact store is needed
    for its studies; this serves files that other code attached to trials with ``optuna.artifacts.upload_artifact``.
    """
    if artifact_dir is None:
        return None
    from optuna.artifacts import FileSystemArtifactStore

    directory = Path(artifact_dir)
    if not directory.is_dir():
        raise UsageError(f"--artifact-dir {str(directory)!r} is not a directory")
    return FileSystemArtifactStore(str(directory))


class _QuietHandler(WSGIRequestHandler):
    """Request handler that does not print one line per HTTP request (the dashboard polls every few seconds)."""

    def log_message(self, format, *args):  # noqa: A002 -- signature of BaseHTTPRequestHandler
        pass


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    """One thread per request, as optuna-dashboard's own command does, so a slow plot does not block the UI."""

    daemon_threads = True  # Ctrl-C stops the server without waiting for open browser connections
    block_on_close = False  # ... which socketserver would otherwise still join in server_close


UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")  # what changes a study: asked only by the dashboard's own page


def allowed_hosts(host: str, port: int, extra: tuple[str, ...] = ()) -> set[str]:
    """The ``Host`` headers the dashboard answers: its own address and port as a browser on this machine writes
    it (``127.0.0.1:PORT``, ``localhost:PORT``, ``[::1]:PORT``), the ``--host`` it binds, the machine's names when
    it binds every interface, and any ``--allowed-host``. Any other name pointing at it is a DNS-rebinding page."""
    names = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host, *extra}
    if host in ("0.0.0.0", "::"):
        names |= {socket.gethostname(), socket.getfqdn()}
    hosts = {f"{name.lower()}:{port}" for name in names}
    if port == 80:
        hosts |= {name.lower() for name in names}
    return hosts


class HostGuard:
    """WSGI middleware: 403 for a request whose ``Host`` is not one of ``hosts`` (DNS rebinding: a foreign page
    whose name was pointed at this machine), and for a request that would change data (``UNSAFE_METHODS``)
    coming from a page of another origin (its ``Origin`` header; browsers send it with every such request)."""

    def __init__(self, app, hosts: set[str]):
        self.app, self.hosts = app, hosts

    def __call__(self, environ, start_response):
        host = environ.get("HTTP_HOST", "").lower()
        origin = environ.get("HTTP_ORIGIN")
        if host not in self.hosts:
            return self._refuse(start_response, f"Host {host or '(none)'} is not this dashboard's address")
        if environ.get("REQUEST_METHOD", "GET").upper() in UNSAFE_METHODS and origin is not None:
            scheme, _, address = origin.lower().partition("://")
            if scheme not in ("http", "https") or address.rstrip("/") not in self.hosts:
                return self._refuse(start_response, f"a change requested by a page of {origin}")
        return self.app(environ, start_response)

    @staticmethod
    def _refuse(start_response, why: str):
        body = f"403 Forbidden: {why}\n".encode()
        start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8"),
                                         ("Content-Length", str(len(body)))])
        return [body]


def make_dashboard(storage_url: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, artifact_dir=None,
                   extra_hosts: tuple[str, ...] = ()):
    """Open the storage and bind the dashboard's server (not yet serving); errors are one-line UsageErrors.

    ``port=0`` binds a free port; the bound one is ``server.server_port``. The server answers only requests to
    its own address (``allowed_hosts``, ``HostGuard``).
    """
    from optuna_dashboard import wsgi

    storage = open_storage(storage_url, create=False)
    app = wsgi(storage, artifact_store=artifact_store(artifact_dir))
    guard = HostGuard(app, set())
    try:
        server = make_server(host, port, guard, server_class=_ThreadedServer, handler_class=_QuietHandler)
        guard.hosts = allowed_hosts(host, server.server_port, extra_hosts)
        return server
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is busy; choose another with --port") from None
        if error.errno == errno.EACCES:
            raise UsageError(f"port {port} on {host} needs more privileges; choose one above 1023 with --port") from None
        raise UsageError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def is_loopback(host: str) -> bool:
    """True if only this machine can connect to ``host`` (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or an interface address: reachable from elsewhere


def exposure_warning(host: str, port: int) -> str | None:
    """The one-line warning for a dashboard that listens beyond this machine, or None on loopback."""
    if is_loopback(host):
        return None
    return (
        f"warning: --host {host} publishes the study storage to the network without authentication: anyone who "
        f"can reach port {port} can read, change and delete every study; prefer the default 127.0.0.1 and an SSH "
        f"tunnel (ssh -L {port}:127.0.0.1:{port} THIS-HOST)"
    )


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/dashboard"


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("python -m hpo.dashboard", __doc__)
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help=f"study storage URL or journal file (default {DEFAULT_STORAGE})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on; 0 picks a free one (default {DEFAULT_PORT})")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="another name a browser may use for this machine (a tunnel's or proxy's); repeatable")
    parser.add_argument("--artifact-dir", help="directory of an Optuna FileSystemArtifactStore to serve trial artifacts from (default: none)")
    args = parser.parse_args(argv)

    def body() -> None:
        if not 0 <= args.port <= 65535:
            raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
        try:
            server = make_dashboard(args.storage, args.host, args.port, args.artifact_dir, tuple(args.allowed_host))
        except UsageError as error:
            raise UsageError(f"{error}{missing_storage_hint(args.storage)}") from None
        warning = exposure_warning(args.host, server.server_port)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        print(f"optuna-dashboard of {redact(args.storage)} on {url_of(args.host, server.server_port)}", flush=True)
        print("press Ctrl-C to stop", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass  # Ctrl-C is how the dashboard is meant to stop
        finally:
            server.server_close()

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())

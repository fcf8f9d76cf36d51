"""A throwaway PostgreSQL server for tests and benchmarks: its own cluster in a temp dir, on 127.0.0.1.

    with PostgresServer.start() as server:
        server.url  # postgresql://hpo:<random password>@127.0.0.1:<port>/hpo

Uses the server binaries of the Debian ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``).
PostgreSQL refuses to run as root, so as root every server command runs as the unprivileged ``postgres``
user (created by the package) through ``runuser``, in a temp dir that user owns. The cluster listens on
127.0.0.1 only, on a free port, with fsync off (the data is thrown away), and is stopped and deleted on exit.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SERVER_USER = "postgres"  # the unprivileged system user of the Debian package, used when running as root
DATABASE = "hpo"  # database and user created for the study storage
START_TIMEOUT_SECONDS = 60  # pg_ctl -w waits at most this long for the server to accept connections


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL server's bin directory, or None if the binaries are absent."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def missing_reason() -> str | None:
    """Why a server cannot be started here (for pytest.skip), or None if it can."""
    if find_bin_dir() is None:
        return "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/pg_ctl); apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} system user to run the server as"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """A running cluster; ``url`` reaches database ``hpo`` as user ``hpo`` with a random password."""

    root: Path  # temp dir holding the cluster, its socket and its log
    port: int  # TCP port on 127.0.0.1
    password: str  # password of user hpo (random, so tests can check it is never printed)
    bin_dir: Path

    @property
    def url(self) -> str:
        return f"postgresql://{DATABASE}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def url_with_password(self, password: str) -> str:
        return f"postgresql://{DATABASE}:{password}@127.0.0.1:{self.port}/{DATABASE}"

    @classmethod
    def start(cls) -> PostgresServer:
        reason = missing_reason()
        if reason:
            raise RuntimeError(reason)
        bin_dir = find_bin_dir()
        assert bin_dir is not None
        root = Path(tempfile.mkdtemp(prefix="hpo-pg-"))  # under /tmp, reachable by the server user
        server = cls(root=root, port=free_port(), password=secrets.token_urlsafe(12), bin_dir=bin_dir)
        try:
            server._init_and_start()
        except BaseException:
            server.stop()
            raise
        return server

    def _run(self, *args: str, input: str | None = None) -> None:
        command = [str(a) for a in args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        result = subprocess.run(command, input=input, capture_output=True, text=True, cwd=self.root)
        if result.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}\n{log[-2000:]}")

    def _init_and_start(self) -> None:
        data = self.root / "data"
        if os.geteuid() == 0:
            shutil.chown(self.root, SERVER_USER, SERVER_USER)
        os.chmod(self.root, 0o700)
        # Local (socket) connections trust the admin; TCP connections need a password (scram), as in production.
        self._run(self.bin_dir / "initdb", "-D", data, "-U", "admin", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        self.resume()
        sql = f"CREATE USER {DATABASE} PASSWORD '{self.password}';\nCREATE DATABASE {DATABASE} OWNER {DATABASE};\n"
        self._run(self.bin_dir / "psql", "-h", self.root, "-p", str(self.port), "-U", "admin", "-d", "postgres",
                  "-v", "ON_ERROR_STOP=1", "-q", "-f", "-", input=sql)

    def server_pids(self) -> list[int]:
        """The postmaster and every server process it started (one per connection, background workers)."""
        postmaster = int((self.root / "data" / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        return [postmaster, *map(int, children)]

    def freeze(self) -> list[int]:
        """SIGSTOP every server process: the server keeps its sockets open and answers nothing. Returns the pids."""
        pids = self.server_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    @staticmethod
    def thaw(pids: list[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def halt(self) -> None:
        """Stop the server at once (as a crash or a power loss would), keeping its data for ``resume``."""
        self._run(self.bin_dir / "pg_ctl", "-D", self.root / "data", "-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        """Start the server on its port with its data: at first, and again after ``halt``."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -F -c max_connections=200"
        self._run(self.bin_dir / "pg_ctl", "-D", self.root / "data", "-o", options, "-l", self.root / "server.log",
                  "-w", "-t", str(START_TIMEOUT_SECONDS), "start")

    def stop(self) -> None:
        """Stop the server (immediately: the data is thrown away) and delete the cluster."""
        if (self.root / "data" / "postmaster.pid").exists():
            try:
                self._run(self.bin_dir / "pg_ctl", "-D", self.root / "data", "-m", "immediate", "-w", "stop")
            except RuntimeError:
                pass  # already gone; the directory is removed below either way
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

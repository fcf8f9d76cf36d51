"""A throwaway single-node Slurm cluster for tests: munged, slurmctld and slurmd in a temp dir, on 127.0.0.1.

    with SlurmCluster.start() as cluster:
        subprocess.run(["sbatch", ...], env=cluster.env)   # SLURM_CONF points at this cluster

Uses Debian's ``slurm-wlm`` and ``munge`` packages (22.05 here). The daemons run as root with no cgroups
(``proctrack/linuxproc``, ``task/none``), their own munge key and socket, state, spool, log and pid files in the temp
dir, and private ports; everything is stopped and deleted on exit.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
START_SECONDS = 60  # the node must be idle within this long


def missing_reason() -> str | None:
    """Why a cluster cannot be started here (for pytest.skip), or None if it can."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"Slurm or munge not installed ({', '.join(missing)} missing); apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "the test cluster runs its daemons as root (SlurmUser=root), and this is not root"
    return None


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class SlurmCluster:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    @classmethod
    def start(cls) -> SlurmCluster:
        reason = missing_reason()
        if reason:
            raise RuntimeError(reason)
        cluster = cls(Path(tempfile.mkdtemp(prefix="hpo-slurm-")))
        try:
            cluster._start()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start(self) -> None:
        root = self.root
        munge = root / "munge"
        for folder in (munge, root / "state", root / "spool", root / "log"):
            folder.mkdir()
        root.chmod(0o711)
        munge.chmod(0o711)  # munged: the socket's folder must be reachable by every user
        key = munge / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        self._run("munged", "--force", f"--socket={munge / 'munge.sock'}", f"--key-file={key}",
                  f"--log-file={munge / 'munged.log'}", f"--pid-file={munge / 'munged.pid'}",
                  f"--seed-file={munge / 'munged.seed'}")
        ctld_port, slurmd_port = free_ports(2)
        self.conf.write_text("\n".join([
            "ClusterName=hpotest",
            "SlurmctldHost=localhost(127.0.0.1)",
            "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={ctld_port}", f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={munge / 'munge.sock'}",
            f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "MpiDefault=none", "ReturnToService=2",
            "SlurmdParameters=config_overrides", "KillWait=10", "MinJobAge=600",
            f"NodeName=hponode NodeAddr=127.0.0.1 NodeHostname=localhost CPUs={os.cpu_count() or 1} State=UNKNOWN",
            "PartitionName=hpo Nodes=hponode Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))
        self._run("slurmctld", "-c")
        self._run("slurmd", "-N", "hponode")
        deadline = time.monotonic() + START_SECONDS
        while True:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
            if state.stdout.strip() == "idle":
                return
            if time.monotonic() > deadline:
                log = (root / "log" / "slurmctld.log").read_text()[-2000:]
                raise RuntimeError(f"the Slurm node did not become idle: {state.stdout}{state.stderr}\n{log}")
            time.sleep(0.5)

    def _run(self, *command: str) -> None:
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}")

    def job_states(self, *job_ids: str) -> dict[str, str]:
        """The state of every task of the jobs (``1234_0`` -> ``COMPLETED``), from ``squeue`` while queued or
        running and ``scontrol`` after (the controller keeps ended jobs for ``MinJobAge`` seconds)."""
        shown = subprocess.run(["scontrol", "show", "job", "-o"], env=self.env, capture_output=True, text=True)
        states = {}
        for line in shown.stdout.splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            job = fields.get("JobId", "")
            task = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}" if fields.get("ArrayTaskId") else job
            if not job_ids or fields.get("ArrayJobId", job) in job_ids or job in job_ids:
                states[task] = fields.get("JobState", "")
        return states

    def wait(self, *job_ids: str, timeout: float) -> dict[str, str]:
        """Until every task of the jobs has ended; their final states."""
        deadline = time.monotonic() + timeout
        ended = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}
        while True:
            states = self.job_states(*job_ids)
            if states and all(state in ended for state in states.values()):
                return states
            if time.monotonic() > deadline:
                raise AssertionError(f"Slurm jobs {job_ids} did not end in {timeout} s: {states}")
            time.sleep(1)

    def stop(self) -> None:
        """Cancel every job, stop the daemons and delete the cluster."""
        if self.conf.exists():
            subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, capture_output=True, timeout=60)
            time.sleep(2)
        for pid_file in (self.root / "slurmd.pid", self.root / "slurmctld.pid", self.root / "munge" / "munged.pid"):
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        time.sleep(1)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

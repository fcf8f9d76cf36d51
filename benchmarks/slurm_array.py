"""Trials per hour of a study run as a Slurm job array on PostgreSQL, beside the same study in one process.

    python -m benchmarks.slurm_array [--trials 30] [--tasks 1 3]

Starts a throwaway single-node Slurm cluster and PostgreSQL server (the test fixtures: tests/slurm_cluster.py,
tests/pg_server.py), then for each task count submits ``python -m hpo.slurm --array N --submit`` on a fresh
database and times it from submission until the finishing job has ended (test scores and report included), so
the rows include what a user waits for: queueing, each task's interpreter and JAX start-up, compiling, training.
The study is small (digits, bp MLPs of one hidden layer of 16 units, 2 folds, 1 epoch), so the rows show the
per-task costs a real study amortises over trials of seconds to minutes. Needs root (the cluster's daemons).
Writes results/benchmarks/slurm_array.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpo.storage import open_storage
from tests.pg_server import PostgresServer
from tests.slurm_cluster import SlurmCluster

RESULTS = Path("results/benchmarks/slurm_array.md")
GRID = """trials = {trials}
epochs = 1
folds = 2
test_seeds = 2
pruner = "none"
results_dir = "{folder}/results"
cache_dir = "{folder}/programs"
[space]
width = [16]
depth = 1
[[grid]]
datasets = ["digits"]
models = ["mlp"]
algos = ["bp"]
"""


def run_array(cluster: SlurmCluster, tasks: int, trials: int) -> dict:
    with PostgresServer.start() as database, tempfile.TemporaryDirectory() as folder:
        grid = Path(folder) / "grid.toml"
        grid.write_text(GRID.format(trials=trials, folder=folder))
        env = {**cluster.env, "PYTHONPATH": str(Path.cwd())}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "hpo.slurm", "--config", str(grid), "--array", str(tasks),
                               "--storage", database.url, "--submit", "--cpus-per-task", "1",
                               "--script-dir", f"{folder}/slurm"], env=env, capture_output=True, text=True,
                              timeout=600, cwd=folder)
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        words = next(line for line in done.stdout.splitlines() if line.startswith("submitted")).split()
        states = cluster.wait(words[3], words[8], timeout=3600)
        seconds = time.perf_counter() - start
        study = optuna.load_study(study_name="digits-mlp-bp", storage=open_storage(database.url, create=False))
        trials_done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials())
    return {"tasks": tasks, "trials": trials_done, "seconds": seconds, "per_hour": trials_done / seconds * 3600,
            "states": sorted(set(states.values()))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    load = os.getloadavg()
    with SlurmCluster.start() as cluster:
        rows = [run_array(cluster, tasks, args.trials) for tasks in args.tasks]
    lines = [
        "# A study as a Slurm job array on PostgreSQL",
        "",
        f"Command: `python -m benchmarks.slurm_array --trials {args.trials} --tasks {' '.join(map(str, args.tasks))}`",
        "",
        "Each row: `python -m hpo.slurm --array N --submit` on a fresh PostgreSQL database and a single-node Slurm "
        "cluster on this machine, timed from submission until the finishing job (test scores over 2 seeds, the "
        "report) has ended. digits, bp MLPs 64-16-10, 2 folds x 1 epoch: tiny trials, so the time is mostly each "
        "task's start-up (interpreter, JAX, the dataset, compiling) and the finishing job.",
        "",
        "| tasks | trials | seconds | trials / hour | task states |",
        "|---:|---:|---:|---:|---|",
        *(f"| {r['tasks']} | {r['trials']} | {r['seconds']:.1f} | {r['per_hour']:.0f} | {', '.join(r['states'])} |"
          for r in rows),
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; load average "
        f"before: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; Slurm "
        f"{subprocess.run(['slurmctld', '-V'], capture_output=True, text=True).stdout.strip()}.",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

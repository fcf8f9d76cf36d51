"""Trials per minute through PostgreSQL with 1, 2, 4 and 8 worker processes (a trivial objective).

    python -m benchmarks.storage_throughput [--trials 200] [--workers 1 2 4 8]

Shows what the storage and the worker loop cost per trial, without training: each worker process runs the
real loop of ``hpo.parallel.workers.run_trials`` (exact-total rule, stale-trial check, owner claim, heartbeats) on
a study whose objective is ``x ** 2``, against a throwaway PostgreSQL server started with the test
fixture code (tests/pg_server.py). Process start-up is not timed: workers open the storage, then wait at a
barrier; the clock runs from the barrier until the study holds its total. Prints a table and writes
results/benchmarks/storage_throughput.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpo.parallel.workers import run_trials
from hpo.record import read_trial
from hpo.storage import open_storage
from tests.pg_server import PostgresServer

RESULTS = Path("results/benchmarks/storage_throughput.md")


def objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -10, 10) ** 2


def _worker(url: str, study_name: str, total: int, index: int, barrier) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=optuna.samplers.RandomSampler(seed=index))
    barrier.wait()
    run_trials(study, storage, url, objective, total, out=lambda line: None, on_trial=lambda s, t: None)


def measure(url: str, workers: int, total: int) -> dict:
    name = f"throughput-{workers}"
    optuna.create_study(study_name=name, storage=open_storage(url))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers + 1)
    processes = [context.Process(target=_worker, args=(url, name, total, i, barrier)) for i in range(workers)]
    for p in processes:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    for p in processes:
        p.join()
    seconds = time.perf_counter() - start
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)
    finished = sum(t.state == TrialState.COMPLETE for t in trials)
    surplus = sum(read_trial(t).surplus is not None for t in trials)
    assert finished == total, (finished, total)
    return {"workers": workers, "trials": finished, "surplus": surplus, "seconds": seconds,
            "per_minute": 60 * finished / seconds}


def machine() -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    server = PostgresServer.__module__  # the same fixture as the tests
    pg = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; memory {memory / 2**20:.0f} GiB",
        f"- load average before the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
        "(the machine was shared with other jobs during the run: numbers are pessimistic and noisy)",
        f"- PostgreSQL: {pg or 'see /usr/lib/postgresql'} on 127.0.0.1 in a temp cluster (fsync off), "
        f"started by {server}",
        f"- Python {platform.python_version()}, optuna {version('optuna')}, SQLAlchemy {version('sqlalchemy')}, "
        f"psycopg {version('psycopg')}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="finished trials per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    described = machine()
    rows = []
    with PostgresServer.start() as server:
        for workers in args.workers:
            row = measure(server.url, workers, args.trials)
            rows.append(row)
            print(f"{row['workers']} workers: {row['trials']} trials in {row['seconds']:.1f} s = "
                  f"{row['per_minute']:.0f} trials/min ({row['surplus']} surplus)", flush=True)
    table = ["| workers | trials | seconds | trials / minute | surplus trials |", "|---:|---:|---:|---:|---:|"]
    table += [f"| {r['workers']} | {r['trials']} | {r['seconds']:.1f} | {r['per_minute']:.0f} | {r['surplus']} |"
              for r in rows]
    text = "\n".join([
        "# Storage throughput (PostgreSQL, trivial objective)",
        "",
        "Command: `python -m benchmarks.storage_throughput "
        f"--trials {args.trials} --workers {' '.join(map(str, args.workers))}`",
        "",
        "Each worker process runs the real worker loop (`hpo.parallel.workers.run_trials`: exact-total rule, stale-trial",
        "check, owner claim, heartbeat) on an objective that returns `x ** 2`, so the numbers are the cost of the",
        "storage and the loop alone. A real trial of this project trains networks for seconds to minutes, so",
        "even the slowest row here is far from being the bottleneck.",
        "",
        *table,
        "",
        "On a machine with few cores the workers and the server share them, so with a trivial objective more",
        "workers cannot add throughput (they queue for the same CPUs and the same rows); what the table shows is",
        "the storage's cost per trial, 60 / (trials per minute) seconds, next to trials that take seconds to minutes.",
        "Surplus trials are the ones that lost the race for the last slots (ended at once, not counted).",
        "",
        "Machine:",
        "",
        *described,
        "",
    ])
    print("\n".join(table))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(RESULTS)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

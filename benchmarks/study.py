"""Whole-study timings, compile share, peak memory, and how trial cost scales with data and width.

    python -m benchmarks.study            # full run (three 50-trial studies; about 15-25 minutes on 2 cores)
    python -m benchmarks.study --trials 10   # smaller

Runs ``python -m hpo.run --algo fa --trials N`` on mnist-5k as a subprocess (a fresh process, as a user runs it):

1. default (median) pruner with a cold (empty) persistent compilation cache;
2. the same study again under a new name with the cache warm: the same seed makes TPE propose the same
   trials, so this measures what the persistent cache saves;
3. ``--pruner none`` with a cold cache.

For each: wall time, trials per hour, total compile time (sum of the per-trial ``compile_seconds`` user
attributes) as a share of the wall time, and the peak resident memory of the process. Then trial time (compile
excluded, median of repeats) against the number of training examples (1k, 2k, 4k) and the width.
Appends its tables to ``results/benchmarks.md`` below the objective benchmark's table.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax.numpy as jnp
import optuna

from benchmarks.objective import machine
from hpo.data import load_dataset, make_folds
from models.rule_training import TrainConfig
from models.train import FoldData, cross_validate

MARKER = "<!-- study benchmarks below -->"


def run_study(workdir: Path, name: str, trials: int, pruner: str, cache: Path) -> dict:
    storage = workdir / "bench.journal"
    command = [sys.executable, "-m", "hpo.run", "--algo", "fa", "--trials", str(trials), "--pruner", pruner,
               "--storage", str(storage), "--study-name", name, "--results-dir", str(workdir / "results"),
               "--cache-dir", str(cache)]
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr)
    peak_kb = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    study = optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage))))
    trials_ = study.get_trials(deepcopy=False)
    compile_total = sum(t.user_attrs.get("compile_seconds", 0.0) for t in trials_)
    states = [t.state.name for t in trials_]
    return {
        "name": name, "pruner": pruner, "wall": wall, "trials": len(trials_),
        "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
        "compile": compile_total, "compile_share": compile_total / wall,
        "trials_per_hour": len(trials_) / wall * 3600, "peak_mb": peak_kb / 1024,
        "best": study.best_value,
    }


def scaling(repeats: int) -> list[dict]:
    dataset = load_dataset("mnist-5k")
    rows = []
    for n in (1000, 2000, 4000):
        subset = type(dataset)(**{**dataset.__dict__, "x_train": dataset.x_train[:n], "y_train": dataset.y_train[:n]})
        folds = make_folds(subset, 3, seed=0)
        data = FoldData(jnp.asarray(subset.x_train), jnp.asarray(subset.y_train), folds.train_idx,
                        jnp.asarray(folds.val_idx), jnp.asarray(folds.val_mask))
        for width in (64, 256, 1024):
            config = TrainConfig(rule="fa", hidden=(width, width), learning_rate=1e-3, batch_size=64, epochs=10)
            cross_validate(config, data, 10, seed=0)  # compile
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                cross_validate(config, data, 10, seed=0)
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            examples = folds.train_idx.shape[1] * 3 * 10
            rows.append({"n": n, "width": width, "seconds": seconds, "us_per_example": seconds / examples * 1e6})
            print(f"n={n} width={width}: {seconds:.3f}s, {rows[-1]['us_per_example']:.1f} us per training example")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="results/benchmarks.md")
    args = parser.parse_args(argv)

    studies = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cold, cold_none = work / "cache-a", work / "cache-b"
        for name, pruner, cache in [("median-cold", "median", cold), ("median-warm", "median", cold),
                                    ("none-cold", "none", cold_none)]:
            row = run_study(work, name, args.trials, pruner, cache)
            studies.append(row)
            print(f"{name}: {row['wall']:.1f}s wall, {row['trials_per_hour']:.0f} trials/h, compile "
                  f"{row['compile']:.1f}s ({row['compile_share']:.1%}), peak {row['peak_mb']:.0f} MB")
    scale = scaling(args.repeats)
    write(studies, scale, args.trials, Path(args.output))
    return 0


def write(studies, scale, trials, path: Path) -> None:
    lines = [
        MARKER,
        "",
        f"## Whole study: `python -m hpo.run --algo fa --trials {trials}` on mnist-5k",
        "",
        f"Machine: {machine()}. Each row is a fresh `python -m hpo.run` process; `warm` reruns the same seeded "
        "study (TPE proposes the same trials) with the persistent compilation cache filled by the `cold` run. "
        "Compile is the sum of the per-trial `compile_seconds` user attributes (tracing + XLA compilation, "
        "or loading from the persistent cache). Peak memory is the process's maximum resident set size.",
        "",
        "| run | pruner | wall s | trials/h | complete | pruned | compile s | compile share | peak MB | best CV acc |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in studies:
        lines.append(f"| {r['name']} | {r['pruner']} | {r['wall']:.1f} | {r['trials_per_hour']:.0f} | {r['complete']} | "
                     f"{r['pruned']} | {r['compile']:.1f} | {r['compile_share']:.1%} | {r['peak_mb']:.0f} | "
                     f"{r['best']:.4f} |")
    lines += [
        "",
        "## Scaling with work",
        "",
        "FA MLP, 2 hidden layers, batch 64, Adam, 3 folds, 10 epochs, first n examples of the mnist-5k training "
        "split; median seconds of a whole cross-validation (compile excluded) and microseconds per training "
        "example processed (n_train per fold x folds x epochs).",
        "",
        "| n | width | seconds | us / example |",
        "|---:|---:|---:|---:|",
    ]
    for r in scale:
        lines.append(f"| {r['n']} | {r['width']} | {r['seconds']:.3f} | {r['us_per_example']:.2f} |")
    existing = path.read_text() if path.exists() else ""
    head = existing[: existing.index(MARKER)] if MARKER in existing else existing
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + "\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())

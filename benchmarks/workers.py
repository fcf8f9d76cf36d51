"""Local workers on one machine: a fixed-cost study run by one worker, by ``--workers N`` (each on cores of its own)
and by N unpinned processes on the same storage (what ``--workers N`` did before workers had cores of their own).

    python -m benchmarks.workers                      # full Fashion-MNIST, 8 trials x 2 epochs, 3 rounds (~7 min)
    python -m benchmarks.workers --dataset mnist-5k --trials 8 --rounds 1

Every ``[space]`` parameter is fixed (FA 784-256-256-10, tanh, Adam 1e-3, batch 64, normal feedback of scale 1), so
every trial costs the same and only the layout differs; pruner none, ``--no-finish`` (no test scores, no report).
A program store filled once before the rounds keeps compiling out of the comparison (a study's later trials load
their programs too). Each row is a fresh journal; rows run in turn within a round; medians over rounds. Wall is the
command's whole time, start-up included; trial is the median of the trials' own ``wall_seconds``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from hpo.parallel.devices import usable_cores
from hpo.record import read_trial
from hpo.storage import open_storage

SPACE = """[space]
depth = 2
width = 256
activation = "tanh"
optimizer = "adam"
lr_adam = 0.001
batch_size = 64
feedback_distribution = "normal"
feedback_scale = 1.0
"""


def command(args: argparse.Namespace, storage: Path, space: Path, cache: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "hpo.run", "--dataset", args.dataset, "--algo", "fa", "--trials", str(args.trials),
            "--epochs", str(args.epochs), "--pruner", "none", "--space", str(space), "--storage", str(storage),
            "--cache-dir", str(cache), "--workers", str(workers), "--no-finish", "--test-seeds", "1"]


def run_layout(layout: str, args: argparse.Namespace, folder: Path, space: Path, cache: Path) -> tuple[float, float]:
    """Run the study in ``layout``; (wall seconds, median trial seconds)."""
    storage = folder / f"{layout}-{time.monotonic_ns()}.journal"
    env = {**os.environ, "HPO_WORKERS": "1"}
    started = time.perf_counter()
    if layout == "1 worker":
        processes = [subprocess.Popen(command(args, storage, space, cache, 1), env=env, stdout=subprocess.DEVNULL)]
    elif layout == "--workers N (own cores)":
        processes = [subprocess.Popen(command(args, storage, space, cache, args.workers), env=env,
                                      stdout=subprocess.DEVNULL)]
    else:  # N independent processes on one storage, every one on every core
        processes = [subprocess.Popen(command(args, storage, space, cache, 1), env=env, stdout=subprocess.DEVNULL)
                     for _ in range(args.workers)]
    codes = [p.wait() for p in processes]
    wall = time.perf_counter() - started
    if any(codes):
        raise SystemExit(f"{layout}: exit codes {codes}")
    study = optuna.load_study(study_name=f"{args.dataset}-mlp-fa", storage=open_storage(str(storage), create=False))
    trials = [read_trial(t).wall_seconds for t in study.get_trials(deepcopy=False)
              if t.state == optuna.trial.TrialState.COMPLETE]
    return wall, statistics.median(trials)


LAYOUTS = ("1 worker", "--workers N (own cores)", "N processes, unpinned")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=usable_cores())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default="results/benchmarks/workers.md")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        space = folder / "space.toml"
        space.write_text(SPACE)
        cache = folder / "cache"
        warm = [*command(args, folder / "warm.journal", space, cache, 1)]
        warm[warm.index("--trials") + 1] = "1"
        subprocess.run(warm, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HPO_WORKERS": "1"})
        results: dict[str, list[tuple[float, float]]] = {layout: [] for layout in LAYOUTS}
        for round_ in range(args.rounds):
            for layout in LAYOUTS:
                results[layout].append(run_layout(layout, args, folder, space, cache))
                wall, trial = results[layout][-1]
                print(f"round {round_ + 1}: {layout}: {wall:.1f} s, trials {trial:.2f} s", flush=True)
    single = statistics.median(w for w, _ in results["1 worker"])
    lines = [
        f"# Local workers: {args.trials} fixed-cost trials of {args.epochs} epochs on {args.dataset}", "",
        f"`python -m benchmarks.workers --dataset {args.dataset} --trials {args.trials} --epochs {args.epochs} "
        f"--rounds {args.rounds}`; {usable_cores()} cores ({platform.processor() or platform.machine()}), "
        f"N = {args.workers}; medians of {args.rounds} rounds.", "",
        "| layout | study wall | trial (median) | throughput vs 1 worker |", "|---|---:|---:|---:|",
    ]
    for layout in LAYOUTS:
        wall = statistics.median(w for w, _ in results[layout])
        trial = statistics.median(t for _, t in results[layout])
        name = layout.replace("N", str(args.workers))
        lines.append(f"| {name} | {wall:.1f} s | {trial:.2f} s | {single / wall:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

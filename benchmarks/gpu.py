"""What a GPU (or whatever JAX runs on) does with this project's work: the numbers the GPU defaults are chosen from.

    python -m benchmarks.gpu [--quick] [--output results/benchmarks/gpu.md]      # bash benchmarks/gpu.sh on a GPU

Three parts, each timed on the device JAX picks, every variant in turn, medians of repeats, compilation apart:

1. one cross-validation of FA MLPs (2 hidden layers of 64, 256, 1024; batch 64, Adam, 3 folds x 10 epochs on
   mnist-5k) with the folds vmapped and one after another (``--fold-strategy``);
2. the same for the issue's 2-D CNN (conv 16 k5 + pool, conv 32 k5 + pool, dense 128) and bp, fa;
3. a short study as a user runs it (``python -m hpo.run --algo fa --trials 20 --epochs 5`` on mnist-5k, an empty
   program store each) with ``--trial-batch 1`` and ``8``, ``--compile-ahead`` on and off: wall time, trials per
   hour and the shares of the trials' time spent training and compiling, from their stored records.

``--quick`` runs a tiny version of every part (one width, one repeat, 1 epoch, 3 trials), to check the script on a
CPU (``bash benchmarks/gpu.sh --no-install --quick``, a slow test). Writes a Markdown table with the machine's description and the decisions it supports.
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

import jax
import jax.numpy as jnp
import numpy as np
import optuna

from benchmarks.cnn_reference import standard_cnn
from hpo.data import load_dataset, make_folds
from hpo.record import read_trial
from hpo.storage import open_storage
from models.compile import Compiler
from models.rule_training import TrainConfig
from models.train import FoldData, Plan, cross_validate


def fold_data(name: str) -> FoldData:
    data = load_dataset(name)
    folds = make_folds(data, 3, 0)
    return FoldData(jnp.asarray(data.x_train), jnp.asarray(data.y_train), folds.train_idx,
                    jnp.asarray(folds.val_idx), jnp.asarray(folds.val_mask))


def time_cv(config, data: FoldData, strategy: str, repeats: int) -> tuple[float, float]:
    """(median seconds of a cross-validation after the first, the first's compile seconds)."""
    compiler = Compiler()
    first = cross_validate(config, data, 10, seed=0, plan=Plan(strategy), compiler=compiler)
    seconds = []
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        cross_validate(config, data, 10, seed=seed, plan=Plan(strategy), compiler=compiler)
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds)), first.compile_seconds


def objective_rows(quick: bool, repeats: int) -> list[dict]:
    data = fold_data("mnist-5k")
    epochs = 1 if quick else 10
    rows = []
    for width in ((64,) if quick else (64, 256, 1024)):
        config = TrainConfig(rule="fa", hidden=(width, width), learning_rate=1e-3, batch_size=64, epochs=epochs)
        for strategy in ("vmap", "sequential"):
            seconds, compile_seconds = time_cv(config, data, strategy, repeats)
            rows.append({"network": f"MLP 784-{width}-{width}-10, fa", "strategy": strategy, "seconds": seconds,
                         "compile": compile_seconds, "epochs": epochs})
            print(rows[-1], flush=True)
    for rule in (("fa",) if quick else ("bp", "fa")):
        config = standard_cnn(rule, epochs=1 if quick else 3)
        for strategy in ("vmap", "sequential"):
            seconds, compile_seconds = time_cv(config, data, strategy, repeats)
            rows.append({"network": f"2-D CNN, {rule}", "strategy": strategy, "seconds": seconds,
                         "compile": compile_seconds, "epochs": config.epochs})
            print(rows[-1], flush=True)
    return rows


def study_row(trials: int, epochs: int, batch: int, ahead: bool) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        storage = f"{folder}/s.journal"
        command = [sys.executable, "-m", "hpo.run", "--algo", "fa", "--trials", str(trials), "--epochs", str(epochs),
                   "--storage", storage, "--results-dir", f"{folder}/r", "--cache-dir", f"{folder}/cache",
                   "--trial-batch", str(batch), "--compile-ahead" if ahead else "--no-compile-ahead",
                   "--test-seeds", "1"]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        study = optuna.load_study(study_name="mnist-5k-mlp-fa", storage=open_storage(storage, create=False))
        records = [read_trial(t) for t in study.get_trials()]
    train = sum(r.train_seconds or 0.0 for r in records)
    compiled = sum(r.compile_seconds or 0.0 for r in records)
    return {"batch": batch, "ahead": ahead, "trials": trials, "wall": wall, "per_hour": trials / wall * 3600,
            "train": train / wall, "compile": compiled / wall}


def write(path: Path, objective: list[dict], studies: list[dict], quick: bool) -> str:
    devices = ", ".join(f"{d.platform}:{d.device_kind}" for d in jax.devices())
    lines = [
        "# On the device JAX picks: fold strategies, trial batches, compiling ahead",
        "",
        f"Command: `python -m benchmarks.gpu{' --quick' if quick else ''}` (on a lent GPU: `bash benchmarks/gpu.sh`)."
        + (" **Quick run: a check of the script, not a measurement.**" if quick else ""),
        "",
        f"Devices: {devices}; JAX {jax.__version__} on {jax.default_backend()}; host "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores.",
        "",
        "## One cross-validation (3 folds, mnist-5k, batch 64, Adam; compilation excluded, median of repeats)",
        "",
        "| network | folds | epochs | seconds | compile s |",
        "|---|---|---:|---:|---:|",
        *(f"| {r['network']} | {r['strategy']} | {r['epochs']} | {r['seconds']:.3f} | {r['compile']:.1f} |"
          for r in objective),
        "",
    ]
    for network in dict.fromkeys(r["network"] for r in objective):
        pair = {r["strategy"]: r["seconds"] for r in objective if r["network"] == network}
        faster = min(pair, key=pair.get)
        lines.append(f"- {network}: {faster} folds {max(pair.values()) / min(pair.values()):.2f}x faster")
    lines += [
        "",
        "## A study as a user runs it (`python -m hpo.run --algo fa`, mnist-5k, empty program store each)",
        "",
        "| --trial-batch | --compile-ahead | trials | wall s | trials / hour | training | compiling |",
        "|---:|---|---:|---:|---:|---:|---:|",
        *(f"| {r['batch']} | {'on' if r['ahead'] else 'off'} | {r['trials']} | {r['wall']:.1f} | {r['per_hour']:.0f} | "
          f"{r['train']:.0%} | {r['compile']:.0%} |" for r in studies),
        "",
    ]
    fastest = max(studies, key=lambda r: r["per_hour"])
    lines += [
        f"Fastest study here: `--trial-batch {fastest['batch']}` with compiling ahead "
        f"{'on' if fastest['ahead'] else 'off'} ({fastest['per_hour']:.0f} trials / hour).",
        "",
    ]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny version of every part, to check the script")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--output", default="results/benchmarks/gpu.md")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    repeats = 1 if args.quick else args.repeats
    objective = objective_rows(args.quick, repeats)
    trials, epochs = (3, 1) if args.quick else (args.trials, 5)
    studies = [study_row(trials, epochs, batch, ahead) for batch in (1, 8) for ahead in (False, True)]
    print(write(Path(args.output), objective, studies, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Speed at full scale: what a grid on the 60000 Fashion-MNIST images cost, and one trial against the seed's loop.

    python -m benchmarks.scale                                   # the grid's figures, from its stored trials
    python -m benchmarks.scale --trial                           # and one full-size MLP trial vs PyTorch (~10 min)
    python -m benchmarks.scale --storage studies/fashion-mnist-cpu.journal --output results/benchmarks/scale-cnn.md

Grid part, from the trials' own records (``hpo.record``), per study: trials, the study's span (first trial's start to
last trial's end, test-seed retraining excluded), the median trial, the shares of the trials' time spent training and
compiling, the worker's peak memory (``peak_memory_mb``; for runs stored before it was recorded, the maximum resident
size of a ``/usr/bin/time -v`` log given with ``--time-log``), seconds per trained epoch and, from them, an estimate of
a study at ``--budget`` trials x epochs (what a 50 x 10 study of the same rule and model would take on this machine).

Trial part (``--trial``): one cross-validation as the study's defaults run it -- FA MLP 784-256-256-10, batch 64, Adam
1e-3, diagnostics on, ``auto`` folds, 3 folds x 10 epochs on the 60000 training images -- and the same network trained
the second seed's way (PyTorch, Python loops over folds and mini-batches, 2 threads), timed in turn in one process,
medians of ``--repeats``, compilation apart; each as a fraction of this machine's float32 matmul peak.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

import optuna

from hpo.record import read_study, read_trial
from hpo.storage import open_storage

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def epochs_trained(record) -> int:
    curves = record.curves or {}
    return int(max(curves.get("epoch") or [0]))


def study_row(study: optuna.Study, budget: tuple[int, int]) -> dict:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
    records = [read_trial(t) for t in trials]
    timed = [r for r in records if r.wall_seconds]
    wall = sum(r.wall_seconds for r in timed)
    epochs = sum(epochs_trained(r) for r in timed)
    settings = read_study(study)
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    peaks = [r.peak_memory_mb for r in records if r.peak_memory_mb]
    per_epoch = wall / epochs if epochs else float("nan")
    return {
        "study": study.study_name, "complete": sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials), "epochs": settings.epochs,
        "span_s": (end - start).total_seconds(), "trial_wall_s": wall,
        "median_trial_s": statistics.median(r.wall_seconds for r in timed) if timed else float("nan"),
        "train": sum(r.train_seconds or 0.0 for r in timed) / wall if wall else float("nan"),
        "compile": sum(r.compile_seconds or 0.0 for r in timed) / wall if wall else float("nan"),
        "peak_mb": max(peaks) if peaks else None, "per_epoch_s": per_epoch,
        "estimate_h": per_epoch * budget[0] * budget[1] / 3600, "start": start, "end": end,
    }


def grid_rows(storage_path: str, budget: tuple[int, int]) -> list[dict]:
    storage = open_storage(storage_path, create=False)
    rows = []
    for summary in sorted(optuna.get_all_study_summaries(storage), key=lambda s: s.datetime_start or 0):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        if any(t.state in FINISHED for t in study.get_trials(deepcopy=False)):
            rows.append(study_row(study, budget))
    return rows


def time_log_peak_mb(path: Path) -> float:
    """The maximum resident set size a GNU ``/usr/bin/time -v`` log reports, in MB."""
    found = re.findall(r"Maximum resident set size \(kbytes\): (\d+)", path.read_text(errors="replace"))
    if not found:
        raise SystemExit(f"{path}: no 'Maximum resident set size' line (a /usr/bin/time -v log is expected)")
    return max(int(k) for k in found) / 1024


def grid_table(rows: list[dict], storage: str, budget: tuple[int, int], log_peak: float | None, log: str | None) -> str:
    trials, epochs = budget
    lines = [
        f"## The grid stored in `{storage}`, from its trials' records",
        "",
        f"| study | complete | pruned | epochs | span | median trial | training | compiling | peak memory | "
        f"s per trained epoch | {trials} x {epochs} study |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = f"{r['peak_mb'] / 1024:.2f} GB" if r["peak_mb"] else "-"
        lines.append(
            f"| {r['study']} | {r['complete']} | {r['pruned']} | {r['epochs']} | {r['span_s'] / 60:.0f} min | "
            f"{r['median_trial_s']:.1f} s | {r['train']:.1%} | {r['compile']:.1%} | {peak} | "
            f"{r['per_epoch_s']:.1f} | {r['estimate_h']:.1f} h |"
        )
    wall = sum(r["trial_wall_s"] for r in rows)
    train = sum(r["train"] * r["trial_wall_s"] for r in rows) / wall
    compiled = sum(r["compile"] * r["trial_wall_s"] for r in rows) / wall
    span = (max(r["end"] for r in rows) - min(r["start"] for r in rows)).total_seconds()
    peaks = [r["peak_mb"] for r in rows if r["peak_mb"]] + ([log_peak] if log_peak else [])
    lines += [
        "",
        f"- Whole grid: {len(rows)} studies, {sum(r['complete'] + r['pruned'] for r in rows)} trials, "
        f"{span / 3600:.2f} h from the first trial's start to the last trial's end (test-seed retraining and reports "
        f"between studies included), {wall / 3600:.2f} h inside trials.",
        f"- Over all trials: {train:.1%} of their wall time training, {compiled:.1%} compiling.",
    ]
    if peaks:
        source = f"; the study process's maximum resident size in `{log}` (/usr/bin/time -v)" if log_peak else ""
        lines.append(f"- Peak memory: {max(peaks) / 1024:.2f} GB (largest of the trials' `peak_memory_mb`{source}).")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# One full-size trial against the seed's loop


def trial_table(repeats: int) -> str:
    import jax.numpy as jnp

    from benchmarks.objective import BATCH, FOLDS, flops_per_run, machine, matmul_peak, round_robin, torch_reference
    from hpo.data import load_dataset, make_folds
    from models.compile import Compiler
    from models.rule_training import TrainConfig
    from models.train import FoldData, Plan, cross_validate

    width, epochs = 256, 10
    dataset = load_dataset("fashion-mnist")
    folds = make_folds(dataset, FOLDS, seed=0)
    x = dataset.x_train.reshape(len(dataset.x_train), -1)
    data = FoldData(jnp.asarray(x), jnp.asarray(dataset.y_train), folds.train_idx, jnp.asarray(folds.val_idx),
                    jnp.asarray(folds.val_mask))
    config = TrainConfig(rule="fa", hidden=(width, width), learning_rate=1e-3, batch_size=BATCH, epochs=epochs)
    compiler = Compiler()

    def ours():
        return cross_validate(config, data, 10, seed=0, plan=Plan("auto", diagnostics=True), compiler=compiler)

    print("compiling ours ...", flush=True)
    first = ours()
    runs = {"ours (study defaults)": ours, "PyTorch loop, 2 threads": torch_reference(dataset, folds, width, epochs)}
    print(f"timing each of {len(runs)} in turn, {repeats} times ...", flush=True)
    seconds = round_robin(runs, repeats)
    peak = matmul_peak()
    n_train, n_val = folds.train_idx.shape[1], int(folds.val_mask.sum(1).mean())
    flops = flops_per_run((width, width), n_train, n_val, epochs, FOLDS)
    torch_s = seconds["PyTorch loop, 2 threads"]
    lines = [
        "## One MLP trial on the 60000 images against the seed's loop (`python -m benchmarks.scale --trial`)",
        "",
        f"FA MLP 784-{width}-{width}-10, batch {BATCH}, Adam 1e-3, {FOLDS} folds x {epochs} epochs on Fashion-MNIST's "
        f"training split ({n_train} training, about {n_val} validation images per fold); ours with the study's "
        f"defaults (diagnostics on, `auto` folds: chose `{first.fold_strategy}`; compiling {first.compile_seconds:.1f} "
        f"s apart), timed in turn with the PyTorch loop, medians of {repeats}. Machine: {machine()}; float32 matmul "
        f"peak {peak:.0f} GFLOP/s (2048 x 2048, in JAX).",
        "",
        "| implementation | seconds | vs PyTorch | GFLOP/s | of matmul peak |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in seconds.items():
        lines.append(f"| {name} | {s:.1f} | {torch_s / s:.2f}x | {flops / s / 1e9:.1f} | {flops / s / 1e9 / peak:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storage", default="studies/fashion-mnist.journal")
    parser.add_argument("--budget", default="50x10", help="trials x epochs of the estimated study (default 50x10)")
    parser.add_argument("--time-log", help="a /usr/bin/time -v log of the grid's process: its peak memory")
    parser.add_argument("--trial", action="store_true", help="also time one full-size trial against PyTorch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="results/benchmarks/scale.md")
    args = parser.parse_args(argv)
    match = re.fullmatch(r"(\d+)x(\d+)", args.budget)
    if not match:
        raise SystemExit(f"--budget must be TRIALSxEPOCHS such as 50x10, got {args.budget!r}")
    budget = (int(match[1]), int(match[2]))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    log_peak = time_log_peak_mb(Path(args.time_log)) if args.time_log else None
    parts = ["# Speed at full scale", "", grid_table(grid_rows(args.storage, budget), args.storage, budget, log_peak,
                                                    args.time_log)]
    if args.trial:
        parts.append(trial_table(args.repeats))
    text = "\n".join(parts)
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

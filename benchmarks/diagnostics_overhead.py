"""What learning diagnostics cost: trial time with them off and on, at 1 and 4 evaluation points per epoch.

    python -m benchmarks.diagnostics_overhead              # 3 repeats, 10 epochs (a few minutes on 2 cores)
    python -m benchmarks.diagnostics_overhead --repeats 5

One trial = ``models.train.cross_validate`` of an FA MLP (2 hidden layers of width 256, batch 64, Adam), 3 folds,
10 epochs on mnist-5k, as in a study. Compiled programs are reused across a study's trials, so the trial time
is measured with them already compiled (median over repeats, settings interleaved so that a change of machine
load hits all alike); the one-off compile time of each setting is reported beside it. Writes the table to
``results/diagnostics_overhead.md`` and prints it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from hpo.data import load_dataset, make_folds
from models.train import FoldData, TrainConfig, cross_validate

SETTINGS = (  # (label, evals_per_epoch, diagnostics)
    ("off, 1 eval/epoch (plain program)", 1, False),
    ("on, 1 eval/epoch (default)", 1, True),
    ("off, 4 evals/epoch (curves only)", 4, False),
    ("on, 4 evals/epoch", 4, True),
)


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )
    return f"{cpu}, {os.cpu_count()} cores visible, JAX {jax.__version__} on {jax.default_backend()}"


def run(repeats: int, epochs: int, note: str, out_path: Path) -> str:
    dataset = load_dataset("mnist-5k")
    folds = make_folds(dataset, 3, 0)
    data = FoldData(jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train), folds.train_idx,
                    jnp.asarray(folds.val_idx), jnp.asarray(folds.val_mask))
    config = TrainConfig(rule="fa", hidden=(256, 256), learning_rate=1e-3, batch_size=64, epochs=epochs)

    def trial(evals: int, diagnostics: bool):
        start = time.perf_counter()
        result = cross_validate(config, data, dataset.out_features, seed=0, evals_per_epoch=evals,
                                diagnostics=diagnostics)
        return time.perf_counter() - start, result

    compile_seconds, times = {}, {label: [] for label, *_ in SETTINGS}
    for label, evals, diagnostics in SETTINGS:  # first call compiles; not counted in trial time
        compile_seconds[label] = trial(evals, diagnostics)[1].compile_seconds
    for _ in range(repeats):
        for label, evals, diagnostics in SETTINGS:
            times[label].append(trial(evals, diagnostics)[0])

    base = statistics.median(times[SETTINGS[0][0]])
    lines = [
        "# Cost of the learning diagnostics",
        "",
        f"FA MLP 784-256-256-10, batch 64, Adam, 3 folds x {epochs} epochs on mnist-5k; trial time = one "
        f"`cross_validate` with compiled programs reused (median of {repeats}, settings interleaved), compile "
        "time = its one-off first call.",
        "",
        f"Machine: {machine()}. {note}",
        "",
        "Command: `python -m benchmarks.diagnostics_overhead" + (f" --repeats {repeats}" if repeats != 3 else "")
        + (f" --epochs {epochs}" if epochs != 10 else "") + "`",
        "",
        "| diagnostics | trial seconds (median) | min - max | vs plain | compile seconds |",
        "|---|---|---|---|---|",
    ]
    for label, *_ in SETTINGS:
        t = times[label]
        median = statistics.median(t)
        lines.append(
            f"| {label} | {median:.2f} | {min(t):.2f} - {max(t):.2f} | {100 * (median / base - 1):+.1f}% "
            f"| {compile_seconds[label]:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(out_path)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.diagnostics_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed trials per setting (default 3)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per fold (default 10)")
    parser.add_argument("--note", default="", help="a remark about the run written under the machine line")
    parser.add_argument("--out", default="results/diagnostics_overhead.md", help="where to write the table")
    args = parser.parse_args(argv)
    print(run(args.repeats, args.epochs, args.note, Path(args.out)))


if __name__ == "__main__":
    main()

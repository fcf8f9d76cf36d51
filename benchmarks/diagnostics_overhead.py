"""What learning diagnostics cost: trial time with them off and on, at 1 and 4 evaluation points per epoch.

    python -m benchmarks.diagnostics_overhead              # 3 repeats, 10 epochs (a few minutes on 2 cores)
    python -m benchmarks.diagnostics_overhead --repeats 5

One trial = ``models.train.cross_validate`` of an FA MLP (2 hidden layers of width 256, batch 64, Adam), 3 folds,
10 epochs on mnist-5k, as in a study. Compiled programs are reused across a study's trials, so the trial time
is measured with them already compiled (median over repeats, settings interleaved so that a change of machine
load hits all alike); the one-off compile time of each setting is reported beside it. On a shared machine wall
times are noisy, so two steadier measures are added: the process's CPU seconds per trial, and the fastest of many
calls of one compiled epoch program (3 folds, one epoch) alone. Writes the table to
``results/benchmarks/diagnostics_overhead.md`` and prints it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hpo.data import load_dataset, make_folds
from models.rule_training import TrainConfig
from models.train import FoldData, Plan, RunState, batch_orders, cross_validate, run_epoch, stack

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


def epoch_seconds(config: TrainConfig, data: FoldData, calls: int) -> dict[str, float]:
    """Fastest of ``calls`` runs of each setting's compiled epoch program (interleaved), from the same state."""
    family = config.family
    spec = family.program_spec(config, data.x[:1], 10)
    host = stack([family.init(config, spec, data.x[:1], np.random.default_rng(i)) for i in range(3)])
    hyper = stack([family.hyperparameters(config)] * 3)  # one value per run
    batches = batch_orders([np.random.default_rng(0)] * len(data.train_idx), np.asarray(data.train_idx), config.batch_size)
    device_data = (data.x, data.y, data.val_idx, data.val_mask)
    state = RunState(jax.device_put(host), None)
    programs = {}
    for label, evals, diagnostics in SETTINGS:
        epoch = partial(run_epoch, family, spec, Plan("sequential", evals, diagnostics))
        programs[label] = (jax.jit(epoch).lower(state, batches, *device_data, hyper).compile(), state)
    best = dict.fromkeys(programs, float("inf"))
    for _ in range(calls):
        for label, (epoch, state) in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(epoch(state, batches, *device_data, hyper))
            best[label] = min(best[label], time.perf_counter() - start)
    return best


def run(repeats: int, epochs: int, note: str, out_path: Path) -> str:
    dataset = load_dataset("mnist-5k")
    folds = make_folds(dataset, 3, 0)
    data = FoldData(jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train), folds.train_idx,
                    jnp.asarray(folds.val_idx), jnp.asarray(folds.val_mask))
    config = TrainConfig(rule="fa", hidden=(256, 256), learning_rate=1e-3, batch_size=64, epochs=epochs)

    def trial(evals: int, diagnostics: bool):
        start, cpu = time.perf_counter(), time.process_time()
        result = cross_validate(config, data, dataset.out_features, seed=0, plan=Plan("sequential", evals_per_epoch=evals, diagnostics=diagnostics))
        return time.perf_counter() - start, time.process_time() - cpu, result

    compile_seconds = {}
    times = {label: [] for label, *_ in SETTINGS}
    cpu_times = {label: [] for label, *_ in SETTINGS}
    for label, evals, diagnostics in SETTINGS:  # first call compiles; not counted in trial time
        compile_seconds[label] = trial(evals, diagnostics)[2].compile_seconds
    for _ in range(repeats):
        for label, evals, diagnostics in SETTINGS:
            wall, cpu, _ = trial(evals, diagnostics)
            times[label].append(wall)
            cpu_times[label].append(cpu)

    epoch_best = epoch_seconds(config, data, calls=5 * repeats)
    epoch_base = epoch_best[SETTINGS[0][0]]
    base = statistics.median(times[SETTINGS[0][0]])
    cpu_base = statistics.median(cpu_times[SETTINGS[0][0]])
    lines = [
        "# Cost of the learning diagnostics",
        "",
        f"FA MLP 784-256-256-10, batch 64, Adam, 3 folds x {epochs} epochs on mnist-5k; trial time = one "
        f"`cross_validate` with compiled programs reused (median of {repeats}, settings interleaved), compile "
        "time = its one-off first call. CPU seconds (all threads of the process) are less sensitive than wall "
        "time to other processes sharing the cores.",
        "",
        f"Machine: {machine()}. {note}",
        "",
        "Command: `python -m benchmarks.diagnostics_overhead" + (f" --repeats {repeats}" if repeats != 3 else "")
        + (f" --epochs {epochs}" if epochs != 10 else "") + "`",
        "",
        "| diagnostics | trial seconds (median) | min - max | vs plain | CPU seconds (median) | vs plain "
        "| epoch program seconds (fastest) | vs plain | compile seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, *_ in SETTINGS:
        t = times[label]
        median, cpu = statistics.median(t), statistics.median(cpu_times[label])
        lines.append(
            f"| {label} | {median:.2f} | {min(t):.2f} - {max(t):.2f} | {100 * (median / base - 1):+.1f}% "
            f"| {cpu:.2f} | {100 * (cpu / cpu_base - 1):+.1f}% | {epoch_best[label]:.3f} "
            f"| {100 * (epoch_best[label] / epoch_base - 1):+.1f}% | {compile_seconds[label]:.1f} |"
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
    parser.add_argument("--out", default="results/benchmarks/diagnostics_overhead.md", help="where to write the table")
    args = parser.parse_args(argv)
    print(run(args.repeats, args.epochs, args.note, Path(args.out)))


if __name__ == "__main__":
    main()

"""Training speed of segregated-dendrites learning: compiled JAX (online and mini-batched) against the direct
NumPy per-example, per-time-step implementation (benchmarks/sd_reference.py, the way the seed ran it).

    python -m benchmarks.sd_speed [--repeats 3] [--out results/benchmarks/sd_speed.md]

Network 784-500-10 on mnist-5k inputs, the paper's phases (50 ms forward + 50 ms target, dt = 1 ms).
Throughput is training examples per second (forward phase, target phase and weight update), compile time
excluded, median over repeats. Two settings: the paper's (spiking inputs, spiking feedback) and the study's
(rate-coded inputs, spiking feedback; see hpo.space.sd.suggest_sd).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.sd_reference import NumpySD
from models import sd

SETTINGS = {
    "paper (spiking inputs and feedback)": sd.SDConfig(),
    "study (rate inputs, spiking feedback)": sd.SDConfig(spiking_feedforward=False),
}
BATCH = 16


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{model}, {os.cpu_count()} cores, {platform.system()}, jax {jax.__version__}, load average {load:.1f}"


def numpy_rate(config: sd.SDConfig, params, x: np.ndarray, y: np.ndarray, repeats: int) -> float:
    times = []
    for r in range(repeats):
        net = NumpySD(config, params, np.random.default_rng(r))
        start = time.perf_counter()
        for i in range(len(x)):
            net.train_example(x[i] * config.phi_max, int(y[i]))
        times.append(time.perf_counter() - start)
    return len(x) / float(np.median(times))


def jax_rate(config: sd.SDConfig, params, x: np.ndarray, y: np.ndarray, repeats: int) -> tuple[float, float]:
    """Examples/s of a compiled scan over the examples (batches of ``config.batch_size``), and compile seconds."""
    s = sd.structure_of(config, x.shape[1], 10)
    h = sd.hyperparameters(config)
    b = config.batch_size
    n = len(x) // b * b
    x_rate = jnp.asarray(x[:n] * config.phi_max)
    labels = jnp.asarray(y[:n])

    def run(params, neurons, key):
        def one(carry, i):
            p, nr = carry
            idx = jax.lax.dynamic_slice_in_dim(jnp.arange(n), i * b, b)
            p, nr, (loss, _) = sd.train_example(s, h, p, nr, x_rate[idx], labels[idx], jax.random.fold_in(key, i))
            return (p, nr), loss.mean()

        return jax.lax.scan(one, (params, neurons), jnp.arange(n // b))

    params = jax.tree_util.tree_map(jnp.asarray, params)
    start = time.perf_counter()
    compiled = jax.jit(run).lower(params, sd.zero_neurons(s, b), jax.random.key(0)).compile()
    compile_seconds = time.perf_counter() - start
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, sd.zero_neurons(s, b), jax.random.key(r)))
        times.append(time.perf_counter() - start)
    return n / float(np.median(times)), compile_seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--numpy-examples", type=int, default=20)
    parser.add_argument("--online-examples", type=int, default=200)
    parser.add_argument("--batched-examples", type=int, default=960)
    parser.add_argument("--out", default="results/benchmarks/sd_speed.md")
    args = parser.parse_args(argv)

    from hpo.data import load_dataset

    dataset = load_dataset("mnist-5k")
    x01 = sd.input_rates01(dataset.x_train, np.arange(len(dataset.x_train)))
    y = dataset.y_train
    rows = []
    for name, config in SETTINGS.items():
        params = sd.init_params(config, 784, 10, np.random.default_rng(0))
        ref = numpy_rate(config, params, x01[: args.numpy_examples], y, args.repeats)
        online, c1 = jax_rate(config, params, x01[: args.online_examples], y, args.repeats)
        batched, c2 = jax_rate(replace(config, batch_size=BATCH), params, x01[: args.batched_examples], y, args.repeats)
        rows.append((name, ref, online, batched, c1, c2))
        print(f"{name}: numpy {ref:.1f}/s, jax online {online:.1f}/s ({online / ref:.1f}x), "
              f"jax batch {BATCH} {batched:.1f}/s ({batched / ref:.1f}x); compile {c1:.1f}s, {c2:.1f}s", flush=True)

    lines = [
        "# Segregated dendrites: training speed",
        "",
        "`python -m benchmarks.sd_speed` — training examples per second (forward phase, target phase, weight",
        "update) of a 784-500-10 network on mnist-5k inputs with the paper's phases (50 ms + 50 ms, dt = 1 ms);",
        f"median of {args.repeats} repeats; compile time excluded. NumPy: `benchmarks/sd_reference.py`, the direct",
        "per-example, per-time-step implementation (float64, one matrix-vector product per layer and step, as the",
        "seed and the authors' code ran it). JAX: `models.sd.train_example` in a compiled `lax.scan` over examples.",
        "",
        f"Machine: {machine()}.",
        "",
        f"| setting | NumPy per example (ex/s) | JAX online (ex/s) | speed-up | JAX batch {BATCH} (ex/s) | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, ref, online, batched, _, _ in rows:
        lines.append(f"| {name} | {ref:.1f} | {online:.1f} | {online / ref:.1f}x | {batched:.1f} | {batched / ref:.1f}x |")
    lines += [
        "",
        "Compile seconds (online, batched): " + "; ".join(f"{r[0]}: {r[4]:.1f}, {r[5]:.1f}" for r in rows) + ".",
        "",
        "Why spiking inputs gain less: every time step draws a fresh spike vector for all 784 inputs and pushes it",
        "through the 784x500 first layer. The compiled model batches a phase's steps into one matrix product and",
        "draws its variates with a cheap counter hash, but that product (~80 MFLOP per example) remains, and NumPy",
        "pays the same arithmetic in its matrix-vector products. With rate-coded inputs (the study's setting) the",
        "first layer's drive is constant over a phase and computed once, so the time loop is left with small work.",
        "",
    ]
    if os.getloadavg()[0] > 1.5:  # other jobs were running: say so next to the numbers
        lines += [
            "The machine's cores were shared with other jobs while this ran (see the load average above), so absolute",
            "numbers are noisy and pessimistic; the ratios are more stable since both sides ran under the same load.",
            "",
        ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

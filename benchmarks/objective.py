"""Objective speed against the seeds' ways of training, and against the machine's matmul peak.

    python -m benchmarks.objective            # full run (about 15 minutes on 2 cores)
    python -m benchmarks.objective --quick    # smaller, to check it works

Measures, in one process and one run, with medians over repeats (compilation excluded, reported separately):

* ours      -- ``models.train.cross_validate``: FA MLP, 2 hidden layers of width W, batch 64, Adam, 3 folds,
               10 epochs on mnist-5k; one compiled program per epoch (``lax.scan`` over batches), folds run
               one after another (``sequential``) or vmapped (``vmap``) -- both are measured;
* jit-step  -- the first seed's way: a jitted train step called from a Python loop over mini-batches that are
               sliced on the host, one fold after another;
* torch     -- the second seed's way: PyTorch, a Python loop over folds and mini-batches, FA as a
               ``torch.autograd.Function``, Adam;
* peak      -- float32 matrix-multiply GFLOP/s measured in JAX (2048 x 2048), and each implementation's achieved
               GFLOP/s (forward + backward multiply-adds, validation forward passes) as a fraction of it.

Writes the table to ``results/benchmarks.md`` (and prints it). See ``benchmarks/study.py`` for whole-study
timings, compile share, memory and scaling.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hpo.data import load_dataset, make_folds
from models.rule_training import TrainConfig
from models.rules import DenseForward, get_rule, rule_op
from models.train import FoldData, cross_validate

BATCH = 64
FOLDS = 3


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import os

    return (f"{cpu}, {os.cpu_count()} cores visible, JAX {jax.__version__} on {jax.default_backend()}, "
            f"Python {platform.python_version()}")


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(n: int = 2048, repeats: int = 20) -> float:
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    return 2 * n**3 / median_seconds(lambda: f(a).block_until_ready(), repeats) / 1e9


def flops_per_run(widths: tuple[int, ...], n_train: int, n_val: int, epochs: int, folds: int) -> float:
    """Multiply-adds x 2: forward and backward (weight and input gradients) on training batches, forward on
    validation. The first layer's input gradient is not needed (the input is data) and is not counted."""
    sizes = (784, *widths, 10)
    forward = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    backward = 2 * forward - sizes[0] * sizes[1]
    steps = (n_train // BATCH) * BATCH
    return 2.0 * folds * epochs * (steps * (forward + backward) + n_val * forward)


def fold_arrays(dataset, folds):
    return FoldData(jnp.asarray(dataset.x_train.reshape(len(dataset.x_train), -1)), jnp.asarray(dataset.y_train),
                    folds.train_idx, jnp.asarray(folds.val_idx), jnp.asarray(folds.val_mask))


def ours(data: FoldData, width: int, epochs: int, strategy: str):
    config = TrainConfig(rule="fa", hidden=(width, width), learning_rate=1e-3, batch_size=BATCH, epochs=epochs)
    compile_seconds = cross_validate(config, data, 10, seed=0, fold_strategy=strategy).compile_seconds
    return (lambda: cross_validate(config, data, 10, seed=0, fold_strategy=strategy)), compile_seconds


def jit_step_reference(dataset, folds, width: int, epochs: int):
    """The first seed's loop: a jitted step per mini-batch, batches sliced on the host, folds in sequence."""
    x_all = dataset.x_train.reshape(len(dataset.x_train), -1)
    y_all = dataset.y_train
    rng = np.random.default_rng(0)
    sizes = (784, width, width, 10)
    tx = optax.adam(1e-3)

    def init():
        params = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            params.append({"w": rng.standard_normal((a, b), np.float32) / np.sqrt(a), "b": np.zeros(b, np.float32),
                           "B": rng.standard_normal((a, b), np.float32) / np.sqrt(a)})
        return jax.tree_util.tree_map(jnp.asarray, params)

    def forward(params, x):
        for i, layer in enumerate(params):
            x = rule_op(get_rule("fa"), DenseForward(), x, layer["w"], layer["b"], jax.lax.stop_gradient(layer["B"]), None)
            if i < len(params) - 1:
                x = jax.nn.relu(x)
        return x

    @jax.jit
    def step(params, opt_state, x, y):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(forward(p, x), y).mean()
        grads = jax.grad(loss)(params)
        grads = [{**g, "B": jnp.zeros_like(g["B"])} for g in grads]
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def accuracy(params, x, y):
        return (forward(params, x).argmax(-1) == y).mean()

    def run():
        scores = []
        for train, val, mask in zip(folds.train_idx, folds.val_idx, folds.val_mask):
            params = init()
            opt_state = tx.init(params)
            for _ in range(epochs):
                order = rng.permutation(train)
                for start in range(0, len(order) - BATCH + 1, BATCH):
                    idx = order[start:start + BATCH]
                    params, opt_state = step(params, opt_state, x_all[idx], y_all[idx])
                scores.append(float(accuracy(params, x_all[val[mask]], y_all[val[mask]])))
        return scores

    start = time.perf_counter()  # warm-up: compile the step and the evaluation once
    params = init()
    step(params, tx.init(params), x_all[:BATCH], y_all[:BATCH])
    for val, mask in zip(folds.val_idx, folds.val_mask):
        accuracy(params, x_all[val[mask]], y_all[val[mask]])
    return run, time.perf_counter() - start


def torch_reference(dataset, folds, width: int, epochs: int):
    """The second seed's loop: PyTorch, Python loops over folds and mini-batches, FA as an autograd.Function."""
    import torch

    torch.set_num_threads(2)

    class FALinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b, feedback):
            ctx.save_for_backward(x, feedback)
            return x @ w + b

        @staticmethod
        def backward(ctx, dy):
            x, feedback = ctx.saved_tensors
            return dy @ feedback.T, x.T @ dy, dy.sum(0), None

    x_all = torch.from_numpy(dataset.x_train.reshape(len(dataset.x_train), -1))
    y_all = torch.from_numpy(dataset.y_train.astype(np.int64))
    sizes = (784, width, width, 10)
    gen = torch.Generator().manual_seed(0)

    def run():
        scores = []
        for train, val, mask in zip(folds.train_idx, folds.val_idx, folds.val_mask):
            layers = []
            for a, b in zip(sizes[:-1], sizes[1:]):
                w = (torch.randn(a, b, generator=gen) / a**0.5).requires_grad_()
                bias = torch.zeros(b, requires_grad=True)
                layers.append((w, bias, torch.randn(a, b, generator=gen) / a**0.5))
            optimiser = torch.optim.Adam([p for w, b, _ in layers for p in (w, b)], lr=1e-3)

            def forward(x, layers=layers):
                for i, (w, b, feedback) in enumerate(layers):
                    x = FALinear.apply(x, w, b, feedback)
                    if i < len(layers) - 1:
                        x = torch.relu(x)
                return x

            train_t = torch.from_numpy(train.astype(np.int64))
            for _ in range(epochs):
                order = train_t[torch.randperm(len(train_t), generator=gen)]
                for start in range(0, len(order) - BATCH + 1, BATCH):
                    idx = order[start:start + BATCH]
                    optimiser.zero_grad()
                    loss = torch.nn.functional.cross_entropy(forward(x_all[idx]), y_all[idx])
                    loss.backward()
                    optimiser.step()
                with torch.no_grad():
                    v = torch.from_numpy(val[mask].astype(np.int64))
                    scores.append(float((forward(x_all[v]).argmax(-1) == y_all[v]).float().mean()))
        return scores

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 repeat: check the script works")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--widths", default="64,256,1024")
    parser.add_argument("--output", default="results/benchmarks.md")
    args = parser.parse_args(argv)
    epochs, repeats = (2, 1) if args.quick else (10, args.repeats)
    widths = [int(w) for w in args.widths.split(",")]

    dataset = load_dataset("mnist-5k")
    folds = make_folds(dataset, FOLDS, seed=0)
    data = fold_arrays(dataset, folds)
    n_train, n_val = folds.train_idx.shape[1], int(folds.val_mask.sum(1).mean())
    peak = matmul_peak()
    print(f"matmul peak: {peak:.1f} GFLOP/s")

    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False

    rows = []
    for width in widths:
        flops = flops_per_run((width, width), n_train, n_val, epochs, FOLDS)
        timings: dict[str, float] = {}
        compiles: dict[str, float] = {}
        for strategy in ("sequential", "vmap"):
            run, compiles[f"ours ({strategy})"] = ours(data, width, epochs, strategy)
            timings[f"ours ({strategy})"] = median_seconds(run, repeats)
        run, compiles["jit-step loop"] = jit_step_reference(dataset, folds, width, epochs)
        timings["jit-step loop"] = median_seconds(run, repeats)
        if have_torch:
            timings["torch loop"] = median_seconds(torch_reference(dataset, folds, width, epochs), repeats)
        best_ours = min(timings["ours (sequential)"], timings["ours (vmap)"])
        for name, seconds in timings.items():
            gflops = flops / seconds / 1e9
            rows.append({
                "width": width, "implementation": name, "seconds": seconds,
                "compile": compiles.get(name, float("nan")), "gflops": gflops, "peak_fraction": gflops / peak,
                "speedup_vs_torch": timings.get("torch loop", float("nan")) / seconds,
                "ours_speedup": seconds / best_ours,
            })
            print(f"width {width:5d} {name:18s} {seconds:8.3f}s  {gflops:7.1f} GFLOP/s  {gflops / peak:6.1%} of peak")

    write_table(rows, peak, epochs, repeats, args.output)
    return 0


def write_table(rows, peak, epochs, repeats, output) -> None:
    lines = [
        "# Objective benchmark",
        "",
        f"Machine: {machine()}. Measured matmul peak (float32, 2048x2048, JAX): **{peak:.1f} GFLOP/s**.",
        "",
        f"FA MLP, 2 hidden layers, batch {BATCH}, Adam, {FOLDS} folds, {epochs} epochs on mnist-5k "
        f"(training parts of {FOLDS}-fold CV on the 4000-example training split). Seconds are medians of {repeats} "
        "repeats of a whole cross-validation, compilation excluded (its one-off cost is in the `compile` column). "
        "`x torch` is the PyTorch loop's time divided by this row's.",
        "",
        "| width | implementation | seconds | compile s | GFLOP/s | of peak | x torch |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        compile_s = "" if np.isnan(r["compile"]) else f"{r['compile']:.2f}"
        vs_torch = "" if np.isnan(r["speedup_vs_torch"]) else f"{r['speedup_vs_torch']:.2f}"
        lines.append(f"| {r['width']} | {r['implementation']} | {r['seconds']:.3f} | {compile_s} | {r['gflops']:.1f} | "
                     f"{r['peak_fraction']:.0%} | {vs_torch} |")
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text() if path.exists() else ""
    marker = "<!-- study benchmarks below -->"
    tail = existing[existing.index(marker):] if marker in existing else marker + "\n"
    path.write_text("\n".join(lines) + "\n\n" + tail)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())

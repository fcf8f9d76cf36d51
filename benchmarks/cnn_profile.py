"""Where a CNN training step's time goes on XLA:CPU: every convolution of the benchmark CNN, split into forward,
input error and kernel gradient, and its max-pooling, each timed on its own against PyTorch's op on the same
shapes.

    python -m benchmarks.cnn_profile [--steps 40] [--repeats 5] [--output results/benchmarks/cnn_profile.md]

Each JAX piece runs as ``lax.scan`` over ``--steps`` different inputs inside one compiled program (as in the
training epoch) and is timed per step, median of ``--repeats``; the PyTorch ops (``F.conv2d``,
``torch.nn.grad.conv2d_input`` / ``conv2d_weight``, ``F.max_pool2d`` and its backward) run in a Python loop over
the same inputs on 2 threads and on 1, timed in turn with the JAX ones so a changing load hits both alike.
The CPU path is ours (``models.rules.convolution``: ``_cpu_conv2d``, ``_cpu_conv2d_vjp``); XLA's own transpose rules
(``_xla_conv2d_vjp``) are timed beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.objective import machine, matmul_peak
from models.networks import pool
from models.rules import convolution as conv_module

BATCH = 64
LAYERS = (("conv1", (28, 28, 1), 16), ("conv2", (14, 14, 16), 32))  # name, input (h, w, c), features; k5 SAME
KERNEL = 5


def scanned(piece, xs, *args):
    """``piece(x, *args)`` over the leading axis of ``xs`` in one ``lax.scan``, its outputs summed."""

    def body(total, x):
        out = piece(x, *args)
        return total + sum(jnp.sum(o) for o in jax.tree_util.tree_leaves(out)), None

    return jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)[0]


def jax_pieces(shape, features):
    strides, padding = (1, 1), "SAME"
    rng = np.random.default_rng(0)
    kernel = jnp.asarray(rng.standard_normal((KERNEL, KERNEL, shape[2], features)), jnp.float32)
    bias = jnp.zeros(features, jnp.float32)

    def forward(x, kernel, bias):
        return conv_module._cpu_conv2d(x, kernel, bias, strides, padding)

    def ours_dx(pair, kernel):
        x, dy = pair
        return conv_module._cpu_conv2d_vjp(strides, padding, x, kernel, dy)[0]

    def ours_dk(pair, kernel):
        x, dy = pair
        return conv_module._cpu_conv2d_vjp(strides, padding, x, kernel, dy)[1]

    def xla_dx(pair, kernel):
        x, dy = pair
        return conv_module._xla_conv2d_vjp(strides, padding, x, kernel, dy)[0]

    def xla_dk(pair, kernel):
        x, dy = pair
        return conv_module._xla_conv2d_vjp(strides, padding, x, kernel, dy)[1]

    def max_pool(pair):
        _, dy = pair
        out, vjp = jax.vjp(partial(pool, kind="max"), dy)
        return vjp(out)

    return kernel, bias, {
        "forward (ours = XLA's)": (forward, "x", (kernel, bias)),
        "input error, ours": (ours_dx, "pair", (kernel,)),
        "input error, XLA's rule": (xla_dx, "pair", (kernel,)),
        "kernel gradient, ours": (ours_dk, "pair", (kernel,)),
        "kernel gradient, XLA's rule": (xla_dk, "pair", (kernel,)),
        "max-pool 2, forward + backward": (max_pool, "pair", ()),
    }


def torch_pieces(shape, features, xs, dys, kernel):
    import torch
    import torch.nn.functional as F

    x_t = [torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))) for x in xs]
    dy_t = [torch.from_numpy(np.ascontiguousarray(np.asarray(d).transpose(0, 3, 1, 2))) for d in dys]
    w = torch.from_numpy(np.ascontiguousarray(np.asarray(kernel).transpose(3, 2, 0, 1)))
    b = torch.zeros(features)
    pad = KERNEL // 2

    def pool_both(d):
        d = d.clone().requires_grad_()
        out = F.max_pool2d(d, 2)
        out.backward(out.detach())
        return d.grad

    return {
        "forward (ours = XLA's)": lambda: [F.conv2d(x, w, b, padding=pad) for x in x_t],
        "input error, ours": lambda: [torch.nn.grad.conv2d_input(x.shape, w, d, padding=pad) for x, d in zip(x_t, dy_t)],
        "kernel gradient, ours": lambda: [torch.nn.grad.conv2d_weight(x, w.shape, d, padding=pad)
                                          for x, d in zip(x_t, dy_t)],
        "max-pool 2, forward + backward": lambda: [pool_both(d) for d in dy_t],
    }


def macs(shape, features, piece):
    h, w, c = shape
    conv = BATCH * h * w * c * features * KERNEL * KERNEL
    return 0 if piece.startswith("max-pool") else conv


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="results/benchmarks/cnn_profile.md")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    peak = matmul_peak()
    rows = []
    for name, shape, features in LAYERS:
        rng = np.random.default_rng(1)
        xs = jnp.asarray(rng.standard_normal((args.steps, BATCH, *shape)), jnp.float32)
        dys = jnp.asarray(rng.standard_normal((args.steps, BATCH, *shape[:2], features)), jnp.float32)
        kernel, bias, pieces = jax_pieces(shape, features)
        runs = {}
        for piece, (fn, kind, extra) in pieces.items():
            data = xs if kind == "x" else (xs, dys)
            program = jax.jit(partial(scanned, fn)).lower(data, *extra).compile()
            runs[("jax", piece)] = partial(lambda p, d, e: p(d, *e).block_until_ready(), program, data, extra)
        for piece, fn in torch_pieces(shape, features, xs, dys, kernel).items():
            for threads in (2, 1):
                runs[(f"torch {threads}", piece)] = partial(
                    lambda f, t: (torch.set_num_threads(t), f()), fn, threads)
        for run in runs.values():
            run()  # warm-up
        times = {key: [] for key in runs}
        for _ in range(args.repeats):
            for key, run in runs.items():
                start = time.perf_counter()
                run()
                times[key].append((time.perf_counter() - start) / args.steps)
        for piece in pieces:
            ours = statistics.median(times[("jax", piece)])
            t2 = statistics.median(times[("torch 2", piece)]) if ("torch 2", piece) in times else float("nan")
            t1 = statistics.median(times[("torch 1", piece)]) if ("torch 1", piece) in times else float("nan")
            flops = 2 * macs(shape, features, piece)
            rows.append((name, piece, ours, t2, t1, flops))
            print(f"{name} {piece:32s} jax {ours * 1e3:7.2f} ms  torch2 {t2 * 1e3:7.2f} ms  torch1 {t1 * 1e3:7.2f} ms"
                  f"  {flops / ours / 1e9 if flops else float('nan'):6.1f} GFLOP/s", flush=True)
    lines = [
        "# Where a CNN step's time goes on XLA:CPU",
        "",
        f"Machine: {machine()}. Matmul peak (float32, 2048x2048, JAX, this run): **{peak:.1f} GFLOP/s**. Load "
        f"average before: {'/'.join(f'{x:.1f}' for x in load_before)}, after: "
        f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}. `python -m benchmarks.cnn_profile --steps {args.steps} "
        f"--repeats {args.repeats}`; milliseconds per mini-batch of {BATCH}, medians, every piece timed in turn.",
        "",
        "| layer | piece | ours (JAX) ms | GFLOP/s | of peak | PyTorch 2 threads ms | PyTorch 1 thread ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, piece, ours, t2, t1, flops in rows:
        rate = f"{flops / ours / 1e9:.1f}" if flops else ""
        share = f"{flops / ours / 1e9 / peak:.0%}" if flops else ""
        fmt = (lambda t: "" if np.isnan(t) else f"{t * 1e3:.2f}")
        lines.append(f"| {name} | {piece} | {ours * 1e3:.2f} | {rate} | {share} | {fmt(t2)} | {fmt(t1)} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

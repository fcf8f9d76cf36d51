"""Objective speed against the seeds' ways of training, and against the machine's matmul peak.

    python -m benchmarks.objective                 # full run: MLP and CNN rows (about 20 minutes on 2 cores)
    python -m benchmarks.objective --part cnn      # the CNN rows only (about 8 minutes), MLP section kept
    python -m benchmarks.objective --quick         # smaller, to check it works

Measures, in one process and one run, with medians over repeats (compilation excluded, reported separately):

* ours      -- ``models.train.cross_validate``: FA MLP, 2 hidden layers of width W, batch 64, Adam, 3 folds,
               10 epochs on mnist-5k; one compiled program per epoch (``lax.scan`` over batches), folds run
               one after another (``sequential``) or vmapped (``vmap``) -- both are measured;
* jit-step  -- the first seed's way: a jitted train step called from a Python loop over mini-batches that are
               sliced on the host, one fold after another;
* torch     -- the second seed's way: PyTorch, a Python loop over folds and mini-batches, FA as a
               ``torch.autograd.Function``, Adam;
* CNN rows  -- the benchmark CNN (conv 16 k5 SAME + relu + max-pool, conv 32 k5 SAME + relu + max-pool, dense
               128, 10 outputs; batch 64, Adam 1e-3, 3 folds x 1 epoch) on mnist-5k (2-D) and on mnist1d (1-D),
               for bp, fa, kp and dfa: ours with the study default (``auto``) and each strategy, the jit-step
               loop and the seed-style PyTorch loop (``benchmarks.cnn_reference``), timed round-robin;
* peak      -- float32 matrix-multiply GFLOP/s measured in JAX (2048 x 2048), and each implementation's achieved
               GFLOP/s (forward + backward multiply-adds, validation forward passes) as a fraction of it.

Writes the table to ``results/benchmarks/objective.md`` (and prints it). See ``benchmarks/study.py`` for whole-study
timings, compile share, memory and scaling.
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
import numpy as np
import optax

from hpo.data import load_dataset, make_folds
from models.compile import Compiler
from models.rule_training import TrainConfig
from models.rules import DenseForward, get_rule, rule_op
from models.train import FoldData, Plan, cross_validate

BATCH = 64
FOLDS = 3


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    simd = "AVX-512" if "avx512f" in flags else ("AVX2, no AVX-512" if "avx2" in flags else "no AVX2")
    return (f"{cpu} ({simd}), {os.cpu_count()} cores visible, JAX {jax.__version__} on {jax.default_backend()}, "
            f"Python {platform.python_version()}")


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def round_robin(runs: dict, repeats: int) -> dict[str, float]:
    """Median seconds of every run, timed in turn (one call of each, ``repeats`` times): a load that comes and
    goes on a shared machine then slows all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


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
    return ours_config(config, data, strategy)


# what auto decides, measured for each program kind at once (a study decides once a kind's training pays)
COMPILER = Compiler(payback=0.0)


class OursRun:
    """One cross-validation of ``config`` by ``models.train`` (callable); ``decision``: what auto decided."""

    def __init__(self, config, data: FoldData, strategy: str):
        self.config, self.data, self.strategy = config, data, strategy
        known = set(COMPILER.store.decisions())
        first = self()
        self.compile_seconds, self.chosen = first.compile_seconds, first.fold_strategy
        new = [d for name, d in COMPILER.store.decisions().items() if name not in known]
        self.decision = new[0] if new else None  # None: a decision made for an earlier row of the same kind

    def __call__(self):
        return cross_validate(self.config, self.data, 10, seed=0, plan=Plan(self.strategy), compiler=COMPILER)


def ours_config(config, data: FoldData, strategy: str):
    run = OursRun(config, data, strategy)
    return run, run.compile_seconds


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
    parser.add_argument("--output", default="results/benchmarks/objective.md")
    parser.add_argument("--part", choices=("all", "mlp", "cnn"), default="all",
                        help="which rows to measure; the other part's section of the output is kept")
    parser.add_argument("--rules", default="bp,fa,kp,dfa", help="the CNN rows' rules")
    parser.add_argument("--no-torch", action="store_true", help="MLP rows without the PyTorch loop")
    args = parser.parse_args(argv)
    epochs, repeats = (2, 1) if args.quick else (10, args.repeats)
    widths = [int(w) for w in args.widths.split(",")]
    load_before = os.getloadavg()
    peak = matmul_peak()
    print(f"matmul peak: {peak:.1f} GFLOP/s")
    existing = Path(args.output).read_text() if Path(args.output).exists() else ""
    mlp_section = section(existing, MLP_MARK) if args.part == "cnn" else None
    cnn_section = section(existing, CNN_MARK) if args.part == "mlp" else None
    if args.part in ("all", "mlp"):
        mlp_section = mlp_rows(widths, epochs, repeats, peak, load_before, with_torch=not args.no_torch)
    if args.part in ("all", "cnn"):
        cnn_section = cnn_rows(args.rules.split(","), 1 if args.quick else repeats, peak, load_before)
    write_sections(args.output, mlp_section or "", cnn_section or "")
    return 0


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def mlp_rows(widths, epochs, repeats, peak, load_before, with_torch: bool = True) -> str:
    dataset = load_dataset("mnist-5k")
    folds = make_folds(dataset, FOLDS, seed=0)
    data = fold_arrays(dataset, folds)
    n_train, n_val = folds.train_idx.shape[1], int(folds.val_mask.sum(1).mean())

    try:
        import torch  # noqa: F401

        have_torch = with_torch
    except ImportError:
        have_torch = False

    rows = []
    for width in widths:
        flops = flops_per_run((width, width), n_train, n_val, epochs, FOLDS)
        runs: dict = {}
        compiles: dict[str, float] = {}
        for strategy in ("auto", "sequential", "vmap"):
            runs[f"ours ({strategy})"], compiles[f"ours ({strategy})"] = ours(data, width, epochs, strategy)
        runs["jit-step loop"], compiles["jit-step loop"] = jit_step_reference(dataset, folds, width, epochs)
        if have_torch:
            runs["torch loop"] = torch_reference(dataset, folds, width, epochs)
        timings = round_robin(runs, repeats)
        best_ours = min(timings["ours (sequential)"], timings["ours (vmap)"])
        for name, seconds in timings.items():
            gflops = flops / seconds / 1e9
            rows.append({
                "width": width, "implementation": name, "seconds": seconds,
                "compile": compiles.get(name, float("nan")), "gflops": gflops, "peak_fraction": gflops / peak,
                "speedup_vs_torch": timings.get("torch loop", float("nan")) / seconds,
                "ours_speedup": seconds / best_ours,
                "decision": decision_text(getattr(runs["ours (auto)"], "decision", None)) if name == "ours (auto)" else "",
                "chosen": getattr(runs["ours (auto)"], "chosen", None),
            })
            print(f"width {width:5d} {name:18s} {seconds:8.3f}s  {gflops:7.1f} GFLOP/s  {gflops / peak:6.1%} of peak")

    return mlp_table(rows, peak, epochs, repeats, load_before)


def mlp_table(rows, peak, epochs, repeats, load_before) -> str:
    lines = [
        "# Objective benchmark",
        "",
        f"Machine: {machine()}. Measured matmul peak (float32, 2048x2048, JAX): **{peak:.1f} GFLOP/s**. "
        f"Load average (1/5/15 min) before: {'/'.join(f'{x:.1f}' for x in load_before)}, after: {load()}.",
        "",
        f"FA MLP, 2 hidden layers, batch {BATCH}, Adam, {FOLDS} folds, {epochs} epochs on mnist-5k "
        f"(training parts of {FOLDS}-fold CV on the 4000-example training split). Seconds are medians of {repeats} "
        "repeats of a whole cross-validation (the implementations timed in turn), compilation excluded (its one-off cost is in the `compile` column). "
        "`x torch` is the PyTorch loop's time divided by this row's; `auto` is the study default "
        "(`--fold-strategy auto`: its one measurement is in its compile column).",
        "",
        "| width | implementation | seconds | compile s | GFLOP/s | of peak | x torch |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        compile_s = "" if np.isnan(r["compile"]) else f"{r['compile']:.2f}"
        vs_torch = "" if np.isnan(r["speedup_vs_torch"]) else f"{r['speedup_vs_torch']:.2f}"
        lines.append(f"| {r['width']} | {r['implementation']} | {r['seconds']:.3f} | {compile_s} | {r['gflops']:.1f} | "
                     f"{r['peak_fraction']:.0%} | {vs_torch} |")
    lines += ["", DECISIONS_INTRO, ""]
    lines += [f"- width {r['width']}: **{r['decision'] or REUSED.format(r['chosen'])}**" for r in rows
              if r["implementation"] == "ours (auto)"]
    lines += ["", *targets_table(rows, "width", mlp=True)]
    return "\n".join(lines) + "\n"


DECISIONS_INTRO = ("Fold strategy decided by `auto` (whole epochs timed with each mapping, the faster kept; once per "
                   "kind of program, which the rows after it of the same kind reuse):")
REUSED = "{} (the decision of an earlier row of the same kind of program)"


def decision_text(decision: dict | None) -> str:
    if not decision:
        return ""
    seconds = ", ".join(f"{s} {t * 1e3:.1f} ms" for s, t in sorted(decision["seconds"].items()))
    return (f"{decision['strategy']} (fastest of {decision['rounds']} timed epochs of {decision['epoch_steps']} steps "
            f"of {decision['runs']} runs: {seconds}; work class {decision['work_bucket']}; measuring, with both "
            f"compilations, took {decision['measure_seconds']:.1f} s)")


def auto_gap(rows, group_key) -> list[tuple[str, float, float]]:
    """Per group: the seconds of the strategy auto chose (the very program the default runs) over the better
    strategy's, and the same with the auto row's own seconds (which differ from its strategy's by noise only)."""
    gaps = []
    for group in dict.fromkeys(r[group_key] for r in rows):
        mine = {r["implementation"]: r for r in rows if r[group_key] == group}
        best = min(mine["ours (sequential)"]["seconds"], mine["ours (vmap)"]["seconds"])
        chosen = mine["ours (auto)"].get("chosen")
        chosen_seconds = mine[f"ours ({chosen})"]["seconds"] if chosen else mine["ours (auto)"]["seconds"]
        gaps.append((str(group), chosen_seconds / best, mine["ours (auto)"]["seconds"] / best))
    return gaps


def targets_table(rows, group_key, mlp: bool) -> list[str]:
    lines = ["| target | measured | met |", "|---|---|---|"]
    gaps = auto_gap(rows, group_key)
    worst = max(gap for _, gap, _ in gaps)
    detail = ", ".join(f"{g}: {gap:.2f} ({own:.2f})" for g, gap, own in gaps)
    lines.append(f"| default (auto) <= 1.05 x the better strategy, {'MLP' if mlp else 'CNN'}: the chosen strategy's "
                 f"seconds over the better's (the auto row's own in brackets) | {detail} | "
                 f"{'yes' if worst <= 1.05 else 'no'} |")
    return lines


CNN_RULES = ("bp", "fa", "kp", "dfa")
CNN_DATA = (("mnist-5k", "2-D"), ("mnist1d", "1-D"))
# x the PyTorch loop on 2 threads: 2-D bp and fa 1.5, kp and dfa 1.2 (their feedback costs a third
# matrix product per layer, or a projection per layer); every 1-D row 1.5
CNN_TARGETS = {("2-D", "bp"): 1.5, ("2-D", "fa"): 1.5, ("2-D", "kp"): 1.2, ("2-D", "dfa"): 1.2}


def cnn_rows(rules, repeats, peak, load_before) -> str:
    """The CNN rows: ours (auto, vmap, sequential), the jit-step loop and the PyTorch loop, timed in turn."""
    from benchmarks.cnn_reference import cnn_flops, jit_step_cnn_reference, standard_cnn, torch_cnn_reference

    rows = []
    for name, dims in CNN_DATA:
        dataset = load_dataset(name)
        folds = make_folds(dataset, FOLDS, seed=0)
        data = FoldData(jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train), folds.train_idx,
                        jnp.asarray(folds.val_idx), jnp.asarray(folds.val_mask))
        n_train = folds.train_idx.shape[1] // BATCH * BATCH
        n_val = int(folds.val_mask.sum(1).mean())
        for rule in rules:
            config = standard_cnn(rule, epochs=1, batch_size=BATCH)
            flops = FOLDS * cnn_flops(config, dataset.x_train.shape[1:], dataset.out_features, n_train, n_val)
            runs: dict = {}
            compiles: dict[str, float] = {}
            for strategy in ("auto", "vmap", "sequential"):
                runs[f"ours ({strategy})"], compiles[f"ours ({strategy})"] = ours_config(config, data, strategy)
            runs["jit-step loop"], compiles["jit-step loop"] = jit_step_cnn_reference(dataset, folds, config)
            runs["torch loop"] = torch_threads(torch_cnn_reference(dataset, folds, config, threads=2), 2)
            runs["torch loop, 1 thread"] = torch_threads(torch_cnn_reference(dataset, folds, config, threads=1), 1)
            timings = round_robin(runs, repeats)
            for impl, seconds in timings.items():
                gflops = flops / seconds / 1e9
                rows.append({
                    "data": f"{dims} {name}", "dims": dims, "rule": rule, "implementation": impl, "seconds": seconds,
                    "compile": compiles.get(impl, float("nan")), "gflops": gflops, "peak_fraction": gflops / peak,
                    "speedup_vs_torch": timings["torch loop"] / seconds,
                    "speedup_vs_torch1": timings["torch loop, 1 thread"] / seconds,
                    "decision": decision_text(runs["ours (auto)"].decision) if impl == "ours (auto)" else "",
                    "chosen": runs["ours (auto)"].chosen,
                })
                print(f"{dims} {rule:4s} {impl:18s} {seconds:8.3f}s {gflops:7.1f} GFLOP/s {gflops / peak:6.1%} of peak "
                      f"x torch {timings['torch loop'] / seconds:5.2f}", flush=True)
    return cnn_table(rows, peak, repeats, load_before)


def torch_threads(run, threads: int):
    """``run`` with PyTorch on ``threads`` threads, set at every call (on a loaded 2-core machine a 2-thread pool
    waits on the other jobs; one thread is the comparison that load favours)."""
    import torch

    def with_threads():
        torch.set_num_threads(threads)
        return run()

    return with_threads


def cnn_table(rows, peak, repeats, load_before) -> str:
    lines = [
        "## CNN objective",
        "",
        f"Machine: {machine()}. Measured matmul peak (float32, 2048x2048, JAX, this run): **{peak:.1f} GFLOP/s**. "
        f"Load average (1/5/15 min) before: {'/'.join(f'{x:.1f}' for x in load_before)}, after: {load()} "
        "(a shared machine: absolute seconds vary with the load, the ratios are side by side in one process).",
        "",
        f"conv(16, k5, SAME) + relu + max-pool 2, conv(32, k5, SAME) + relu + max-pool 2, dense 128, 10 outputs; batch "
        f"{BATCH}, Adam lr 1e-3, {FOLDS} folds x 1 epoch; 2-D on mnist-5k (28 x 28), 1-D on mnist1d (40). Seconds: "
        f"median of {repeats} whole cross-validations, the implementations timed in turn, compilation excluded "
        "(`compile s`; auto's includes its measurement). GFLOP/s counts forward, weight-gradient and error "
        "multiply-adds (`benchmarks.cnn_reference.cnn_flops`). `x torch`: the PyTorch loop's seconds over this "
        "row's (the seed's way, `torch.set_num_threads(2)`, as the issue measured it); `x torch-1`: over the "
        "same loop on one thread, which a loaded machine favours.",
        "",
        "| data | rule | implementation | seconds | compile s | GFLOP/s | of peak | x torch | x torch-1 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        compile_s = "" if np.isnan(r["compile"]) else f"{r['compile']:.2f}"
        lines.append(f"| {r['data']} | {r['rule']} | {r['implementation']} | {r['seconds']:.2f} | {compile_s} | "
                     f"{r['gflops']:.1f} | {r['peak_fraction']:.0%} | {r['speedup_vs_torch']:.2f} | "
                     f"{r['speedup_vs_torch1']:.2f} |")
    lines += ["", DECISIONS_INTRO, ""]
    lines += [f"- {r['data']} {r['rule']}: {r['decision'] or REUSED.format(r['chosen'])}" for r in rows
              if r["implementation"] == "ours (auto)"]
    lines += ["", "Targets, from the table above:", "", "| target | measured | met |", "|---|---|---|"]
    for r in rows:
        if r["implementation"] != "ours (auto)":
            continue
        target = CNN_TARGETS.get((r["dims"], r["rule"]), 1.5)
        lines.append(f"| {r['data']} {r['rule']}: default >= {target:g}x the PyTorch loop | "
                     f"{r['speedup_vs_torch']:.2f}x (1 thread: {r['speedup_vs_torch1']:.2f}x) | "
                     f"{'yes' if r['speedup_vs_torch'] >= target else 'no'}"
                     f"{'' if (r['speedup_vs_torch1'] >= target) == (r['speedup_vs_torch'] >= target) else ' (1 thread: ' + ('yes' if r['speedup_vs_torch1'] >= target else 'no') + ')'} |")
    for row in targets_table(
        [{**r, "case": f"{r['data']} {r['rule']}"} for r in rows], "case", mlp=False
    )[2:]:
        lines.append(row)
    return "\n".join(lines) + "\n"


MLP_MARK, CNN_MARK, STUDY_MARK = "", "<!-- cnn benchmarks below -->", "<!-- study benchmarks below -->"


def section(text: str, mark: str) -> str:
    """The part of ``text`` from ``mark`` (the MLP part: from the start) to the next marker."""
    if mark and mark not in text:
        return ""
    start = text.index(mark) + len(mark) if mark else 0
    ends = [text.index(m, start) for m in (CNN_MARK, STUDY_MARK) if m != mark and m in text[start:]]
    return text[start:min(ends)].strip("\n") + "\n" if ends else text[start:]


def write_sections(output: str, mlp: str, cnn: str) -> None:
    """The MLP section, the CNN section and what follows the study marker (``benchmarks.study``'s), each kept
    as it was when not measured now; an empty part of a new file is left out."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text() if path.exists() else ""
    parts = [mlp.strip("\n")]
    if cnn.strip() or CNN_MARK in existing:
        parts += [CNN_MARK, cnn.strip("\n")]
    if STUDY_MARK in existing:
        parts.append(existing[existing.index(STUDY_MARK):].rstrip("\n"))
    path.write_text("\n\n".join(part for part in parts if part) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())

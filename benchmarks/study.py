"""Where a whole study's time goes: training, compiling, everything else; trial batches; the price of sharing
programs; peak memory; and how trial cost scales with data and width.

    python -m benchmarks.study              # full run (about 35 minutes on 2 cores)
    python -m benchmarks.study --before /tmp/before   # and the cold studies in an earlier checkout, side by side
    python -m benchmarks.study --before /tmp/before --pairs 3   # those pairs three times, interleaved: medians
    python -m benchmarks.study --quick      # 10-trial studies and fewer repeats, to check it works
    python -m benchmarks.study --cnn-study --before /tmp/before   # a whole CNN study here and in an earlier checkout

Each study row is a fresh ``python -m hpo.run --algo fa --trials N`` process on mnist-5k (as a user runs it) with
its own empty program store (``--cache-dir``), except ``warm``, which first fills a store with
``python -m hpo.warmup`` (its time is its own row) and then runs the study on it, and ``ahead``, which compiles
the space's programs in a background thread while trials train (``--compile-ahead``). Shares are of the process's
wall time: ``train`` and ``compile`` are the sums of the trials' ``train_seconds`` and ``compile_seconds``
user attributes (every finished trial records them, pruned ones too), ``overhead`` the sum of their
``overhead_seconds`` (sampling, initialisation, transfers, storage writes), and ``outside`` the rest of the
process (start-up, data, the test-score retraining, reports); ``background`` is the sum of the trials'
``background_compile_seconds``, compiling done beside training (``hpo.study.objective.Objective.compiling_ahead``),
which the other shares do not count. ``programs`` counts the compiled programs the study stored. Writes its
tables to ``results/benchmarks/study.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax.numpy as jnp
import optuna

from hpo.data import load_dataset, make_folds
from hpo.storage import open_storage
from models.networks import ConvLayer
from models.rule_training import TrainConfig
from models.train import FoldData, Plan, cross_validate

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    avx512 = "avx512f" in Path("/proc/cpuinfo").read_text()
    import jax

    return (f"{cpu} ({'with' if avx512 else 'without'} AVX-512), {os.cpu_count()} cores visible, JAX {jax.__version__} "
            f"on {jax.default_backend()}")


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def run_process(args: list[str], cwd: Path = ROOT) -> tuple[float, float]:
    """Run ``python -m ...args`` in ``cwd`` (a checkout: its packages are the ones imported); (wall seconds, peak
    resident MB of that child: ``os.wait4``'s own usage, not the maximum over every child so far; an upper
    bound, since Linux starts a child's peak at the parent's resident size when it forks, ~190 MB here)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, stdout=out, stderr=err, text=True,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(cwd)})
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        wall = time.perf_counter() - start
        if child.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(args)} failed:\n{err.read()[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def study_row(work: Path, label: str, trials: int, cache: Path, extra: list[str], cwd: Path = ROOT,
              repeat: int = 1) -> dict:
    """One fresh ``hpo.run --algo fa`` process (``extra`` adds options) run in checkout ``cwd`` on a new study
    (its own storage per ``label`` and ``repeat``), and where its time went. A trial without ``wall_seconds`` (a
    checkout from before it was recorded) counts its start-to-end time."""
    storage = work / f"{label}-{repeat}.journal"
    if storage.exists():
        raise RuntimeError(f"{storage} exists: a study row must start a new study")
    name = f"bench-{label}"
    wall, peak = run_process(["hpo.run", "--algo", "fa", "--trials", str(trials), "--storage", str(storage),
                              "--study-name", name, "--results-dir", str(work / f"results-{label}-{repeat}"),
                              "--cache-dir", str(cache), *extra], cwd)
    study = optuna.load_study(study_name=name, storage=open_storage(str(storage)))
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]

    def seconds(t, key: str) -> float:
        if key == "wall_seconds" and key not in t.user_attrs:
            return (t.datetime_complete - t.datetime_start).total_seconds()
        return t.user_attrs.get(key, 0.0)

    total = {key: sum(seconds(t, key) for t in done)
             for key in ("train_seconds", "compile_seconds", "overhead_seconds", "wall_seconds", "padding_seconds",
                         "background_compile_seconds")}
    states = [t.state.name for t in done]
    row = {
        "label": label, "options": " ".join(extra) or "defaults", "trials": len(done), "wall": wall,
        "trials_per_hour": len(done) / wall * 3600, "train": total["train_seconds"] / wall,
        "compile": total["compile_seconds"] / wall, "overhead": total["overhead_seconds"] / wall,
        "outside": (wall - total["wall_seconds"]) / wall, "complete": states.count("COMPLETE"),
        "padding": total["padding_seconds"] / wall, "shared": sum("shared_program" in t.user_attrs for t in done),
        "background": total["background_compile_seconds"] / wall,
        "pruned": states.count("PRUNED"), "programs": len(list((cache / "programs").glob("*.programs"))),
        "peak_mb": peak, "best": study.best_value, "load": load(),
    }
    print(f"{label}: {wall:.1f}s, train {row['train']:.0%} (padding {row['padding']:.0%}, {row['shared']} trials in "
          f"larger programs), compile {row['compile']:.0%}, overhead "
          f"{row['overhead']:.0%}, outside {row['outside']:.0%} (compiled beside training: {row['background']:.0%}), "
          f"{row['programs']} programs, peak {peak:.0f} MB",
          flush=True)
    return row


def studies(trials_small: int, trials: int, batch: int, before: Path | None = None,
            pairs: int = 1) -> tuple[list[dict], dict]:
    """The study rows; with ``before``, each cold study runs ``pairs`` times in each checkout, the two in turn
    (before, after, before, after, ...: a load that comes and goes slows both alike); rows carry their ``repeat``."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for repeat in range(1, (pairs if before is not None else 1) + 1):
            for n, store in ((trials_small, "a"), (trials, "b")):
                if before is not None:
                    row = study_row(work, f"before-cold-{n}", n, work / f"store-before-{n}-{repeat}", [],
                                    before.resolve(), repeat)
                    rows.append({**row, "commit": commit(before), "repeat": repeat})
                rows.append({**study_row(work, f"cold-{n}", n, work / f"store-{store}-{repeat}", [], ROOT, repeat),
                             "repeat": repeat})
        rows.append(study_row(work, f"cold-{trials}-batch{batch}", trials, work / "store-c",
                              ["--trial-batch", str(batch)]))
        # compiling the space's programs in a background thread is off by default on a CPU with few cores
        # (hpo.study.objective.compiles_ahead): this row is the measurement behind that default
        rows.append(study_row(work, f"cold-{trials}-ahead", trials, work / "store-e", ["--compile-ahead"]))
        warm_store = work / "store-d"
        warmup_wall, _ = run_process(["hpo.warmup", "--algo", "fa", "--cache-dir", str(warm_store)])
        warmup = {"wall": warmup_wall, "programs": len(list((warm_store / "programs").glob("*.programs")))}
        print(f"warmup: {warmup_wall:.1f}s for {warmup['programs']} programs", flush=True)
        rows.append(study_row(work, f"warm-{trials}", trials, warm_store, []))
    return rows, warmup


def sharing_cost(repeats: int) -> list[dict]:
    """Seconds of a cross-validation (compile excluded) with one program per activation and optimiser, and with
    one program serving relu/tanh x adam/sgd (the MLP space's choice), side by side, interleaved."""
    dataset = load_dataset("mnist-5k")
    folds = make_folds(dataset, 3, 0)
    data = FoldData(jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train), folds.train_idx,
                    jnp.asarray(folds.val_idx), jnp.asarray(folds.val_mask))
    cases = {"MLP 784-64-64-10": dict(hidden=(64, 64), epochs=3), "MLP 784-256-256-10": dict(hidden=(256, 256), epochs=3),
             "CNN conv16k5-pool, conv32k5-pool, 128": dict(
                 hidden=(128,), epochs=1, conv=(ConvLayer(16, 5, 1, "SAME", "max"), ConvLayer(32, 5, 1, "SAME", "max")))}
    shared = dict(activation_choices=("relu", "tanh"), optimizer_choices=("adam", "sgd"))
    rows = []
    for name, case in cases.items():
        configs = {"dedicated": TrainConfig(rule="fa", learning_rate=1e-3, **case),
                   "shared": TrainConfig(rule="fa", learning_rate=1e-3, **case, **shared)}
        for config in configs.values():
            cross_validate(config, data, 10, 0)  # compile
        times = {k: [] for k in configs}
        for _ in range(repeats):
            for k, config in configs.items():
                start = time.perf_counter()
                cross_validate(config, data, 10, 0)
                times[k].append(time.perf_counter() - start)
        medians = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"case": name, **medians, "ratio": medians["shared"] / medians["dedicated"], "load": load()})
        print(f"{name}: dedicated {medians['dedicated']:.3f}s, shared {medians['shared']:.3f}s "
              f"(x{rows[-1]['ratio']:.3f})", flush=True)
    return rows


def batch_gain(repeats: int, size: int = 8) -> list[dict]:
    """``size`` trials of one program shape (FA MLP 784-W-W-10, batch 64, 3 folds x 5 epochs, different learning
    rates): trained one after another as lone trials, and as one group (``--trial-batch``) with vmapped runs (a
    study trains a group whose runs are mapped one after another as lone trials); compile excluded, fastest of the
    repeats, interleaved."""
    import numpy as np

    from models.train import Member, train_group

    dataset = load_dataset("mnist-5k")
    folds = make_folds(dataset, 3, 0)
    data = FoldData(jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train), folds.train_idx,
                    jnp.asarray(folds.val_idx), jnp.asarray(folds.val_mask))

    def member(config, seed):
        *runs, order = np.random.SeedSequence(seed).spawn(4)
        rng = np.random.default_rng(order)
        return Member(config, runs, [rng] * 3)

    rows = []
    for width in (64, 256):
        configs = [TrainConfig(rule="fa", hidden=(width, width), learning_rate=1e-3 * (1 + i), epochs=5,
                               activation_choices=("relu", "tanh"), optimizer_choices=("adam", "sgd"))
                   for i in range(size)]
        strategy = Plan("vmap")
        train_group([member(configs[0], 0)], data, 10, plan=strategy)  # compile the lone and the group's program
        train_group([member(c, i) for i, c in enumerate(configs)], data, 10, plan=strategy)
        lone, grouped = [], []
        for _ in range(max(2, repeats)):
            start = time.perf_counter()
            for i, c in enumerate(configs):
                train_group([member(c, i)], data, 10, plan=strategy)
            lone.append(time.perf_counter() - start)
            start = time.perf_counter()
            train_group([member(c, i) for i, c in enumerate(configs)], data, 10, plan=strategy)
            grouped.append(time.perf_counter() - start)
        row = {"width": width, "strategy": strategy, "lone": min(lone), "grouped": min(grouped), "load": load()}
        row["gain"] = row["lone"] / row["grouped"]
        rows.append(row)
        print(f"width {width} {strategy}: {size} lone {row['lone']:.2f}s, one group {row['grouped']:.2f}s "
              f"(x{row['gain']:.2f})", flush=True)
    return rows


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
    parser.add_argument("--quick", action="store_true", help="10-trial studies, one repeat: check the script works")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8, help="--trial-batch of the batched row")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="results/benchmarks/study.md")
    parser.add_argument("--targets", default="results/benchmarks/objective.md", help="file whose study section gets the targets")
    parser.add_argument("--cnn-study", action="store_true",
                        help="only the whole CNN study: 20 trials, 5 epochs, here and in --before")
    parser.add_argument("--before", type=Path,
                        help="a checkout of an earlier commit to run the cold studies (or the CNN study) in too")
    parser.add_argument("--pairs", type=int, default=1,
                        help="with --before: run each cold study this many times in each checkout, in turn")
    args = parser.parse_args(argv)
    if args.cnn_study:
        write_cnn_study(cnn_study(5 if args.quick else 20, args.before), Path("results/benchmarks/cnn_study.md"))
        write_cnn_study_section(Path("results/benchmarks/cnn_study.md"), Path(args.targets))
        return 0
    small, trials, repeats = (5, 10, 1) if args.quick else (20, args.trials, args.repeats)
    rows, warmup = studies(small, trials, args.batch, args.before, args.pairs)
    sharing = sharing_cost(repeats)
    batches = batch_gain(repeats, args.batch)
    scale = [] if args.quick else scaling(repeats)
    write(rows, warmup, sharing, batches, args.batch, scale, Path(args.output))
    write_targets(median_rows(rows), batches, args.batch, Path(args.targets))
    return 0


def commit(checkout: Path) -> str:
    done = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=checkout, capture_output=True, text=True)
    return done.stdout.strip()[:70] or "unknown commit"


def cnn_study(trials: int, before: Path | None) -> list[dict]:
    """A CNN study as a user runs it (``hpo.run --algo fa --model cnn --epochs 5``, mnist-5k, empty program
    store), in ``before`` first (an earlier checkout, e.g. ``git worktree add /tmp/before 79368d3``), then here."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label, checkout in (("before", before), ("after", ROOT)):
            if checkout is None:
                continue
            row = study_row(work, f"cnn-{label}", trials, work / f"store-{label}",
                            ["--model", "cnn", "--epochs", "5"], checkout.resolve())
            rows.append({**row, "checkout": label, "commit": commit(checkout)})
    return rows


def write_cnn_study(rows: list[dict], path: Path) -> None:
    lines = [
        "# A whole CNN study, before and after",
        "",
        f"Machine: {machine()}. Written by `python -m benchmarks.study --cnn-study --before DIR`: "
        "`python -m hpo.run --algo fa --model cnn --epochs 5` on mnist-5k (3 folds, TPE, median pruner, the "
        "default test retraining and report), each a fresh process with an empty program store, one after the "
        "other. Shares are of the process's wall time (train and compile: sums of the trials' "
        "`train_seconds` and `compile_seconds`; a checkout that did not record a pruned trial's seconds "
        "undercounts them).",
        "",
        "| checkout | commit | trials | wall s | trials/h | train | compile | complete / pruned | best CV | peak MB | load |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['checkout']} | {r['commit']} | {r['trials']} | {r['wall']:.1f} | "
                     f"{r['trials_per_hour']:.0f} | {r['train']:.0%} | {r['compile']:.0%} | {r['complete']} / "
                     f"{r['pruned']} | {r['best']:.4f} | {r['peak_mb']:.0f} | {r['load']} |")
    if len(rows) == 2:
        lines += ["", f"After / before wall time: x{rows[1]['wall'] / rows[0]['wall']:.2f} (trials per hour "
                      f"x{rows[1]['trials_per_hour'] / rows[0]['trials_per_hour']:.2f})."]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


STUDY_MARK = "<!-- study benchmarks below -->"  # benchmarks.objective keeps what follows it in results/benchmarks/objective.md
CNN_STUDY_MARK = "<!-- cnn study below -->"  # after the study targets: the whole CNN study, kept by both


def write_cnn_study_section(study: Path, path: Path) -> None:
    """The whole CNN study's table (``study``, as ``write_cnn_study`` wrote it) as the last section of ``path``
    (the targets file), after ``CNN_STUDY_MARK``; everything before it kept."""
    body = study.read_text().split("\n", 1)[1].strip("\n")  # without its title
    existing = path.read_text() if path.exists() else ""
    kept = existing[: existing.index(CNN_STUDY_MARK)] if CNN_STUDY_MARK in existing else existing
    section = [CNN_STUDY_MARK, "", "## A whole CNN study, before and after", "", body]
    path.write_text(kept.rstrip("\n") + "\n\n" + "\n".join(section) + "\n")
    print(f"wrote the CNN study to {path}")


def write_targets(rows: list[dict], batches: list[dict], size: int, path: Path) -> None:
    """The whole-study targets after ``STUDY_MARK`` in ``path``, the objective benchmark's part kept."""
    lines = [
        STUDY_MARK,
        "",
        "## Whole-study targets (`python -m benchmarks.study`)",
        "",
        f"Machine: {machine()}; load average in the last column. Details and the other "
        "tables: `results/benchmarks/study.md`.",
        "",
        "| target | run | measured | met | load |",
        "|---|---|---:|---|---|",
    ]
    for r in rows:
        if r["label"].startswith("before-"):
            lines.append(f"| (before: {r['commit'][:7]}) | {r['label']} | train {r['train']:.0%}, compile "
                         f"{r['compile']:.0%}, {r['wall']:.0f} s, {r['programs']} programs | | {r['load']} |")
    for r in rows:
        if r["label"].startswith("cold-") and r["options"] == "defaults":
            lines.append(f"| >= 60% of wall time training | {r['label']} | {r['train']:.0%} | "
                         f"{'yes' if r['train'] >= 0.6 else 'no'} | {r['load']} |")
            lines.append(f"| <= 15% of wall time compiling | {r['label']} | {r['compile']:.0%} | "
                         f"{'yes' if r['compile'] <= 0.15 else 'no'} | {r['load']} |")
    for r in rows:
        if "--compile-ahead" in r["options"]:
            lines.append(f"| (the same, programs compiled in the background: `--compile-ahead`) | {r['label']} | "
                         f"train {r['train']:.0%}, compile {r['compile']:.0%}, {r['wall']:.0f} s | "
                         f"{'yes' if r['train'] >= 0.6 and r['compile'] <= 0.15 else 'no'} | {r['load']} |")
    for r in rows:
        if r["label"].startswith("warm-"):
            lines.append(f"| (the same, store warmed by `hpo.warmup`) | {r['label']} | train {r['train']:.0%}, compile "
                         f"{r['compile']:.0%} | {'yes' if r['train'] >= 0.6 and r['compile'] <= 0.15 else 'no'} | "
                         f"{r['load']} |")
    lone = next((r for r in rows if r["label"].startswith("cold-") and r["options"] == "defaults"
                 and r["trials"] == max(x["trials"] for x in rows)), None)
    batched = next((r for r in rows if "--trial-batch" in r["options"]), None)
    if lone and batched:
        gain = batched["trials_per_hour"] / lone["trials_per_hour"]
        lines.append(f"| `--trial-batch {size}` >= 2x MLP trials per hour | {batched['label']} vs {lone['label']} | "
                     f"x{gain:.2f} | {'yes' if gain >= 2 else 'no'} | {batched['load']} |")
    for r in batches:
        lines.append(f"| (same-shape trials, compile excluded) | width {r['width']}, {r['strategy']} | x{r['gain']:.2f} | "
                     f"{'yes' if r['gain'] >= 2 else 'no'} | {r['load']} |")
    peak = max(r["peak_mb"] for r in rows)
    lines.append(f"| peak memory of a study process < 2 GB | every run above | {peak:.0f} MB | "
                 f"{'yes' if peak < 2048 else 'no'} | |")
    existing = path.read_text() if path.exists() else ""
    kept = existing[: existing.index(STUDY_MARK)].rstrip("\n") if STUDY_MARK in existing else existing.rstrip("\n")
    cnn_study = existing[existing.index(CNN_STUDY_MARK):].rstrip("\n") if CNN_STUDY_MARK in existing else ""
    path.write_text((kept + "\n\n" if kept else "") + "\n".join(lines) + "\n" + (f"\n{cnn_study}\n" if cnn_study else ""))
    print(f"wrote the targets to {path}")


def median_rows(rows: list[dict]) -> list[dict]:
    """One row per label: the one of median wall time among its repeats (the lower middle of an even count)."""
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    return [sorted(group, key=lambda r: r["wall"])[(len(group) - 1) // 2] for group in by_label.values()]


def write(rows: list[dict], warmup: dict, sharing: list[dict], batches: list[dict], size: int, scale: list[dict],
          path: Path) -> None:
    lines = [
        "# Study benchmark",
        "",
        f"Machine: {machine()}. Written by `python -m benchmarks.study`; load average (1/5/15 min) in each row.",
        "",
        "## Where a study's time goes: `python -m hpo.run --algo fa` on mnist-5k",
        "",
        "Each row is a fresh process with an empty program store (`warm`: a store filled by `python -m hpo.warmup`, "
        f"which took {warmup['wall']:.0f} s for {warmup['programs']} programs; `ahead`: `--compile-ahead`, the "
        "space's programs compiled in a background thread while trials train, a trial that needs one being "
        "compiled waiting for it, which counts as its compile seconds). Shares are of the process's wall time; `outside` "
        "is what no trial accounts for (start-up, data, the test-score retraining, reports).",
        "",
        "`before-*` rows ran in an earlier checkout (its commit below the table), in the same run. `padding`: the "
        "part of the training share that trials trained in a larger (wider or deeper) network's program spent on "
        "its padded units and switched-off layers (`models.sharing`; `in larger`: how many trials did).",
        "",
        "`background`: compiling done in background threads beside training (start-up trials, asked together: "
        "`hpo.study.objective.Objective.compiling_ahead`), not counted in the other shares. `#`: the repeat, where the "
        "cold studies ran several times in each checkout, in turn.",
        "",
        "| run | # | options | trials | wall s | trials/h | train | (padding) | compile | overhead | outside | "
        "background | programs | in larger | complete / pruned | peak MB | best CV | load |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r.get('repeat', '')} | `{r['options']}` | {r['trials']} | {r['wall']:.1f} | "
            f"{r['trials_per_hour']:.0f} | {r['train']:.0%} | {r['padding']:.0%} | {r['compile']:.0%} | "
            f"{r['overhead']:.0%} | {r['outside']:.0%} | {r.get('background', 0.0):.0%} | {r['programs']} | "
            f"{r['shared']} | {r['complete']} / {r['pruned']} | {r['peak_mb']:.0f} | {r['best']:.4f} | {r['load']} |"
        )
    medians = {r["label"]: r for r in median_rows(rows)}
    befores = [r for label, r in medians.items() if label.startswith("before-")]
    if befores:
        lines += ["", f"`before-*`: commit {befores[0]['commit']}. Median wall time of each side's repeats:"]
        for r in befores:
            label = r["label"].removeprefix("before-")
            after = medians.get(label)
            if after is not None:
                walls = {side: [x["wall"] for x in rows if x["label"] == name]
                         for side, name in (("before", r["label"]), ("after", label))}
                lines.append(f"- {label}: wall x{after['wall'] / r['wall']:.2f} of before (before "
                             f"{', '.join(f'{w:.1f}' for w in walls['before'])} s; after "
                             f"{', '.join(f'{w:.1f}' for w in walls['after'])} s), trials per hour "
                             f"x{after['trials_per_hour'] / r['trials_per_hour']:.2f}, compile "
                             f"{r['compile']:.0%} -> {after['compile']:.0%}, programs {r['programs']} -> "
                             f"{after['programs']}.")
    lines += [
        "",
        "## The price of sharing programs",
        "",
        "Seconds of one cross-validation (3 folds, FA, batch 64, Adam, compile excluded; medians, interleaved) "
        "with a program dedicated to one activation and optimiser, and with one program serving relu/tanh x "
        "adam/sgd, which computes the candidates the trial does not use. The MLP space shares programs, the CNN "
        "space does not.",
        "",
        "| network | dedicated s | shared s | shared / dedicated | load |",
        "|---|---:|---:|---:|---|",
    ]
    for r in sharing:
        lines.append(f"| {r['case']} | {r['dedicated']:.3f} | {r['shared']:.3f} | {r['ratio']:.3f} | {r['load']} |")
    lines += [
        "",
        "## Trial batches: one program for several trials",
        "",
        f"{size} trials of one program shape (FA MLP 784-W-W-10, batch 64, 3 folds x 5 epochs, learning rates "
        f"1e-3..{size}e-3), trained one after another as lone trials and as one group (`--trial-batch {size}`) "
        "with vmapped runs; compile excluded, fastest of the repeats, interleaved. (Where runs are mapped one "
        "after another, a study trains a group's trials as lone trials: `hpo.study.objective.Objective.programs_of`.)",
        "",
        "| width | runs mapped by | lone trials s | one group s | trials/h gained | load |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for r in batches:
        lines.append(f"| {r['width']} | {r['strategy']} | {r['lone']:.2f} | {r['grouped']:.2f} | x{r['gain']:.2f} | "
                     f"{r['load']} |")
    if scale:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())

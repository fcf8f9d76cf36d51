"""Kolen-Pollack's trade-off: its decay aligns B with W, and shrinks W too. A sweep at kp's best configuration.

    python -m benchmarks.kp_decay                 # train the sweep (about 40 min on 2 cores), then write its report
    python -m benchmarks.kp_decay --report        # the table and chart again, from the stored sweep alone

In our implementation, as in Akrout et al. (2019), W and B receive the same update and both decay, so W - B shrinks
by exactly ``(1 - p)`` per step (``p``: ``kp_decay_per_step``), and W decays as much. The sweep retrains the best
configuration of the committed Fashion-MNIST kp study (``studies/fashion-mnist.journal``) on the 60000 training
images at decays from none to the aligned regime, with ``--seeds`` seeds each, scores the 10000 test images, and
records each layer's final angle between W and B and the angle of its update to backprop's; bp trains the same
network with the same decay on W as the control. Nothing is tuned on the test split: the configuration is the
study's, the decays are fixed in advance.

The measured runs are stored in ``results/kp-decay/sweep.json`` (each seed's test score and final angles), the
sweep's storage; the table (``sweep.md``) and chart (``sweep.png``) are computed from it alone and regenerate byte
for byte.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import optuna

from hpo.config import StudyConfig
from hpo.data import load_dataset
from hpo.files import atomic_path, pyplot, write_text
from hpo.report.curves import layer_colour, layer_label, layer_order
from hpo.report.stats import summarize_scores, welch
from hpo.space.algorithms import suggest
from hpo.storage import open_storage
from hpo.study.objective import trial_seed
from models.train import Plan, fit_and_score

DECAYS = (0.0, 1.4e-5, 1e-4, 3.2e-4, 6.4e-4, 1.5e-3)  # per step; 1.4e-5 is what the kp study chose
RULES = ("kp", "bp")
OUTPUT = Path("results/kp-decay")


def best_configuration(storage: str, study_name: str) -> tuple[dict, int]:
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage, create=False))
    return study.best_params, study.best_trial.number


def train(args: argparse.Namespace, stored: Path) -> dict:
    """Every (decay, rule) of the sweep, each seed's test score and final angles per layer. Each finished run is
    written to ``stored`` at once, and a rerun trains only the runs it lacks: a stopped sweep resumes."""
    params, number = best_configuration(args.storage, args.study)
    dataset = load_dataset(args.dataset)
    study = StudyConfig(algo="kp", dataset=args.dataset, epochs=args.epochs)
    base = suggest(optuna.trial.FixedTrial(params), study, dataset)
    seeds = [trial_seed(1000 + i, number) for i in range(args.seeds)]  # fresh seeds, not the study's test seeds
    steps = args.epochs * math.ceil(len(dataset.y_train) / base.batch_size)
    sweep = {"study": args.study, "storage": args.storage, "trial": number, "params": params, "epochs": args.epochs,
             "steps": steps, "train_examples": len(dataset.y_train), "test_examples": len(dataset.y_test), "runs": []}
    if stored.exists():
        previous = json.loads(stored.read_text())
        if {k: v for k, v in previous.items() if k != "runs"} == {k: v for k, v in sweep.items() if k != "runs"}:
            sweep["runs"] = [r for r in previous["runs"] if r["seeds"] == seeds]
    done = {(r["decay_per_step"], r["rule"]) for r in sweep["runs"]}
    for decay in DECAYS:
        for rule in RULES:
            if (decay, rule) in done:
                continue
            config = dataclasses.replace(base, rule=rule, weight_decay=decay / base.learning_rate)
            result = fit_and_score(config, dataset, seeds, plan=Plan("vmap", diagnostics=True))
            angles = {name: [float(v) for v in values[-1]] for name, values in result.points.items()
                      if name.startswith(("wb_angle/", "update_angle/"))}
            sweep["runs"].append({"rule": rule, "decay_per_step": decay, "seeds": seeds,
                         "test": [float(s) for s in result.fold_scores], "final_angles": angles,
                         "w_minus_b_left": (1 - decay) ** steps})
            write_text(stored, json.dumps(sweep, indent=1, sort_keys=True) + "\n")
            print(f"decay {decay:g} {rule}: test {np.mean(result.fold_scores):.4f}", flush=True)
    return sweep


def angle_cell(run: dict, kind: str) -> str:
    """Mean over seeds of each layer's final angle, in network order: ``17.3 / 24.1``."""
    layers = sorted((name.split("/", 1)[1] for name in run["final_angles"] if name.startswith(f"{kind}/")),
                    key=layer_order)
    # the output layer's update is backprop's under every rule: its update angle says nothing
    shown = [layer for layer in layers if layer != "total" and not (kind == "update_angle" and layer == "output")]
    values = [np.nanmean(run["final_angles"][f"{kind}/{layer}"]) for layer in shown]
    return " / ".join(f"{v:.1f}" for v in values if np.isfinite(v))


def table(sweep: dict) -> str:
    runs = {(r["decay_per_step"], r["rule"]): r for r in sweep["runs"]}
    # runs are stored in the order they finished; the table and chart read them in the sweep's order
    lines = [
        "# Kolen-Pollack's decay: alignment against accuracy", "",
        f"`python -m benchmarks.kp_decay`: trial #{sweep['trial']} of `{sweep['study']}` ({sweep['storage']}), "
        f"retrained on the {sweep['train_examples']} training images for {sweep['epochs']} epochs ({sweep['steps']} "
        f"steps) with {len(sweep['runs'][0]['seeds'])} seeds per row, scored on the {sweep['test_examples']} test "
        "images. Test: mean ± 95% CI over seeds; kp vs bp: Welch's difference of the two rules at the same decay, and "
        "its p. W-B angle: each hidden and the output layer's final angle between W and B (mean over seeds); update "
        "vs bp: each hidden layer's update's angle to backprop's gradient.", "",
        "| decay per step | W - B left | kp test | bp test (same decay on W) | kp vs bp | p | kp W-B angle (deg) | "
        "kp update vs bp (deg) |",
        "|---:|---:|---|---|---|---:|---|---|",
    ]
    for decay in DECAYS:
        kp, bp = runs[decay, "kp"], runs[decay, "bp"]
        a, b = summarize_scores(kp["test"]), summarize_scores(bp["test"])
        comparison = welch(kp["test"], bp["test"])
        lines.append(
            f"| {decay:g} | {kp['w_minus_b_left']:.0%} | {a.mean:.4f} ± {a.ci95:.4f} | {b.mean:.4f} ± {b.ci95:.4f} | "
            f"{comparison.delta:+.4f} | {comparison.p:.3f} | {angle_cell(kp, 'wb_angle')} | "
            f"{angle_cell(kp, 'update_angle')} |"
        )
    return "\n".join(lines) + "\n"


def chart(sweep: dict, path: Path) -> None:
    plt = pyplot()
    runs = {(r["decay_per_step"], r["rule"]): r for r in sweep["runs"]}
    x = np.arange(len(DECAYS))
    fig, (score_ax, angle_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for offset, (rule, colour) in zip((-0.08, 0.08), (("kp", "#2a9d8f"), ("bp", "#264653"))):
        means = [summarize_scores(runs[d, rule]["test"]) for d in DECAYS]
        score_ax.errorbar(x + offset, [m.mean for m in means], yerr=[m.ci95 for m in means], fmt="o-", capsize=3,
                          color=colour, label=f"{rule}" + (" (same decay on W)" if rule == "bp" else ""))
    score_ax.set_ylabel("test accuracy (mean ± 95% CI over seeds)")
    score_ax.legend(fontsize=8)
    layers = sorted({n.split("/", 1)[1] for r in sweep["runs"] for n in r["final_angles"] if n.startswith("wb_angle/")}
                    - {"total"}, key=layer_order)
    for layer in layers:
        values = [np.nanmean(runs[d, "kp"]["final_angles"][f"wb_angle/{layer}"]) for d in DECAYS]
        angle_ax.plot(x, values, "o-", color=layer_colour(layer), label=layer_label(layer))
    angle_ax.set_ylabel("kp: final angle between W and B (degrees)")
    angle_ax.legend(fontsize=8)
    for ax in (score_ax, angle_ax):
        ax.set_xticks(x, [f"{d:g}\n({runs[d, 'kp']['w_minus_b_left']:.0%} left)" for d in DECAYS], fontsize=8)
        ax.set_xlabel("decay per step (share of W - B left after training)")
        ax.grid(alpha=0.3)
    fig.suptitle("Kolen-Pollack's decay aligns B with W and shrinks W: accuracy against alignment", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="only the table and chart, from the stored sweep")
    parser.add_argument("--storage", default="studies/fashion-mnist.journal")
    parser.add_argument("--study", default="fashion-mnist-mlp-kp")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(args.output)
    stored = folder / "sweep.json"
    if not args.report:
        train(args, stored)
    sweep = json.loads(stored.read_text())
    write_text(folder / "sweep.md", table(sweep))
    chart(sweep, folder / "sweep.png")
    print(table(sweep))
    return 0


if __name__ == "__main__":
    sys.exit(main())

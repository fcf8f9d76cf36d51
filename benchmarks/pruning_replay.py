"""Which pruning protocol reaches a full study's answer cheapest: a replay over a committed full-protocol grid.

    python -m benchmarks.pruning_replay                                 # studies/fashion-mnist.journal
    python -m benchmarks.pruning_replay --storage studies/fashion-mnist.journal \
        --output results/benchmarks/pruning_replay.md

Each study's trials are replayed in their recorded order under a protocol that trains folds one after another
(fold-major) and asks asynchronous successive halving at *rungs* counted in fold-epochs (fold 0's epochs 1..E are
steps 1..E, fold 1's are E+1..2E, ...): at a rung a trial goes on only if its value there is in the top ``1/eta``
of every value recorded at that rung so far (Optuna's ``SuccessiveHalvingPruner`` rule, the first trials at a rung
going on only if best). A rung at the end of a fold compares the mean of the folds finished so far. Random start-up
trials are spared up to ``spare`` fold-epochs (all of fold 0 by default: their spread is read there).

What a trial's value is at a step comes from its stored per-fold curves (complete trials) or its reported per-epoch
means over folds (trials the median pruner stopped: taken as fold 0's curve, folds differ by about 0.1 point); a
trial the replay would train past what was recorded is counted as stopped where its record ends (``unknown``).
Cost is each trial's fold-epochs times its own measured seconds per fold-epoch.

A replay is not a study: TPE would propose other trials once pruning changes what it sees. It ranks protocols and
bounds what they save; the rerun grid (``studies/fashion-mnist-asha.toml``) is the measurement.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from hpo.record import decode_curves, read_study, read_trial
from hpo.storage import open_storage


@dataclass(frozen=True)
class Protocol:
    name: str
    rungs: tuple[tuple[int, int], ...]  # (fold-epoch step, eta): at each, keep the top 1/eta; E stands for 10
    spare: int = 10  # start-up trials are never stopped before this many fold-epochs (10: the first fold's end)


@dataclass
class Replayed:
    number: int
    startup: bool
    fold_curves: np.ndarray  # (folds, epochs), NaN where unrecorded
    seconds_per_fold_epoch: float
    complete: bool  # complete in the full protocol


def load_trials(study: optuna.Study) -> list[Replayed]:
    settings = read_study(study)
    folds, epochs = settings.folds, settings.epochs
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            continue
        record = read_trial(t)
        curves = np.full((folds, epochs), np.nan)
        if record.curves:
            point_epochs, series = decode_curves(record.curves)
            at_end = np.isclose(point_epochs, np.round(point_epochs))
            values = series["val_score"][:, at_end]
            curves[:, : values.shape[1]] = values
            trained = values.shape[1] * folds
        else:
            steps = sorted(t.intermediate_values)
            for step in steps:
                curves[:, step] = t.intermediate_values[step]
            trained = len(steps) * folds
        wall = record.wall_seconds or float("nan")
        rows.append(Replayed(t.number, bool(record.startup), curves, wall / max(trained, 1),
                             t.state == optuna.trial.TrialState.COMPLETE))
    return rows


def value_at(trial: Replayed, step: int, epochs: int) -> float:
    """The trial's value after ``step`` fold-epochs: the running fold's score, or at a fold's end the mean of the
    folds finished."""
    fold, epoch = divmod(step - 1, epochs)
    if epoch == epochs - 1:
        return float(np.mean(trial.fold_curves[: fold + 1, -1]))
    return float(trial.fold_curves[fold, epoch])


def replay(trials: list[Replayed], protocol: Protocol, folds: int, epochs: int) -> dict:
    rungs = [(epochs * step // 10 if step % 10 == 0 else step, eta) for step, eta in protocol.rungs]
    spare = epochs * protocol.spare // 10 if protocol.spare % 10 == 0 else protocol.spare
    recorded: dict[int, list[float]] = {step: [] for step, _ in rungs}
    full_steps = folds * epochs
    cost = full_cost = 0.0
    finished: list[tuple[float, int]] = []
    unknown = 0
    for trial in trials:
        full_cost += full_steps * trial.seconds_per_fold_epoch
        stopped_at = full_steps
        for rung, eta in rungs:
            value = value_at(trial, rung, epochs)
            if math.isnan(value):  # the full protocol stopped it before: we cannot know, count it stopped here
                unknown += 1
                stopped_at = rung
                break
            competing = sorted(recorded[rung] + [value], reverse=True)
            recorded[rung].append(value)
            keep = max(len(competing) // eta, 1)
            spared = trial.startup and rung < spare
            if value < competing[keep - 1] and not spared:
                stopped_at = rung
                break
        cost += stopped_at * trial.seconds_per_fold_epoch
        if stopped_at == full_steps and trial.complete:
            finished.append((float(np.mean(trial.fold_curves[:, -1])), trial.number))
    best_value, best_number = max(finished) if finished else (float("nan"), -1)
    return {"cost": cost, "full_cost": full_cost, "best": best_value, "best_trial": best_number,
            "complete": len(finished), "unknown": unknown}


PROTOCOLS = (
    Protocol("fold-epochs 1, 3, E; a third kept at each", ((1, 3), (3, 3), (10, 3))),
    Protocol("fold-epochs 1, 3, E; a third; start-up spared to 3", ((1, 3), (3, 3), (10, 3)), spare=3),
    Protocol("fold-epochs 1, 3, E, 2E; a third", ((1, 3), (3, 3), (10, 3), (20, 3))),
    Protocol("fold-epochs 1, 3, E; half kept at each", ((1, 2), (3, 2), (10, 2))),
    Protocol("fold-epochs 3 (half), E (a third): --pruner halving", ((3, 2), (10, 3))),
    Protocol("fold-epochs 2, E; a third", ((2, 3), (10, 3))),
    Protocol("fold-epochs E; a third", ((10, 3),)),
)


def epoch_major(trials: list[Replayed], folds: int, epochs: int) -> dict:
    """Epochs trained over all folds at once, rungs at epochs 1, 3, 9, top third kept, the 10 start-up trials
    spared: epoch-level halving alone, for comparison with the fold-major protocols."""
    recorded: dict[int, list[float]] = {1: [], 3: [], 9: []}
    cost = full_cost = 0.0
    finished = []
    for trial in trials:
        full_cost += folds * epochs * trial.seconds_per_fold_epoch
        stopped = epochs
        for rung in (1, 3, 9):
            value = float(np.mean(trial.fold_curves[:, rung - 1]))
            if math.isnan(value):
                stopped = rung
                break
            competing = sorted(recorded[rung] + [value], reverse=True)
            recorded[rung].append(value)
            if value < competing[max(len(competing) // 3, 1) - 1] and not trial.startup:
                stopped = rung
                break
        cost += stopped * folds * trial.seconds_per_fold_epoch
        if stopped == epochs and trial.complete:
            finished.append((float(np.mean(trial.fold_curves[:, -1])), trial.number))
    best_value, best_number = max(finished)
    return {"cost": cost, "full_cost": full_cost, "best": best_value, "best_trial": best_number,
            "complete": len(finished), "unknown": 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="studies/fashion-mnist.journal")
    parser.add_argument("--output", default="results/benchmarks/pruning_replay.md")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(args.storage)
    lines = [
        "# Pruning protocols replayed over a full-protocol grid", "",
        f"`python -m benchmarks.pruning_replay --storage {args.storage}`: each study's recorded trials in their order; "
        "cost = fold-epochs x each trial's measured seconds per fold-epoch, as a share of the full protocol's; "
        "best = the best CV among the trials the protocol lets finish, and the trial it is (full: the study's "
        "best).", "",
        "| protocol (rungs in fold-epochs, E = the first fold's end) | cost (all studies) | studies whose best trial "
        "is kept | worst loss of best CV | unknown |",
        "|---|---:|---:|---:|---:|",
    ]
    summaries = optuna.get_all_study_summaries(storage)
    loaded = []
    for summary in summaries:
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        settings = read_study(study)
        loaded.append((study, settings.folds, settings.epochs, load_trials(study)))
    for protocol in (None, *PROTOCOLS):
        cost = full = 0.0
        kept, worst, unknown = 0, 0.0, 0
        for study, folds, epochs, trials in loaded:
            result = (epoch_major(trials, folds, epochs) if protocol is None
                      else replay(trials, protocol, folds, epochs))
            cost += result["cost"]
            full += result["full_cost"]
            kept += result["best_trial"] == study.best_trial.number
            worst = max(worst, study.best_value - result["best"])
            unknown += result["unknown"]
        name = "epochs 1, 3, 9 over all folds at once; a third" if protocol is None else protocol.name
        lines.append(f"| {name} | {cost / full:.0%} | {kept} / {len(loaded)} | {worst:.4f} | {unknown} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

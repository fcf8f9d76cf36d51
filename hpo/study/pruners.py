"""The pruners a study can use (``--pruner``), and successive halving over fold-epochs (``halving``).

``halving`` stops hopeless trials on two kinds of evidence at once, epochs and folds. A trial trains its folds one
after another (fold-major), so its budget is counted in *fold-epochs*: fold 1's epochs are steps 1..E, fold 2's
E+1..2E, and so on, and it reports the running fold's validation score at every step. At each *rung* it goes on only
if its value there is among the top ``1 / reduction`` of the values every trial of the study has reported at that
step so far: asynchronous successive halving (Li et al. 2020, as Optuna's ``SuccessiveHalvingPruner``, whose rule
for the first trials at a rung it keeps), with rungs placed where the evidence is comparable: every trial trains
the same first fold first, so values at a step are the same measurement for every trial. The rungs are after 3
epochs, keeping the top half, and at the end of the first fold, keeping the top third; a trial that passes them
trains every fold. ``halving-half`` keeps the top half at both rungs: the third kept at the fold's end is a noisy cut
where many configurations score within half a point, and TPE counts a stopped trial among the bad ones, so under
``halving`` it proposed wide, deep networks far less often than the full protocol did (``docs/performance.md``).

Why these rungs, measured on the committed 8-rule Fashion-MNIST grid (``studies/fashion-mnist.journal``): the rank
correlation of a complete trial's first-fold score with its final CV score is 0.52-0.81 after 1 or 3 epochs and
0.82-0.95 at the end of the first fold. Each study's best trial ranked up to 19th of 32 after one epoch (brsf),
so an epoch-1 rung that keeps a third or a half would stop it; after 3 epochs the best ranked within the top half
in all 8 studies. A grid run with rungs at 1, 3 and the fold's end, a third kept at each, chose a bp configuration
that scored 0.887 on test against the full protocol's 0.892 (``docs/performance.md``); early rungs keep half.
A rung inside a later fold would stop a strong trial after most of its cost. Optuna's Wilcoxon pruner cannot stop
a trial of 3 folds: 2 paired differences give p >= 0.25.

The random start-up trials are the spread's population (``hpo.study.population``): ``halving`` never stops one
before the end of its first fold, so every one has the same measurement there, and the spread is read at that step
for every rule (``hpo.record.startup_spread``); they meet the last rung like any other trial.
"""

from __future__ import annotations

import math
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.config import StudyConfig
from hpo.record import HALVING_PRUNERS, read_trial
from hpo.study.population import SparingHyperbandPruner, SparingMedianPruner, SparingWilcoxonPruner

EARLY_REDUCTION = 2  # keep the top half after 3 epochs, where the evidence is weak
REDUCTION = 3  # keep the top third at the first fold's end (Optuna's default reduction factor)
EARLY_RUNG = 3  # epochs of the first fold after which a trial is first judged
COMPETING = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)  # a failed trial's values are not evidence


FOLD_END_REDUCTION = {"halving": REDUCTION, "halving-half": EARLY_REDUCTION}  # per halving pruner


def halving_rungs(epochs: int, fold_end_reduction: int = REDUCTION) -> dict[int, int]:
    """The fold-epoch steps at which a halving pruner judges a trial, each with the reduction it keeps the top
    ``1 / reduction`` by: 3 epochs (a half) and the end of the first fold (a third, or ``fold_end_reduction``)."""
    rungs = {EARLY_RUNG: EARLY_REDUCTION} if epochs > EARLY_RUNG else {}
    return {**rungs, epochs: fold_end_reduction}


class HalvingPruner(optuna.pruners.BasePruner):
    """Asynchronous successive halving at explicit rungs (step -> reduction), sparing start-up trials before
    ``spare_until``.

    At a rung step a trial goes on if its value is at least the ``len(values) // reduction``-th best of the values
    reported at that step by the study's trials (itself included; the best only, while fewer than ``reduction``
    have reported there). The values are read from the trials' intermediate values, so every worker of a study,
    on any machine, judges against the same evidence, and nothing beyond what Optuna stores is written.
    """

    def __init__(self, rungs: dict[int, int], spare_until: int = 0):
        if not rungs or any(step < 1 or reduction < 2 for step, reduction in rungs.items()):
            raise ValueError(f"rungs must map steps >= 1 to reductions >= 2, got {rungs!r}")
        self.rungs = dict(rungs)
        self.spare_until = spare_until

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step not in self.rungs:
            return False
        if step < self.spare_until and read_trial(trial).startup:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        values = [value] + [
            t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=COMPETING)
            if t.number != trial.number and step in t.intermediate_values
            and not math.isnan(t.intermediate_values[step])
        ]
        kept = max(len(values) // self.rungs[step], 1)
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        threshold = sorted(values, reverse=maximize)[kept - 1]
        return value < threshold if maximize else value > threshold


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """The pruner of ``config``; none stops a random start-up trial before its spread is read
    (``hpo.study.population.SparesStartup``, ``HalvingPruner.spare_until``)."""
    with warnings.catch_warnings():  # WilcoxonPruner is "experimental": chosen knowingly, its use is tested
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if config.pruner in FOLD_END_REDUCTION:
            rungs = halving_rungs(config.epochs, FOLD_END_REDUCTION[config.pruner])
            return HalvingPruner(rungs, spare_until=config.epochs)
        return {
            "median": lambda: SparingMedianPruner(n_startup_trials=5, n_warmup_steps=max(1, config.epochs // 3)),
            "hyperband": lambda: SparingHyperbandPruner(min_resource=1, max_resource=config.epochs),
            "wilcoxon": lambda: SparingWilcoxonPruner(p_threshold=0.1),
            "none": optuna.pruners.NopPruner,
        }[config.pruner]()


FOLD_MAJOR = (*HALVING_PRUNERS, "wilcoxon")  # pruners whose trials train their folds one after another


def trains_fold_major(config: StudyConfig) -> bool:
    """Whether ``config``'s trials train one fold after another (``Objective.run_folds_in_turn``)."""
    return config.pruner in FOLD_MAJOR

"""Marking the trials a study's spread (mean, std, worst across trials) is computed over: its random start-up trials
(read back by ``hpo.record.startup_spread``), and pruners that never stop one.

Why not every complete trial: the pruner stops trials at very different rates per rule (on mnist-5k MLPs, bp
had 43 of 50 trials pruned, fa 20), so "the complete trials" of two rules are different populations, each
filtered by how the rule's own earlier trials went; a rule pruned more often looks more reliable than it is.

The start-up trials are the same experiment for every rule: the sampler's first ``STARTUP_TRIALS`` proposals,
drawn at random from the rule's search space before Bayesian optimisation starts (TPE, GP and CMA-ES are
given that many start-up trials; the random sampler draws every trial so), and each trained for the full
budget, because the pruner never stops one (``SparesStartup``). Their scores are a sample of "how well does
this rule do for a random configuration of its space" of the same size for every rule. Known-good starting
configurations that a study enqueues first (segregated dendrites' paper network) are not random and are
left out; the sampler's start-up phase is lengthened by their number, so every rule still gets
``STARTUP_TRIALS`` random ones.

A trial is marked (user attribute ``startup``) when it starts, if fewer than ``n_startup`` trials numbered
below it have not failed: it was then proposed by the random start-up phase (which counts finished trials,
never more than those), whatever other workers do. A retried trial keeps its original's mark. Start-up
trials that end without a score (diverged, or no valid architecture) stay in the population as
``unscored``. Studies run before this existed carry no mark: their start-up trials are taken to be the first
``STARTUP_TRIALS`` that did not fail (what the random phase of one worker proposed; an enqueued starting point
was one of them then), and the median pruner could stop those after its first five, so their pruned ones are
counted as unscored too.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.record import STARTUP_TRIALS, read_trial, write_trial
from hpo.space.algorithms import starting_points
from hpo.space.training import StudySettings


def startup_length(study: StudySettings) -> int:
    """Start-up trials the sampler of ``study`` is given: the random ones plus the starting points it enqueues
    before them (``hpo.space.algorithms.starting_points``)."""
    return STARTUP_TRIALS + len(starting_points(study))


def is_startup(trials: list[FrozenTrial], number: int, n_startup: int, inherited: bool = False) -> bool:
    """Whether trial ``number`` of ``trials`` (the study's trials, any state) is a start-up trial."""
    return inherited or sum(t.number < number and t.state != TrialState.FAIL for t in trials) < n_startup


def mark_startup(trial: optuna.Trial, n_startup: int) -> None:
    """Mark ``trial`` as a start-up trial if it is one (call before it samples anything)."""
    trials = trial.study.get_trials(deepcopy=False)
    if is_startup(trials, trial.number, n_startup, bool(read_trial(trial).startup)):
        write_trial(trial, startup=True)


class SparesStartup(optuna.pruners.BasePruner):
    """Mixin for an Optuna pruner: never stop a start-up trial, ask the pruner about every other one.

    A mixin rather than a wrapper, so the pruner keeps its class: Optuna shows a sampler only the trials of the
    current bracket when ``isinstance(study.pruner, HyperbandPruner)``.
    """

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if read_trial(trial).startup:
            return False
        return super().prune(study, trial)  # type: ignore[safe-super]  # the pruner class mixed in after this one


class SparingMedianPruner(SparesStartup, optuna.pruners.MedianPruner):
    """Optuna's median pruner that never stops a start-up trial."""


class SparingHyperbandPruner(SparesStartup, optuna.pruners.HyperbandPruner):
    """Optuna's Hyperband pruner that never stops a start-up trial."""


class SparingWilcoxonPruner(SparesStartup, optuna.pruners.WilcoxonPruner):
    """Optuna's Wilcoxon pruner that never stops a start-up trial."""

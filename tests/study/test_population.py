"""The spread's population (hpo.study.population): random start-up trials, the same number for every rule, never pruned."""

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpo.config import StudyConfig
from hpo.record import STARTUP_TRIALS, startup_spread
from hpo.study.population import SparesStartup, is_startup, mark_startup, startup_length
from hpo.study.pruners import make_pruner
from hpo.study.runner import make_sampler


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


class SparingAlwaysPrune(SparesStartup, AlwaysPrune):
    pass


def run_toy_study(pruner, n_trials=14):
    study = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        mark_startup(trial, STARTUP_TRIALS)
        x = trial.suggest_float("x", 0, 1)
        trial.report(x, 0)
        if trial.should_prune():
            raise optuna.TrialPruned()
        return x

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=n_trials)
    return study


def test_startup_trials_are_never_pruned_and_the_rest_are_asked():
    study = run_toy_study(SparingAlwaysPrune())
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * STARTUP_TRIALS + [TrialState.PRUNED] * 4
    assert [bool(t.user_attrs.get("startup")) for t in study.trials] == [True] * STARTUP_TRIALS + [False] * 4
    spread = startup_spread(study.trials)
    assert spread.marked and spread.n == STARTUP_TRIALS and spread.unscored == 0
    np.testing.assert_allclose(spread.scores, [t.value for t in study.trials[:STARTUP_TRIALS]])


def test_every_study_pruner_spares_startup_trials_and_keeps_its_class():
    for name, cls in (("median", optuna.pruners.MedianPruner), ("hyperband", optuna.pruners.HyperbandPruner),
                      ("wilcoxon", optuna.pruners.WilcoxonPruner)):
        pruner = make_pruner(StudyConfig(pruner=name, epochs=3))
        assert isinstance(pruner, cls) and isinstance(pruner, SparesStartup)  # Hyperband's bracket filter needs the class
        startup = create_trial(state=TrialState.RUNNING, intermediate_values={0: 0.0}, user_attrs={"startup": True})
        assert pruner.prune(optuna.create_study(), startup) is False


def test_every_sampler_starts_with_the_same_random_trials_for_every_rule():
    for algo in ("bp", "fa", "kp"):
        assert make_sampler(StudyConfig(algo=algo))._n_startup_trials == STARTUP_TRIALS
    # segregated dendrites enqueues the paper's network first: its start-up is one longer, so 10 are random
    assert startup_length(StudyConfig(algo="sd")) == STARTUP_TRIALS + 1
    assert make_sampler(StudyConfig(algo="sd"))._n_startup_trials == STARTUP_TRIALS + 1
    assert make_sampler(StudyConfig(sampler="cmaes"))._n_startup_trials == STARTUP_TRIALS


def test_a_trial_is_startup_while_fewer_than_n_trials_below_it_can_count():
    def trials(states):
        return [create_trial(state=s, value=0.5 if s == TrialState.COMPLETE else None) for s in states]

    for number, trial in enumerate(ts := trials([TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING])):
        trial.number = number
    assert is_startup(ts, 3, 3)  # the failed trial #1 does not count: 2 below
    assert not is_startup(ts, 3, 2)
    assert is_startup(ts, 3, 2, inherited=True)  # a retry keeps its original's mark


def legacy_study(states, values, starting_point=False):
    """Trials as a study run before the start-up mark leaves them."""
    trials = []
    for number, (state, value) in enumerate(zip(states, values)):
        trial = create_trial(
            state=state, value=value if state == TrialState.COMPLETE else None,
            params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
            user_attrs={"starting_point": True} if starting_point and number == 0 else {},
        )
        trial.number = number
        trials.append(trial)
    return trials


def test_a_study_before_the_mark_takes_its_first_ten_finished_trials():
    c, p, f = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
    states = [c, c, f, c, c, c, p, c, p, c, c, c, c, c]
    values = [float(i) / 20 for i in range(len(states))]
    spread = startup_spread(legacy_study(states, values))
    assert not spread.marked
    # the first ten trials that did not fail: #0, 1, 3-10; #6 and #8 were pruned (unscored)
    assert spread.unscored == 2
    np.testing.assert_allclose(spread.scores, [values[i] for i in (0, 1, 3, 4, 5, 7, 9, 10)])
    # an enqueued starting point was one of the ten then, and is not random: left out
    with_start = startup_spread(legacy_study(states, values, starting_point=True))
    np.testing.assert_allclose(with_start.scores, [values[i] for i in (1, 3, 4, 5, 7, 9, 10)])


def test_startup_trials_without_a_score_are_counted_not_hidden():
    trials = legacy_study([TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE], [0.9, None, 0.7])
    for trial in trials:
        trial.user_attrs["startup"] = True  # e.g. #1 diverged: pruned with a reason, not by the pruner
    spread = startup_spread(trials)
    assert spread.marked and spread.unscored == 1
    assert spread.scores.tolist() == pytest.approx([0.9, 0.7])

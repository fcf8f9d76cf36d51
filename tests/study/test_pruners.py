"""--pruner halving: successive halving over fold-epochs, its rungs, its sparing of start-up trials, end to end."""

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from hpo.config import StudyConfig
from hpo.record import read_study, read_trial, spread_step, startup_spread
from hpo.run import main
from hpo.storage import open_storage
from hpo.study.pruners import HalvingPruner, halving_rungs, make_pruner


def study_with(values_at_step, direction="maximize"):
    """A study whose finished trials reported ``value`` at ``step`` (one trial per (step, value))."""
    study = optuna.create_study(direction=direction)
    for step, value in values_at_step:
        study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={step: value}))
    return study


def running(step, value, startup=False):
    trial = create_trial(state=TrialState.RUNNING, intermediate_values={step: value},
                         user_attrs={"startup": True} if startup else {})
    trial.number = 10_000
    return trial


def test_rungs_are_three_epochs_keeping_half_and_the_first_fold_keeping_a_third():
    assert halving_rungs(10) == {3: 2, 10: 3}
    assert halving_rungs(4) == {3: 2, 4: 3}
    assert halving_rungs(3) == {3: 3}
    assert halving_rungs(1) == {1: 3}
    pruner = make_pruner(StudyConfig(pruner="halving", epochs=10))
    assert isinstance(pruner, HalvingPruner) and pruner.rungs == {3: 2, 10: 3} and pruner.spare_until == 10
    gentle = make_pruner(StudyConfig(pruner="halving-half", epochs=10))  # the top half at the fold's end too
    assert isinstance(gentle, HalvingPruner) and gentle.rungs == {3: 2, 10: 2} and gentle.spare_until == 10


def test_a_trial_goes_on_only_in_the_top_third_of_the_values_at_its_rung():
    pruner = HalvingPruner({1: 3, 3: 3, 10: 3})
    # 8 values at step 3, with the trial's own: 9 // 3 = 3 go on: the trial must be at least the 3rd best (0.7)
    study = study_with([(3, v) for v in (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.8, 0.9)])
    assert not pruner.prune(study, running(3, 0.7))
    assert pruner.prune(study, running(3, 0.69))
    assert not pruner.prune(study, running(3, 0.75))
    # off a rung nothing is judged; values at other steps are not evidence at this one
    assert not pruner.prune(study, running(4, 0.0))
    assert not pruner.prune(study_with([(1, 0.9)] * 5), running(3, 0.0))  # the only value at step 3: the best
    # fewer than 3 values at a rung: only the best goes on (Optuna's rule for the first trials at a rung)
    assert pruner.prune(study_with([(1, 0.5)]), running(1, 0.4))
    assert not pruner.prune(study_with([(1, 0.5)]), running(1, 0.5))
    assert pruner.prune(study, running(3, float("nan")))
    half = HalvingPruner({3: 2})  # 9 // 2 = 4 go on: the 4th best (0.5) is the bar
    assert not half.prune(study, running(3, 0.5)) and half.prune(study, running(3, 0.45))


def test_minimised_metrics_keep_the_smallest():
    study = study_with([(1, v) for v in (1.0, 2.0, 3.0, 4.0, 5.0)], direction="minimize")
    pruner = HalvingPruner({1: 3})
    assert not pruner.prune(study, running(1, 2.0))  # 6 // 3 = 2: the 2nd smallest goes on
    assert pruner.prune(study, running(1, 2.5))


def test_startup_trials_are_spared_until_the_first_fold_ends_and_judged_there():
    pruner = make_pruner(StudyConfig(pruner="halving", epochs=10))
    study = study_with([(3, 0.9), (3, 0.8), (10, 0.9), (10, 0.95), (10, 0.99)])
    assert not pruner.prune(study, running(3, 0.1, startup=True))
    assert pruner.prune(study, running(10, 0.1, startup=True))
    assert pruner.prune(study, running(3, 0.1))
    assert not pruner.prune(study, running(1, 0.1))  # no rung at one epoch


@pytest.mark.parametrize("name", ["halving", "halving-half"])
def test_a_halving_study_trains_folds_in_turn_and_stops_trials_only_at_its_rungs(tmp_path, name):
    storage = tmp_path / "s.journal"
    argv = ["--dataset", "digits", "--algo", "fa", "--folds", "3", "--epochs", "5", "--trials", "16",
            "--pruner", name, "--test-seeds", "1", "--storage", str(storage), "--workers", "1",
            "--results-dir", str(tmp_path / "r"), "--cache-dir", "none"]
    assert main(argv) == 0
    study = optuna.load_study(study_name="digits-mlp-fa", storage=open_storage(str(storage), create=False))
    assert read_study(study).pruner == name and spread_step(read_study(study)) == 5
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert complete and pruned
    for trial in complete:  # every fold-epoch reported, fold by fold; the value is the mean of the folds' ends
        assert sorted(trial.intermediate_values) == list(range(1, 16))
        scores = read_trial(trial).fold_scores
        assert [trial.intermediate_values[5 * f] for f in (1, 2, 3)] == pytest.approx(scores, abs=1e-6)
        assert trial.value == pytest.approx(np.mean(scores))
    for trial in pruned:  # stopped at a rung, start-up trials only at the first fold's end
        assert trial.last_step in (3, 5), trial.intermediate_values
        assert "of fold 1 of 3" in read_trial(trial).pruned_reason
        if read_trial(trial).startup:
            assert trial.last_step == 5
    spread = startup_spread(trials, 5)  # every start-up trial has its first fold's end
    assert spread.n == 10 and spread.unscored == 0
    startup = [t for t in trials if read_trial(t).startup]
    assert spread.scores.tolist() == [t.intermediate_values[5] for t in startup]
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "start-up read at the first fold's end (epoch 5)" in summary


def test_a_study_keeps_the_pruner_it_was_created_with(tmp_path, capsys):
    storage = tmp_path / "s.journal"
    common = ["--dataset", "digits", "--algo", "bp", "--epochs", "1", "--trials", "1", "--test-seeds", "1",
              "--storage", str(storage), "--results-dir", str(tmp_path / "r"), "--cache-dir", "none", "--workers", "1"]
    assert main([*common, "--pruner", "halving"]) == 0
    capsys.readouterr()
    assert main([*common, "--pruner", "median", "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was created with pruner='halving', got pruner='median'" in err

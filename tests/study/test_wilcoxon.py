"""--pruner wilcoxon as Optuna's WilcoxonPruner intends: one reported value per instance (a fold), paired across
trials by step (the fold's index), the folds trained one after another so a trial can stop between them."""

import numpy as np
import optuna
import pytest

from hpo.record import read_trial
from hpo.run import main
from hpo.storage import open_storage


def test_a_trial_reports_its_folds_with_their_index_as_step(tmp_path):
    storage = tmp_path / "s.journal"
    argv = ["--dataset", "digits", "--algo", "bp", "--folds", "4", "--epochs", "1", "--trials", "4",
            "--pruner", "wilcoxon", "--test-seeds", "1", "--storage", str(storage),
            "--results-dir", str(tmp_path / "r"), "--cache-dir", "none"]
    assert main(argv) == 0
    study = optuna.load_study(study_name="digits-mlp-bp", storage=open_storage(str(storage), create=False))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert complete
    for trial in complete:
        scores = read_trial(trial).fold_scores
        assert sorted(trial.intermediate_values) == [0, 1, 2, 3]  # steps are folds, not epochs
        assert [trial.intermediate_values[i] for i in range(4)] == scores
        assert trial.value == pytest.approx(np.mean(scores))
        curves = read_trial(trial).curves
        assert len(curves["series"]["val_score"]) == 4  # every fold's curve, as a joint run stores them
    for trial in study.get_trials(states=(optuna.trial.TrialState.PRUNED,)):
        assert "after fold" in read_trial(trial).pruned_reason

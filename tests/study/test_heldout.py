"""hpo.study.heldout: the seeds of the test retraining, the stored attribute in both formats, a diverged retraining."""

import numpy as np
import pytest

from hpo.config import StudyConfig
from hpo.data import load_dataset
from hpo.record import TestScores
from hpo.report.comparison import score_columns
from hpo.study import heldout
from hpo.study.heldout import retrain_and_score, retraining_seeds
from hpo.study.objective import trial_seed
from models.train import DivergedError


def test_seed_zero_is_the_trials_own_and_more_seeds_keep_the_first():
    five = retraining_seeds(3, 17, 5)
    assert five[0] == trial_seed(3, 17) and retraining_seeds(3, 17, 1) == [trial_seed(3, 17)]
    assert retraining_seeds(3, 17, 2) == five[:2] and len(set(five)) == 5
    assert retraining_seeds(3, 18, 5)[1:] != five[1:] and retraining_seeds(4, 17, 5)[1:] != five[1:]


def test_both_stored_formats_are_read():
    new = TestScores(4, (0.9, 0.92), (11, 12), "accuracy")
    assert TestScores.from_attr(new.to_attr()) == new and new.n == 2
    old = TestScores.from_attr({"trial": 4, "score": 0.9, "metric": "accuracy"})
    assert old.predates_seeds and old.scores == (0.9,) and old.n == 1 and old.seeds == ()
    assert TestScores.from_attr(None) is None and TestScores.from_attr({"score": 0.9}) is None


def test_a_diverged_retraining_is_stored_with_its_reason_and_shown(monkeypatch):
    def diverge(*args, **kwargs):
        raise DivergedError("non-finite training loss (nan) in epoch 1, fold 2")

    monkeypatch.setattr(heldout, "fit_and_score", diverge)
    config = StudyConfig(algo="bp", dataset="digits", epochs=1, test_seeds=3)
    params = {"depth": 1, "width": 64, "activation": "relu", "optimizer": "adam", "lr_adam": 1e-3, "batch_size": 32}
    record, model = retrain_and_score(config, load_dataset("digits"), params, 7)
    assert model is None
    assert record.scores == () and record.n == 3 and "seed 2" in record.error
    assert TestScores.from_attr(record.to_attr()) == record
    columns = score_columns(record, best_trial=7)
    assert columns["test_n"] == 0 and np.isnan(columns["test_mean"]) and "diverged" in columns["test_note"]
    stale = score_columns(TestScores(5, (0.9,), (1,)), best_trial=7)
    assert "not the best #7" in stale["test_note"] and np.isnan(stale["test_mean"])


@pytest.mark.parametrize("n", [1, 3])
def test_the_columns_of_stored_scores(n):
    scores = [0.9, 0.92, 0.94][:n]
    columns = score_columns(TestScores(2, tuple(scores), tuple(range(n))), best_trial=2)
    assert columns["test_n"] == n and columns["test_mean"] == pytest.approx(np.mean(scores))
    assert np.isnan(columns["test_ci95"]) == (n == 1) and columns["test_note"] == ""

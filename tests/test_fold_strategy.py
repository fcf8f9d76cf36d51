"""``fold_strategy="auto"``: decided by measurement once per program shape and machine, stored, reused."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from hpo.config import StudyConfig, UsageError
from hpo.data import load_dataset, make_folds
from models import train
from models.programs import ProgramCache
from models.rule_training import TrainConfig
from models.train import FoldData, Plan, cross_validate

CONFIG = TrainConfig(rule="fa", hidden=(16,), learning_rate=3e-3, epochs=1)


def folds(k=3):
    data = load_dataset("digits")
    split = make_folds(data, k, 0)
    return FoldData(jnp.asarray(data.x_train), jnp.asarray(data.y_train), split.train_idx,
                    jnp.asarray(split.val_idx), jnp.asarray(split.val_mask))


def fake_timer(seconds, calls):
    """A timer that says each strategy's program takes ``seconds[strategy]``, whatever its length (or
    ``seconds[strategy](steps)``)."""
    def timer(strategy, steps, run):
        calls.append(strategy)
        value = seconds[strategy]
        return value(steps) if callable(value) else value

    return timer


MEASURED = len(train.MAPPINGS) * 2 * train.AUTO_REPEATS  # timed calls of one decision: two lengths each


def strategies_compiled(cache):
    return {key[2].fold_strategy for key in cache._entries}


@pytest.fixture
def store(tmp_path, monkeypatch):
    cache = ProgramCache(directory=tmp_path)
    monkeypatch.setattr(train, "PROGRAMS", cache)
    return cache


@pytest.mark.parametrize("faster", ["vmap", "sequential"])
def test_auto_picks_the_faster_and_counts_the_measurement_as_compile_time(store, monkeypatch, faster):
    slower = {"vmap": "sequential", "sequential": "vmap"}[faster]
    calls = []
    monkeypatch.setattr(train, "time_call", fake_timer({faster: 1.0, slower: 2.0}, calls))
    data = folds()
    result = cross_validate(CONFIG, data, 10, seed=1, fold_strategy="auto")
    assert sorted(calls) == sorted(train.MAPPINGS * 2 * train.AUTO_REPEATS)  # both, two lengths, AUTO_REPEATS each
    assert calls[:2] in (["vmap", "sequential"], ["sequential", "vmap"])
    assert strategies_compiled(store) == {faster}  # the programs are keyed by the concrete strategy
    (decision,) = json.loads((store.directory / store.DECISIONS_FILE).read_text()).values()
    assert decision["strategy"] == faster and decision["seconds"] == {faster: 1.0, slower: 2.0}
    assert decision["steps"] == [train.AUTO_STEPS, train.AUTO_LENGTHS * train.AUTO_STEPS]
    assert result.compile_seconds >= decision["measure_seconds"] > 0
    forced = cross_validate(CONFIG, data, 10, seed=1, fold_strategy=faster)  # the very program auto chose
    np.testing.assert_array_equal(result.fold_scores, forced.fold_scores)
    assert forced.compile_seconds == 0.0


def test_a_stored_decision_is_reused_by_a_new_store_without_measuring(store, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "time_call", fake_timer({"vmap": 2.0, "sequential": 1.0}, calls))
    data = folds()
    cross_validate(CONFIG, data, 10, seed=1, fold_strategy="auto")
    assert len(calls) == MEASURED
    again = ProgramCache(directory=store.directory)  # as a new process finds it
    monkeypatch.setattr(train, "PROGRAMS", again)
    monkeypatch.setattr(train, "time_call", lambda strategy, steps, run: pytest.fail("measured twice"))
    result = cross_validate(CONFIG, data, 10, seed=2, fold_strategy="auto")
    assert strategies_compiled(again) == {"sequential"}
    assert result.compile_seconds > 0  # it compiled (the new store's memory is empty) but measured nothing
    # other widths and depths of a dense network share the decision: a search space pays for it once
    wider = dataclasses.replace(CONFIG, hidden=(32, 8))
    cross_validate(wider, data, 10, seed=1, fold_strategy="auto")
    assert strategies_compiled(again) == {"sequential"} and len(calls) == MEASURED
    # another number of runs (2 folds) is decided on its own
    monkeypatch.setattr(train, "time_call", fake_timer({"vmap": 1.0, "sequential": 2.0}, calls))
    cross_validate(CONFIG, folds(k=2), 10, seed=1, fold_strategy="auto")
    assert len(calls) == 2 * MEASURED
    assert len(json.loads((store.directory / store.DECISIONS_FILE).read_text())) == 2


def test_without_a_store_auto_decides_in_memory(monkeypatch):
    cache = ProgramCache()
    monkeypatch.setattr(train, "PROGRAMS", cache)
    calls = []
    monkeypatch.setattr(train, "time_call", fake_timer({"vmap": 1.0, "sequential": 2.0}, calls))
    data = folds()
    cross_validate(CONFIG, data, 10, seed=1, fold_strategy="auto")
    cross_validate(CONFIG, data, 10, seed=2, fold_strategy="auto")
    assert len(calls) == MEASURED  # once per process


def test_auto_predicts_the_whole_epoch_not_the_short_program(store, monkeypatch):
    """vmap: more fixed cost per call (evaluation), less per step; sequential the reverse. The short program
    alone says sequential; over an epoch's steps vmap is faster, and auto must choose it."""
    calls = []
    costs = {"vmap": lambda steps: 1.0 + 0.1 * steps, "sequential": lambda steps: 0.2 * steps}
    monkeypatch.setattr(train, "time_call", fake_timer(costs, calls))
    data = folds()
    steps = data.train_idx.shape[1] // CONFIG.batch_size
    assert costs["sequential"](train.AUTO_STEPS) < costs["vmap"](train.AUTO_STEPS)
    assert costs["vmap"](steps) < costs["sequential"](steps)
    cross_validate(CONFIG, data, 10, seed=1, fold_strategy="auto")
    (decision,) = store.decisions().values()
    assert decision["strategy"] == "vmap" and decision["epoch_steps"] == steps
    assert decision["seconds"] == pytest.approx({s: cost(steps) for s, cost in costs.items()})


def test_prediction_from_two_lengths_is_the_line_through_them():
    assert train.predicted_epoch_seconds({4: 1.0, 12: 2.0}, 20) == pytest.approx(3.0)
    assert train.predicted_epoch_seconds({4: 1.0}, 4) == 1.0  # an epoch no longer than the short program
    assert train.predicted_epoch_seconds({4: 1.0, 12: 0.9}, 100) == 1.0  # a longer program timed faster (noise): steps count as free, never as negative


@pytest.mark.parametrize("strategy", ["vmap", "sequential"])
def test_a_forced_strategy_never_measures(store, monkeypatch, strategy):
    monkeypatch.setattr(train, "time_call", lambda strategy, steps, run: pytest.fail("a forced strategy measured"))
    cross_validate(CONFIG, folds(), 10, seed=1, fold_strategy=strategy)
    assert strategies_compiled(store) == {strategy}
    assert not (store.directory / store.DECISIONS_FILE).exists()


def test_a_bad_strategy_is_one_line_naming_the_choices():
    with pytest.raises(UsageError, match=r"^--fold-strategy must be one of auto, vmap, sequential, got 'fast'$"):
        StudyConfig(fold_strategy="fast")
    with pytest.raises(ValueError, match="auto, vmap, sequential"):
        Plan("fast")
    assert StudyConfig().fold_strategy == "auto"
    with pytest.raises(ValueError, match="auto is resolved first"):
        train.map_runs("auto", lambda x: x)

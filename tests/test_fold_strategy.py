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
    def timer(strategy, run):
        calls.append(strategy)
        return seconds[strategy]

    return timer


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
    assert sorted(calls) == sorted(train.MAPPINGS * train.AUTO_REPEATS)  # both, interleaved, AUTO_REPEATS each
    assert calls[:2] in (["vmap", "sequential"], ["sequential", "vmap"])
    assert strategies_compiled(store) == {faster}  # the programs are keyed by the concrete strategy
    (decision,) = json.loads((store.directory / store.DECISIONS_FILE).read_text()).values()
    assert decision["strategy"] == faster and decision["seconds"] == {faster: 1.0, slower: 2.0}
    assert result.compile_seconds >= decision["measure_seconds"] > 0
    forced = cross_validate(CONFIG, data, 10, seed=1, fold_strategy=faster)  # the very program auto chose
    np.testing.assert_array_equal(result.fold_scores, forced.fold_scores)
    assert forced.compile_seconds == 0.0


def test_a_stored_decision_is_reused_by_a_new_store_without_measuring(store, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "time_call", fake_timer({"vmap": 2.0, "sequential": 1.0}, calls))
    data = folds()
    cross_validate(CONFIG, data, 10, seed=1, fold_strategy="auto")
    assert len(calls) == 2 * train.AUTO_REPEATS
    again = ProgramCache(directory=store.directory)  # as a new process finds it
    monkeypatch.setattr(train, "PROGRAMS", again)
    monkeypatch.setattr(train, "time_call", lambda strategy, run: pytest.fail("measured twice"))
    result = cross_validate(CONFIG, data, 10, seed=2, fold_strategy="auto")
    assert strategies_compiled(again) == {"sequential"}
    assert result.compile_seconds > 0  # it compiled (the new store's memory is empty) but measured nothing
    # other widths and depths of a dense network share the decision: a search space pays for it once
    wider = dataclasses.replace(CONFIG, hidden=(32, 8))
    cross_validate(wider, data, 10, seed=1, fold_strategy="auto")
    assert strategies_compiled(again) == {"sequential"} and len(calls) == 2 * train.AUTO_REPEATS
    # another number of runs (2 folds) is decided on its own
    monkeypatch.setattr(train, "time_call", fake_timer({"vmap": 1.0, "sequential": 2.0}, calls))
    cross_validate(CONFIG, folds(k=2), 10, seed=1, fold_strategy="auto")
    assert len(calls) == 4 * train.AUTO_REPEATS
    assert len(json.loads((store.directory / store.DECISIONS_FILE).read_text())) == 2


def test_without_a_store_auto_decides_in_memory(monkeypatch):
    cache = ProgramCache()
    monkeypatch.setattr(train, "PROGRAMS", cache)
    calls = []
    monkeypatch.setattr(train, "time_call", fake_timer({"vmap": 1.0, "sequential": 2.0}, calls))
    data = folds()
    cross_validate(CONFIG, data, 10, seed=1, fold_strategy="auto")
    cross_validate(CONFIG, data, 10, seed=2, fold_strategy="auto")
    assert len(calls) == 2 * train.AUTO_REPEATS  # once per process


@pytest.mark.parametrize("strategy", ["vmap", "sequential"])
def test_a_forced_strategy_never_measures(store, monkeypatch, strategy):
    monkeypatch.setattr(train, "time_call", lambda strategy, run: pytest.fail("a forced strategy measured"))
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

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
from models.sharing import ProgramSharing
from models.train import FoldData, Plan, cross_validate

CONFIG = TrainConfig(rule="fa", hidden=(16,), learning_rate=3e-3, epochs=1)


def folds(k=3):
    data = load_dataset("digits")
    split = make_folds(data, k, 0)
    return FoldData(jnp.asarray(data.x_train), jnp.asarray(data.y_train), split.train_idx,
                    jnp.asarray(split.val_idx), jnp.asarray(split.val_mask))


def fake_timer(seconds, calls, results=None):
    """A timer that says each strategy's epoch takes ``seconds[strategy]``; it runs the epoch, and keeps what
    the epoch returned in ``results`` (strategy -> list)."""
    def timer(strategy, run):
        calls.append(strategy)
        out = run()
        if results is not None:
            results.setdefault(strategy, []).append(out)
        return seconds[strategy]

    return timer


MEASURED = len(train.MAPPINGS) * train.AUTO_REPEATS  # timed epochs of one decision


def strategies_compiled(cache):
    return {key[2].fold_strategy for key in cache._entries}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty program store, and decisions measured at the first program of a kind (``AUTO_PAYBACK`` 0) unless
    a test says otherwise."""
    cache = ProgramCache(directory=tmp_path)
    monkeypatch.setattr(train, "PROGRAMS", cache)
    monkeypatch.setattr(train, "SHARING", ProgramSharing())
    monkeypatch.setattr(train, "AUTO_PAYBACK", 0.0)
    return cache


@pytest.mark.parametrize("faster", ["vmap", "sequential"])
def test_auto_picks_the_faster_and_counts_the_measurement_as_compile_time(store, monkeypatch, faster):
    slower = {"vmap": "sequential", "sequential": "vmap"}[faster]
    calls, results, compiled = [], {}, []
    monkeypatch.setattr(train, "time_call", fake_timer({faster: 1.0, slower: 2.0}, calls, results))
    compile_epoch = train._compile_epoch
    monkeypatch.setattr(train, "_compile_epoch", lambda *a: compiled.append(a[2].fold_strategy) or compile_epoch(*a))
    data = folds()
    result = cross_validate(CONFIG, data, 10, seed=1, fold_strategy="auto")
    assert sorted(calls) == sorted(train.MAPPINGS * train.AUTO_REPEATS)  # both, AUTO_REPEATS each
    assert calls[:2] in (["vmap", "sequential"], ["sequential", "vmap"])  # interleaved
    assert strategies_compiled(store) == {faster}  # the programs are keyed by the concrete strategy
    assert sorted(compiled) == sorted(train.MAPPINGS)  # one program per mapping; the chosen one trains the trial
    (decision,) = json.loads((store.directory / store.DECISIONS_FILE).read_text()).values()
    assert decision["strategy"] == faster and decision["seconds"] == {faster: 1.0, slower: 2.0}
    assert decision["rounds"] == train.AUTO_REPEATS and decision["epoch_steps"] == data.train_idx.shape[1] // 64
    assert result.compile_seconds >= decision["measure_seconds"] > 0
    forced = cross_validate(CONFIG, data, 10, seed=1, fold_strategy=faster)  # the very program auto chose
    np.testing.assert_array_equal(result.fold_scores, forced.fold_scores)
    assert forced.compile_seconds == 0.0


def test_the_timed_programs_are_whole_epochs_of_the_trial_from_its_initial_state(store, monkeypatch):
    """Each timed call is the epoch the trial trains (its real steps and evaluation, not a shorter program),
    from the same initial state every time: every call of a mapping returns the same metrics, the first
    epoch's."""
    calls, results = [], {}
    monkeypatch.setattr(train, "time_call", fake_timer({"vmap": 1.0, "sequential": 2.0}, calls, results))
    config = dataclasses.replace(CONFIG, epochs=2)
    result = cross_validate(config, folds(), 10, seed=1, fold_strategy="auto")
    assert sorted(results) == sorted(train.MAPPINGS)
    for outs in results.values():
        assert len(outs) == train.AUTO_REPEATS
        for _, metrics, _ in outs:  # every call from the same state: the same epoch
            np.testing.assert_array_equal(np.asarray(metrics.val_loss), np.asarray(outs[0][1].val_loss))
    for _, metrics, _ in results["vmap"]:  # the chosen program's timed epoch is the trial's first, bit for bit
        np.testing.assert_array_equal(np.asarray(metrics.val_loss), result.curves["val_loss"][0])
        np.testing.assert_array_equal(np.asarray(metrics.train_loss), result.curves["train_loss"][0])


def test_a_stored_decision_is_reused_by_a_new_store_without_measuring(store, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "time_call", fake_timer({"vmap": 2.0, "sequential": 1.0}, calls))
    data = folds()
    cross_validate(CONFIG, data, 10, seed=1, fold_strategy="auto")
    assert len(calls) == MEASURED
    again = ProgramCache(directory=store.directory)  # as a new process finds it
    monkeypatch.setattr(train, "PROGRAMS", again)
    monkeypatch.setattr(train, "time_call", lambda strategy, run: pytest.fail("measured twice"))
    result = cross_validate(CONFIG, data, 10, seed=2, fold_strategy="auto")
    assert strategies_compiled(again) == {"sequential"}
    assert again.loaded_from_disk == 1 and again.built == 0  # the program the decision compiled was stored
    assert result.compile_seconds > 0  # it loaded (the new store's memory is empty) but measured nothing
    # another depth of about the same work per step shares the decision
    near = dataclasses.replace(CONFIG, hidden=(16, 16))
    assert train.work_bucket(*work_of(near, data)) == train.work_bucket(*work_of(CONFIG, data))
    cross_validate(near, data, 10, seed=1, fold_strategy="auto")
    assert strategies_compiled(again) == {"sequential"} and len(calls) == MEASURED
    # 16 times the work per step is decided on its own, and so is another number of runs (2 folds)
    monkeypatch.setattr(train, "time_call", fake_timer({"vmap": 1.0, "sequential": 2.0}, calls))
    far = dataclasses.replace(CONFIG, hidden=(256,))
    assert train.work_bucket(*work_of(far, data)) > train.work_bucket(*work_of(CONFIG, data))
    cross_validate(far, data, 10, seed=1, fold_strategy="auto")
    assert len(calls) == 2 * MEASURED and "vmap" in strategies_compiled(again)
    cross_validate(CONFIG, folds(k=2), 10, seed=1, fold_strategy="auto")
    assert len(calls) == 3 * MEASURED
    assert len(json.loads((store.directory / store.DECISIONS_FILE).read_text())) == 3


def work_of(config, data):
    """``work_bucket``'s arguments for ``config``'s programs on ``data``."""
    captured = {}

    class Captured(Exception):
        pass

    def spy(family, spec, plan, state, key, batches, data_, hyper):
        captured.update(family=family, spec=spec, state=state, batches=batches)
        raise Captured  # before anything is compiled

    original = train.decide_fold_strategy
    train.decide_fold_strategy = spy
    try:
        train.precompile(config, data, 10, "sequential")  # the spy sees the arguments whatever the strategy
    except Captured:
        pass
    finally:
        train.decide_fold_strategy = original
    return captured["family"], captured["spec"], captured["state"], captured["batches"]


def test_without_a_store_auto_decides_in_memory(monkeypatch):
    cache = ProgramCache()
    monkeypatch.setattr(train, "PROGRAMS", cache)
    monkeypatch.setattr(train, "AUTO_PAYBACK", 0.0)
    calls = []
    monkeypatch.setattr(train, "time_call", fake_timer({"vmap": 1.0, "sequential": 2.0}, calls))
    data = folds()
    cross_validate(CONFIG, data, 10, seed=1, fold_strategy="auto")
    cross_validate(CONFIG, data, 10, seed=2, fold_strategy="auto")
    assert len(calls) == MEASURED  # once per process


def test_a_long_epoch_is_timed_fewer_times(store, monkeypatch):
    """Past ``AUTO_BUDGET_SECONDS`` no further round starts: one round at least, so both mappings are timed."""
    monkeypatch.setattr(train, "AUTO_BUDGET_SECONDS", 0.0)
    calls = []
    monkeypatch.setattr(train, "time_call", fake_timer({"vmap": 1.0, "sequential": 2.0}, calls))
    cross_validate(CONFIG, folds(), 10, seed=1, fold_strategy="auto")
    assert sorted(calls) == sorted(train.MAPPINGS)
    (decision,) = store.decisions().values()
    assert decision["rounds"] == 1 and decision["strategy"] == "vmap"


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


def test_a_decision_waits_until_the_kind_has_trained_enough_to_pay_for_it(store, monkeypatch):
    """By default a kind is measured only once this process has trained its programs for ``AUTO_PAYBACK``
    compilations' worth of seconds: before, its runs are mapped the provisional way and nothing is stored."""
    monkeypatch.setattr(train, "AUTO_PAYBACK", 1e6)  # not in this test's lifetime
    calls = []
    monkeypatch.setattr(train, "time_call", fake_timer({"vmap": 1.0, "sequential": 2.0}, calls))
    data = folds()
    first = cross_validate(CONFIG, data, 10, seed=1, fold_strategy="auto")
    assert calls == [] and first.fold_strategy == train.provisional_mapping() == "sequential"  # on a CPU
    assert not (store.directory / store.DECISIONS_FILE).exists()
    ((trained, compile_cost),) = store._training.values()
    assert trained == pytest.approx(first.train_seconds)  # what deciding would be worth so far
    assert compile_cost == train.SHARING.compile_cost("rule-networks") > 0

    # once the kind's training passes AUTO_PAYBACK compilations, the next program of that kind is measured
    monkeypatch.setattr(train, "AUTO_PAYBACK", first.train_seconds / train.SHARING.compile_cost("rule-networks") / 2)
    wider = cross_validate(dataclasses.replace(CONFIG, hidden=(24,)), data, 10, seed=1, fold_strategy="auto")
    assert len(calls) == MEASURED and wider.fold_strategy == "vmap"
    (decision,) = json.loads((store.directory / store.DECISIONS_FILE).read_text()).values()
    assert decision["strategy"] == "vmap"


def test_what_a_decision_would_be_worth_is_counted_by_every_process_with_the_store(store, monkeypatch):
    """Short studies on one machine each train a kind for less than a decision costs: the count is kept beside
    the decisions, so a later process (here a new cache on the same directory that has compiled nothing) adds to
    it, and decides once the machine's count pays, with the compile cost the earlier process measured."""
    monkeypatch.setattr(train, "AUTO_PAYBACK", 1e6)
    calls = []
    monkeypatch.setattr(train, "time_call", fake_timer({"vmap": 1.0, "sequential": 2.0}, calls))
    data = folds()
    first = cross_validate(CONFIG, data, 10, seed=1, fold_strategy="auto")
    later = ProgramCache(directory=store.directory)
    monkeypatch.setattr(train, "PROGRAMS", later)
    monkeypatch.setattr(train, "SHARING", ProgramSharing())
    ((trained, compile_cost),) = later._stored_training().values()
    assert trained == pytest.approx(first.train_seconds) and compile_cost > 0

    second = cross_validate(CONFIG, data, 10, seed=2, fold_strategy="auto")  # loads the stored program
    assert calls == [] and second.fold_strategy == "sequential" and later.loaded_from_disk == 1
    ((trained, _),) = later._stored_training().values()
    assert trained == pytest.approx(first.train_seconds + second.train_seconds)  # both processes' seconds
    assert train.SHARING.compile_cost("rule-networks") is None  # this process compiled nothing ...
    monkeypatch.setattr(train, "AUTO_PAYBACK", trained / compile_cost * 0.99)  # ... but the machine's count pays
    third = cross_validate(CONFIG, data, 10, seed=3, fold_strategy="auto")
    assert len(calls) == MEASURED and third.fold_strategy == "vmap"
    cross_validate(CONFIG, data, 10, seed=4, fold_strategy="auto")
    ((after, _),) = later._stored_training().values()
    assert after == pytest.approx(trained)  # a decided kind is no longer counted


def test_compiling_ahead_leaves_a_due_decision_to_the_trial(store, monkeypatch):
    """The compile-ahead thread would time its epochs beside a training trial: a decision that is due (here at
    once, AUTO_PAYBACK 0) is left undecided and its programs uncompiled; once decided, they are compiled ahead."""
    calls = []
    monkeypatch.setattr(train, "time_call", fake_timer({"vmap": 1.0, "sequential": 2.0}, calls))
    data = folds()
    assert train.precompile(CONFIG, data, 10, "auto") == 0.0
    assert calls == [] and len(store) == 0 and store.decisions() == {}
    cross_validate(CONFIG, data, 10, seed=1, fold_strategy="auto")  # the trial decides
    assert len(calls) == MEASURED
    assert train.precompile(dataclasses.replace(CONFIG, hidden=(20,)), data, 10, "auto") > 0
    assert len(calls) == MEASURED and strategies_compiled(store) == {"vmap"}

"""``fold_strategy="auto"``: decided by measurement once per program shape and machine, stored, reused."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from hpo.config import StudyConfig, UsageError
from hpo.data import load_dataset, make_folds
from models import train
from models.compile import Compiler, provisional_mapping, work_bucket
from models.compile import compiler as compiler_module
from models.compile.compiler import AUTO_REPEATS
from models.compile.folds import measuring_cost
from models.rule_training import TrainConfig
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


MEASURED = len(train.MAPPINGS) * AUTO_REPEATS  # timed epochs of one decision
UNLIMITED = float("inf")  # measuring budget of the tests that count rounds


def strategies_compiled(cache):
    return {key[2].fold_strategy for key in cache._entries}


@pytest.fixture
def compiler(tmp_path):
    """A compiler with an empty program store, deciding at the first program of a kind (``payback`` 0) unless a
    test says otherwise, and timing every round (a loaded machine's compilations would exhaust the real budget)."""
    return Compiler(directory=tmp_path, payback=0.0, budget_seconds=UNLIMITED)


@pytest.mark.parametrize("faster", ["vmap", "sequential"])
def test_auto_picks_the_faster_and_counts_the_measurement_as_compile_time(compiler, monkeypatch, faster):
    slower = {"vmap": "sequential", "sequential": "vmap"}[faster]
    calls, results, compiled = [], {}, []
    compiler.timer = fake_timer({faster: 1.0, slower: 2.0}, calls, results)
    compile_epoch = compiler_module.compile_epoch
    monkeypatch.setattr(compiler_module, "compile_epoch",
                        lambda program: compiled.append(program.plan.fold_strategy) or compile_epoch(program))
    data = folds()
    result = cross_validate(CONFIG, data, 10, seed=1, plan=Plan("auto"), compiler=compiler)
    assert sorted(calls) == sorted(train.MAPPINGS * AUTO_REPEATS)  # both, AUTO_REPEATS each
    assert calls[:2] in (["vmap", "sequential"], ["sequential", "vmap"])  # interleaved
    assert strategies_compiled(compiler.store) == {faster}  # the programs are keyed by the concrete strategy
    assert sorted(compiled) == sorted(train.MAPPINGS)  # one program per mapping; the chosen one trains the trial
    (decision,) = json.loads((compiler.store.directory / compiler.store.DECISIONS_FILE).read_text()).values()
    assert decision["strategy"] == faster and decision["seconds"] == {faster: 1.0, slower: 2.0}
    assert decision["rounds"] == AUTO_REPEATS and decision["epoch_steps"] == data.train_idx.shape[1] // 64
    assert result.compile_seconds >= decision["measure_seconds"] > 0
    forced = cross_validate(CONFIG, data, 10, seed=1, plan=Plan(faster), compiler=compiler)  # the very program auto chose
    np.testing.assert_array_equal(result.fold_scores, forced.fold_scores)
    assert forced.compile_seconds == 0.0


def test_the_timed_programs_are_whole_epochs_of_the_trial_from_its_initial_state(compiler, monkeypatch):
    """Each timed call is the epoch the trial trains (its real steps and evaluation, not a shorter program),
    from the same initial state every time: every call of a mapping returns the same metrics, the first
    epoch's."""
    calls, results = [], {}
    compiler.timer = fake_timer({"vmap": 1.0, "sequential": 2.0}, calls, results)
    config = dataclasses.replace(CONFIG, epochs=2)
    result = cross_validate(config, folds(), 10, seed=1, plan=Plan("auto"), compiler=compiler)
    assert sorted(results) == sorted(train.MAPPINGS)
    for outs in results.values():
        assert len(outs) == AUTO_REPEATS
        for _, metrics, _ in outs:  # every call from the same state: the same epoch
            np.testing.assert_array_equal(np.asarray(metrics.val_loss), np.asarray(outs[0][1].val_loss))
    for _, metrics, _ in results["vmap"]:  # the chosen program's timed epoch is the trial's first, bit for bit
        np.testing.assert_array_equal(np.asarray(metrics.val_loss), result.curves["val_loss"][0])
        np.testing.assert_array_equal(np.asarray(metrics.train_loss), result.curves["train_loss"][0])


def test_a_stored_decision_is_reused_by_a_new_store_without_measuring(compiler, monkeypatch):
    calls = []
    compiler.timer = fake_timer({"vmap": 2.0, "sequential": 1.0}, calls)
    data = folds()
    cross_validate(CONFIG, data, 10, seed=1, plan=Plan("auto"), compiler=compiler)
    assert len(calls) == MEASURED
    compiler = Compiler(directory=compiler.store.directory, payback=0.0, budget_seconds=UNLIMITED)  # a new process
    again = compiler.store
    compiler.timer = lambda strategy, run: pytest.fail("measured twice")
    result = cross_validate(CONFIG, data, 10, seed=2, plan=Plan("auto"), compiler=compiler)
    assert strategies_compiled(again) == {"sequential"}
    assert again.loaded_from_disk == 1 and again.built == 0  # the program the decision compiled was stored
    assert result.compile_seconds > 0  # it loaded (the new store's memory is empty) but measured nothing
    # another depth of about the same work per step shares the decision
    near = dataclasses.replace(CONFIG, hidden=(16, 16))
    assert work_bucket(*work_of(near, data)) == work_bucket(*work_of(CONFIG, data))
    cross_validate(near, data, 10, seed=1, plan=Plan("auto"), compiler=compiler)
    assert strategies_compiled(again) == {"sequential"} and len(calls) == MEASURED
    # 16 times the work per step is decided on its own, and so is another number of runs (2 folds)
    compiler.timer = fake_timer({"vmap": 1.0, "sequential": 2.0}, calls)
    far = dataclasses.replace(CONFIG, hidden=(256,))
    assert work_bucket(*work_of(far, data)) > work_bucket(*work_of(CONFIG, data))
    cross_validate(far, data, 10, seed=1, plan=Plan("auto"), compiler=compiler)
    assert len(calls) == 2 * MEASURED and "vmap" in strategies_compiled(again)
    cross_validate(CONFIG, folds(k=2), 10, seed=1, plan=Plan("auto"), compiler=compiler)
    assert len(calls) == 3 * MEASURED
    assert len(json.loads((compiler.store.directory / compiler.store.DECISIONS_FILE).read_text())) == 3


def work_of(config, data):
    """``work_bucket``'s arguments for ``config``'s programs on ``data``."""
    captured = {}

    class Captured(Exception):
        pass

    def spy(program):
        captured.update(program._asdict())
        raise Captured  # before anything is compiled

    compiler = Compiler()
    compiler.decide_fold_strategy = spy
    try:
        train.precompile(config, data, 10, plan=Plan("sequential"), compiler=compiler)  # the spy sees the arguments
    except Captured:
        pass
    return captured["family"], captured["spec"], captured["state"], captured["batches"]


def test_without_a_store_auto_decides_in_memory(monkeypatch):
    compiler = Compiler(payback=0.0, budget_seconds=UNLIMITED)
    calls = []
    compiler.timer = fake_timer({"vmap": 1.0, "sequential": 2.0}, calls)
    data = folds()
    cross_validate(CONFIG, data, 10, seed=1, plan=Plan("auto"), compiler=compiler)
    cross_validate(CONFIG, data, 10, seed=2, plan=Plan("auto"), compiler=compiler)
    assert len(calls) == MEASURED  # once per process


def test_a_long_epoch_is_timed_fewer_times(compiler, monkeypatch):
    """Past ``AUTO_BUDGET_SECONDS`` no further round starts: one round at least, so both mappings are timed."""
    compiler.budget_seconds = 0.0
    calls = []
    compiler.timer = fake_timer({"vmap": 1.0, "sequential": 2.0}, calls)
    cross_validate(CONFIG, folds(), 10, seed=1, plan=Plan("auto"), compiler=compiler)
    assert sorted(calls) == sorted(train.MAPPINGS)
    (decision,) = compiler.store.decisions().values()
    assert decision["rounds"] == 1 and decision["strategy"] == "vmap"


@pytest.mark.parametrize("strategy", ["vmap", "sequential"])
def test_a_forced_strategy_never_measures(compiler, monkeypatch, strategy):
    compiler.timer = lambda strategy, run: pytest.fail("a forced strategy measured")
    cross_validate(CONFIG, folds(), 10, seed=1, plan=Plan(strategy), compiler=compiler)
    assert strategies_compiled(compiler.store) == {strategy}
    assert not (compiler.store.directory / compiler.store.DECISIONS_FILE).exists()


def test_a_bad_strategy_is_one_line_naming_the_choices():
    with pytest.raises(UsageError, match=r"^--fold-strategy must be one of auto, vmap, sequential, got 'fast'$"):
        StudyConfig(fold_strategy="fast")
    with pytest.raises(ValueError, match="auto, vmap, sequential"):
        Plan("fast")
    assert StudyConfig().fold_strategy == "auto"
    with pytest.raises(ValueError, match="auto is resolved first"):
        train.map_runs("auto", lambda x: x)


def test_a_decision_waits_until_the_kind_has_trained_enough_to_pay_for_it(compiler, monkeypatch):
    """By default a kind is measured only once this process has trained its programs for ``Compiler.payback``
    times what measuring costs (a compilation and two of the kind's epochs): before, its runs are mapped the
    provisional way and nothing is stored."""
    compiler.payback = 1e6  # not in this test's lifetime
    calls = []
    compiler.timer = fake_timer({"vmap": 1.0, "sequential": 2.0}, calls)
    data = folds()
    first = cross_validate(CONFIG, data, 10, seed=1, plan=Plan("auto"), compiler=compiler)
    assert calls == [] and first.fold_strategy == provisional_mapping() == "sequential"  # on a CPU
    assert not (compiler.store.directory / compiler.store.DECISIONS_FILE).exists()
    ((trained, compile_cost, epochs),) = compiler.store._training.values()
    assert trained == pytest.approx(first.train_seconds)  # what deciding would be worth so far
    assert compile_cost == compiler.sharing.compile_cost("rule-networks") > 0 and epochs == CONFIG.epochs

    # a payback that counts the compilation alone would measure now, but two timed epochs are part of the cost
    epoch_cost = trained / epochs
    compiler.payback = trained / (compile_cost + epoch_cost)  # between the two rules, however small an epoch is
    assert compiler.payback * compile_cost < trained < compiler.payback * measuring_cost(compile_cost, epoch_cost)
    cross_validate(dataclasses.replace(CONFIG, hidden=(20,)), data, 10, seed=1, plan=Plan("auto"), compiler=compiler)
    assert calls == []
    # once the kind's training passes payback times the measuring cost, the next program of that kind is measured
    ((trained, compile_cost, epochs),) = compiler.store._training.values()
    compiler.payback = trained / measuring_cost(compiler.sharing.compile_cost("rule-networks"), trained / epochs) / 2
    wider = cross_validate(dataclasses.replace(CONFIG, hidden=(24,)), data, 10, seed=1, plan=Plan("auto"), compiler=compiler)
    assert len(calls) == MEASURED and wider.fold_strategy == "vmap"
    (decision,) = json.loads((compiler.store.directory / compiler.store.DECISIONS_FILE).read_text()).values()
    assert decision["strategy"] == "vmap"


def test_what_a_decision_would_be_worth_is_counted_by_every_process_with_the_store(compiler, monkeypatch):
    """Short studies on one machine each train a kind for less than a decision costs: the count is kept beside
    the decisions, so a later process (here a new cache on the same directory that has compiled nothing) adds to
    it, and decides once the machine's count pays, with the compile cost the earlier process measured."""
    compiler.payback = 1e6
    calls = []
    compiler.timer = fake_timer({"vmap": 1.0, "sequential": 2.0}, calls)
    data = folds()
    first = cross_validate(CONFIG, data, 10, seed=1, plan=Plan("auto"), compiler=compiler)
    compiler = Compiler(directory=compiler.store.directory, payback=compiler.payback, timer=compiler.timer,
                        budget_seconds=UNLIMITED)
    later = compiler.store
    ((trained, compile_cost, epochs),) = later._stored_training().values()
    assert trained == pytest.approx(first.train_seconds) and compile_cost > 0 and epochs == CONFIG.epochs

    second = cross_validate(CONFIG, data, 10, seed=2, plan=Plan("auto"), compiler=compiler)  # loads the stored program
    assert calls == [] and second.fold_strategy == "sequential" and later.loaded_from_disk == 1
    ((trained, _, epochs),) = later._stored_training().values()
    assert trained == pytest.approx(first.train_seconds + second.train_seconds)  # both processes' seconds
    assert epochs == 2 * CONFIG.epochs
    assert compiler.sharing.compile_cost("rule-networks") is None  # this process compiled nothing ...
    compiler.payback = trained / measuring_cost(compile_cost, trained / epochs) * 0.99  # ... but the machine's count pays
    third = cross_validate(CONFIG, data, 10, seed=3, plan=Plan("auto"), compiler=compiler)
    assert len(calls) == MEASURED and third.fold_strategy == "vmap"
    cross_validate(CONFIG, data, 10, seed=4, plan=Plan("auto"), compiler=compiler)
    ((after, _, _),) = later._stored_training().values()
    assert after == pytest.approx(trained)  # a decided kind is no longer counted


def test_compiling_ahead_leaves_a_due_decision_to_the_trial(compiler, monkeypatch):
    """The compile-ahead thread would time its epochs beside a training trial: a decision that is due (here at
    once, payback 0) is left undecided and its programs uncompiled; once decided, they are compiled ahead."""
    calls = []
    compiler.timer = fake_timer({"vmap": 1.0, "sequential": 2.0}, calls)
    data = folds()
    assert train.precompile(CONFIG, data, 10, plan=Plan("auto"), compiler=compiler) == 0.0
    assert calls == [] and len(compiler.store) == 0 and compiler.store.decisions() == {}
    cross_validate(CONFIG, data, 10, seed=1, plan=Plan("auto"), compiler=compiler)  # the trial decides
    assert len(calls) == MEASURED
    assert train.precompile(dataclasses.replace(CONFIG, hidden=(20,)), data, 10, plan=Plan("auto"), compiler=compiler) > 0
    assert len(calls) == MEASURED and strategies_compiled(compiler.store) == {"vmap"}

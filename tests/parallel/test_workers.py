"""The worker loop: an interrupt at any point leaves no trial running in the storage."""

from __future__ import annotations

import signal

import optuna
import pytest
from optuna.trial import TrialState

from hpo.parallel import workers
from hpo.parallel.interrupts import Interrupted, deferred, handle_interrupts, received
from hpo.storage import open_storage


@pytest.mark.parametrize("interrupted_claim", [1, 2])
def test_an_interrupt_between_asking_and_running_requeues_every_trial_asked(tmp_path, monkeypatch, interrupted_claim):
    """SIGTERM while a worker is still asking its start-up trials (claiming one, here): the trials it already asked
    and the one it was claiming are failed as interrupted and re-queued with their parameters, none left RUNNING
    for nobody to finish (the objective never ran)."""
    storage = open_storage(str(tmp_path / "s.journal"))
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    claims = []
    real_claim = workers.claim

    def claim(trial):
        trial.suggest_float("x", 0.0, 1.0)
        claims.append(trial.number)
        if len(claims) == interrupted_claim:
            raise Interrupted()
        real_claim(trial)

    def objective(trial):
        raise AssertionError("no trial may run")

    monkeypatch.setattr(workers, "claim", claim)
    with pytest.raises(Interrupted):
        workers.run_trials(study, storage, str(tmp_path), objective, 6, lambda line: None, lambda *a: None,
                           startup=3)
    trials = study.get_trials()
    asked = [t for t in trials if "failed_trial" not in t.system_attrs]
    assert [t.number for t in asked] == list(range(interrupted_claim))
    assert all(t.state == TrialState.FAIL and t.user_attrs["interrupted"] == "stopped by SIGINT" for t in asked)
    retries = {t.system_attrs["failed_trial"]: t for t in trials if "failed_trial" in t.system_attrs}
    assert sorted(retries) == [t.number for t in asked]
    assert all(retries[t.number].state == TrialState.WAITING and retries[t.number].params == t.params for t in asked)


def signal_inside(storage, method: str, when=lambda *args, **kwargs: True, before: bool = True):
    """Make ``storage.method`` receive SIGTERM (its handler runs there) before or after its real work."""
    real = getattr(storage, method)

    def interrupted(*args, **kwargs):
        fire = when(*args, **kwargs)
        if fire and before:
            signal.raise_signal(signal.SIGTERM)
        result = real(*args, **kwargs)
        if fire and not before:
            signal.raise_signal(signal.SIGTERM)
        return result

    setattr(storage, method, interrupted)


def run_interrupted(tmp_path, storage, objective):
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    with handle_interrupts(), pytest.raises(Interrupted) as raised:
        workers.run_trials(study, storage, str(tmp_path), objective, 3, lambda line: None, lambda *a: None)
    assert raised.value.signum == signal.SIGTERM
    return study.get_trials()


def sampling(trial):
    return trial.suggest_float("x", 0.0, 1.0)


def test_an_interrupt_inside_the_tell_of_a_finished_trial_leaves_it_finished_and_stops(tmp_path):
    """The signal lands in the storage call that completes trial 0 (the CI failure: trial 0 left RUNNING with its
    parameters, nobody holding it). It is held until the storage has the trial's end, then stops the worker."""
    storage = open_storage(str(tmp_path / "s.journal"))
    signal_inside(storage, "set_trial_state_values", lambda trial_id, state, values=None: state.is_finished())
    trials = run_interrupted(tmp_path, storage, sampling)
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.COMPLETE)]
    assert trials[0].value == trials[0].params["x"] and "interrupted" not in trials[0].user_attrs


def test_an_interrupt_as_ask_creates_a_trial_requeues_that_trial(tmp_path):
    """The signal lands just after the storage created trial 0, before ``study.ask`` returned it: it is held until
    the worker holds the trial, which is then failed as interrupted and re-queued, not left RUNNING."""
    storage = open_storage(str(tmp_path / "s.journal"))
    signal_inside(storage, "create_new_trial", before=False)
    trials = run_interrupted(tmp_path, storage, lambda trial: pytest.fail("no trial may run"))
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.FAIL), (1, TrialState.WAITING)]
    assert trials[0].user_attrs["interrupted"] == "stopped by SIGTERM" and trials[1].system_attrs["failed_trial"] == 0


def test_an_interrupt_inside_the_objective_requeues_the_trial_with_its_parameters(tmp_path):
    storage = open_storage(str(tmp_path / "s.journal"))

    def objective(trial):
        sampling(trial)
        signal.raise_signal(signal.SIGTERM)
        pytest.fail("the signal must stop the objective")

    trials = run_interrupted(tmp_path, storage, objective)
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.FAIL), (1, TrialState.WAITING)]
    assert trials[1].params == trials[0].params and trials[1].system_attrs["failed_trial"] == 0


def test_a_deferred_signal_is_raised_once_when_the_outermost_block_ends():
    # SIGTERM: a background job without job control (`cmd &` in a script) ignores SIGINT, and so, on purpose,
    # does handle_interrupts then
    events = []
    with handle_interrupts():
        with pytest.raises(Interrupted):
            with deferred():
                with deferred():
                    signal.raise_signal(signal.SIGTERM)
                    events.append("inner block finished")
                events.append("outer block finished")
        signal.raise_signal(signal.SIGTERM)  # a later signal is noted, not raised
        assert received() == signal.SIGTERM
    assert events == ["inner block finished", "outer block finished"]

"""The worker loop: an interrupt at any point leaves no trial running in the storage."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from hpo.parallel import workers
from hpo.parallel.interrupts import Interrupted
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

"""Every private part of a dependency the code relies on, checked on the installed version: an upgrade that
removes or changes one fails here, not in the middle of a study. The dependencies are bounded above
(pyproject.toml: optuna<6, psycopg<4) so such an upgrade is a deliberate one."""

import inspect
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_optuna_journal_file_internals_used_by_the_repairing_backend(tmp_path):
    """hpo.storage.journal.RepairingJournalBackend takes the journal's own lock and cuts its file."""
    from optuna.storages.journal import JournalFileBackend
    from optuna.storages.journal._file import get_lock_file

    backend = JournalFileBackend(str(tmp_path / "j.journal"))
    assert Path(backend._file_path) == tmp_path / "j.journal"
    assert isinstance(backend._log_number_offset, dict)
    with get_lock_file(backend._lock):  # a context manager over the backend's lock
        pass
    backend.append_logs([{"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [1]}])
    assert backend._log_number_offset  # filled as logs are read: the repair drops offsets past a cut
    list(backend.read_logs(0))


def test_optuna_trial_id_used_by_the_worker_loop():
    """hpo.parallel.workers fails and retries trials and beats their hearts by ``trial._trial_id``."""
    study = optuna.create_study()
    trial = study.ask()
    assert isinstance(trial._trial_id, int)
    assert study._storage.get_trial(trial._trial_id).number == trial.number
    assert isinstance(study.trials[0]._trial_id, int)


def test_psycopg_wait_used_by_the_answer_deadline():
    """hpo.storage.rdb bounds every wait of a PostgreSQL connection by overriding ``Connection.wait``."""
    psycopg = pytest.importorskip("psycopg")
    assert "timeout" in inspect.signature(psycopg.Connection.wait).parameters
    assert issubclass(psycopg.errors._WaitTimeout, psycopg.OperationalError)


def test_versions_are_within_the_bounds_the_code_was_checked_against():
    import psycopg

    assert 5 <= int(optuna.__version__.split(".")[0]) < 6
    assert 3 <= int(psycopg.__version__.split(".")[0]) < 4
    text = (ROOT / "pyproject.toml").read_text()
    assert '"optuna>=5.0,<6"' in text and '"psycopg[binary]>=3.2,<4"' in text


def test_no_deprecated_tracker_integration():
    """MLflow is logged through MLflow's own client, not optuna-integration's deprecated callback."""
    from hpo.study import trackers

    source = inspect.getsource(trackers)
    assert "MLflowCallback" not in source and "optuna_integration" not in source


"""--tracker mlflow / wandb: every finished trial's parameters, CV score, fold scores and curves, logged offline.

Each test runs the real command line on a tiny study and reads what the tracker stored back with the tracker's
own formats (MLflow's client on its SQLite store; the records of W&B's offline run files). They skip when the
extra is not installed; the missing-extra error is tested without it.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from hpo import run
from hpo.errors import UsageError
from hpo.storage import open_storage
from hpo.study import trackers

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--algo", "fa", "--dataset", "digits", "--trials", "2", "--epochs", "2", "--folds", "2"]


def run_cli(*args, cwd: Path, env: dict[str, str]):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "hpo.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def finished_trials(storage: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="digits-mlp-fa", storage=open_storage(str(storage), create=False))
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))


def test_mlflow_logs_every_trial(tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install -e '.[mlflow]'")
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli(*TINY, "--storage", "s.journal", "--tracker", "mlflow", cwd=tmp_path,
                     env={"MLFLOW_TRACKING_URI": store})
    assert result.returncode == 0, result.stderr
    assert f"logging every trial to MLflow at {store} (view with: mlflow ui)" in result.stdout
    assert "INFO" not in result.stderr  # MLflow's database set-up lines are not shown
    trials = finished_trials(tmp_path / "s.journal")
    assert len(trials) == 2

    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("digits-mlp-fa")  # one experiment per study
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["0", "1"]  # one run per trial
    for trial in trials:
        logged = runs[str(trial.number)]
        assert logged.data.params == {k: str(v) for k, v in trial.params.items()}
        metrics = logged.data.metrics
        assert metrics["cv_accuracy"] == pytest.approx(trial.value)
        folds = [metrics["fold_0_accuracy"], metrics["fold_1_accuracy"]]
        assert folds == pytest.approx(trial.user_attrs["fold_scores"])
        assert logged.data.tags["state"] == trial.state.name.lower()
        assert logged.data.tags["dataset"] == "digits" and logged.data.tags["algo"] == "fa"  # study settings
        curve = client.get_metric_history(logged.info.run_id, "val_score")  # one point per epoch
        assert [m.step for m in curve] == [1, 2]
        stored = trial.user_attrs["curves"]["series"]["val_score"]  # per fold, per epoch
        assert [m.value for m in curve] == pytest.approx([sum(f[i] for f in stored) / 2 for i in range(2)], abs=1e-3)
        assert [m.step for m in client.get_metric_history(logged.info.run_id, "update_angle/total")] == [1, 2]


def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B run file: a 7-byte header, then LevelDB's log format (32 KiB blocks of
    chunks, each with a 7-byte header: CRC, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    block, position, pieces, records = 32768, 7, [], []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # too short for a chunk header: padding up to the next block
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:
            position += left
            continue
        pieces.append(data[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(pieces))
            records.append(record)
            pieces = []
    return records


def read_wandb_run(path: Path) -> dict:
    """name, group, config, summary and history (one dict per step) of an offline W&B run."""
    run_info, config, summary, history = {}, {}, {}, []
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_info = {"name": record.run.display_name, "group": record.run.run_group}
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.summary.update})
    return {**run_info, "config": {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()},
            "summary": summary, "history": history}


def test_wandb_logs_every_trial_offline(tmp_path):
    pytest.importorskip("wandb", reason="the wandb extra is not installed: pip install -e '.[wandb]'")
    env = {"WANDB_DIR": str(tmp_path / "tracking"), "WANDB_MODE": "offline", "WANDB_API_KEY": "",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}  # any network use would fail
    (tmp_path / "tracking").mkdir()
    result = run_cli(*TINY, "--storage", "s.journal", "--tracker", "wandb", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "logging every trial to W&B project 'bioplausible-hpo', offline mode" in result.stdout
    assert "wandb:" not in result.stdout + result.stderr  # W&B's banner lines are not shown
    trials = finished_trials(tmp_path / "s.journal")
    files = sorted((tmp_path / "tracking" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == len(trials) == 2  # one run per trial
    runs = {r["name"]: r for r in map(read_wandb_run, files)}
    for trial in trials:
        logged = runs[f"digits-mlp-fa-trial-{trial.number}"]
        assert logged["group"] == "digits-mlp-fa"
        assert {k: logged["config"][k] for k in trial.params} == trial.params
        assert logged["config"]["dataset"] == "digits" and logged["config"]["trial"] == trial.number
        assert logged["summary"]["cv_accuracy"] == pytest.approx(trial.value)
        assert [logged["summary"]["fold_0_accuracy"], logged["summary"]["fold_1_accuracy"]] == pytest.approx(
            trial.user_attrs["fold_scores"])
        assert logged["summary"]["state"] == trial.state.name.lower()
        steps = [h for h in logged["history"] if "val_score" in h]
        assert [h["epoch"] for h in steps] == [1.0, 2.0] and all("update_angle/total" in h for h in steps)


@pytest.mark.parametrize("tracker,module", [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_missing_extra_is_one_line_before_anything_is_created(tmp_path, monkeypatch, capsys, tracker, module):
    monkeypatch.setattr(trackers, "installed", lambda name: name != module)  # only ``module`` is missing
    storage, results = tmp_path / "s.journal", tmp_path / "results"
    assert run.main([*TINY, "--tracker", tracker, "--storage", str(storage), "--results-dir", str(results)]) == 2
    assert capsys.readouterr().err == (
        f"error: --tracker {tracker} needs {module.replace('_', '-')}, which is not installed; "
        f"install it with: pip install -e '.[{tracker}]'\n"
    )
    assert not storage.exists() and not results.exists()


def test_unknown_tracker_is_one_line(tmp_path, capsys):
    assert run.main([*TINY, "--tracker", "neptune", "--storage", str(tmp_path / "s.journal")]) == 2
    assert capsys.readouterr().err == "error: --tracker must be one of none, mlflow, wandb, got 'neptune'\n"
    assert not (tmp_path / "s.journal").exists()


def test_every_missing_package_of_an_extra_is_named(monkeypatch):
    monkeypatch.setattr(trackers, "installed", lambda name: False)
    monkeypatch.setitem(trackers.EXTRAS, "both", ("first_package", "second_package"))
    with pytest.raises(UsageError, match=r"^--tracker both needs first-package and second-package, which are not "):
        trackers.check_tracker("both")

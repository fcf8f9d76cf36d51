"""Which GPU and cores each local worker uses, and how much of its memory: decided in the parent, before JAX starts in the
worker (no GPU is needed to check what each worker receives)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpo.errors import UsageError
from hpo.parallel import devices
from hpo.parallel.devices import auto_workers, visible_gpus, worker_cores, worker_environment
from hpo.parallel.launcher import run_local_workers

VARIABLES = ("CUDA_VISIBLE_DEVICES", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE")


def test_gpus_are_counted_without_starting_jax(tmp_path):
    driver = tmp_path / "gpus"
    driver.mkdir()
    for bus in ("0000:01:00.0", "0000:02:00.0"):
        (driver / bus).mkdir()
    assert visible_gpus({}, driver) == ["0", "1"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3, GPU-ab12"}, driver) == ["3", "GPU-ab12"]  # the user's choice wins
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, driver) == []
    assert visible_gpus({}, tmp_path / "no-driver") == []


def test_workers_spread_over_the_gpus_and_share_memory_only_when_they_share_a_gpu():
    gpus = ["0", "1"]
    assert [worker_environment(i, 2, gpus, {}) for i in range(2)] == [
        {"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    four = [worker_environment(i, 4, gpus, {}) for i in range(4)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in four] == ["0", "1", "0", "1"]
    assert {e["XLA_PYTHON_CLIENT_MEM_FRACTION"] for e in four} == {"0.450"}  # two workers per GPU: 0.9 / 2
    many = worker_environment(0, 20, ["0"], {})
    assert many == {"CUDA_VISIBLE_DEVICES": "0", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # a share of 4.5% is too small
    assert worker_environment(0, 4, gpus, {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.2"}) == {"CUDA_VISIBLE_DEVICES": "0"}
    assert worker_environment(3, 4, [], {}) == {}  # no GPU: nothing to set


@dataclass(frozen=True)
class Probe:
    name: str
    folder: str


def record_environment(config: Probe, index: int) -> None:
    """A worker's body for the test: write down the variables it started with, and its cores."""
    seen = {name: os.environ.get(name) for name in VARIABLES}
    seen["cores"] = sorted(os.sched_getaffinity(0))
    seen["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS")
    Path(config.folder, f"w{index}.json").write_text(json.dumps(seen))


def test_each_spawned_worker_starts_with_its_gpu_and_memory_share(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    for name in VARIABLES[1:]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HPO_MAX_WORKERS", "3")  # three workers on a machine of any size (they only record)
    lines = []
    run_local_workers(record_environment, Probe("probe", str(tmp_path)), 3, lines.append, complete=lambda: True)
    seen = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(3)]
    assert [s["CUDA_VISIBLE_DEVICES"] for s in seen] == ["3", "5", "3"]
    assert {s["XLA_PYTHON_CLIENT_MEM_FRACTION"] for s in seen} == {"0.450"}
    assert lines == ["[probe] starting 3 worker processes on 2 GPUs"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5" and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ


PARENT = """
import sys
import jax._src.xla_bridge as xla_bridge
import hpo.study.runner

def launch(target, config, workers, out, complete):  # stands in for starting the workers: what has the parent started?
    print("jax started in the parent" if xla_bridge.backends_are_initialized() else "jax not started", flush=True)
    raise SystemExit(0)

hpo.study.runner.run_local_workers = launch
from hpo.run import main
main(sys.argv[1:])
"""


def test_the_parent_of_workers_checks_the_study_without_starting_jax(tmp_path):
    """The parent of ``--workers`` processes validates the study and opens its storage but never starts JAX:
    on a GPU machine JAX would preallocate most of a GPU's memory in the parent, beside its workers."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    for model in ("mlp", "cnn"):
        run = subprocess.run(
            [sys.executable, "-c", PARENT, "--algo", "fa", "--model", model, "--dataset", "digits", "--workers", "2",
             "--trials", "2", "--storage", str(tmp_path / f"{model}.journal"), "--results-dir", str(tmp_path)],
            cwd=root, capture_output=True, text=True, timeout=300,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.strip().splitlines()[-1] == "jax not started", run.stdout


def test_workers_get_disjoint_runs_of_cores():
    assert [worker_cores(i, 2, [0, 1]) for i in range(2)] == [[0], [1]]
    assert [worker_cores(i, 3, list(range(8))) for i in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert [worker_cores(i, 2, [2, 5, 7]) for i in range(2)] == [[2, 5], [7]]  # the cores this process may use
    assert worker_cores(0, 3, [0, 1]) is None  # more workers than cores (HPO_MAX_WORKERS): nobody is pinned
    assert worker_environment(0, 2, [], {}, cores=[4, 5]) == {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2",
                                                               "MKL_NUM_THREADS": "2"}
    assert "OMP_NUM_THREADS" not in worker_environment(0, 2, [], {"OMP_NUM_THREADS": "8"}, cores=[0])  # the user's


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to give two workers one each")
def test_each_spawned_worker_runs_on_cores_of_its_own(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "NVIDIA_GPUS", tmp_path / "no-driver")
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    run_local_workers(record_environment, Probe("probe", str(tmp_path)), 2, lambda line: None, complete=lambda: True)
    seen = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    mine = sorted(os.sched_getaffinity(0))
    assert [s["cores"] for s in seen] == [worker_cores(i, 2, mine) for i in range(2)]
    assert not set(seen[0]["cores"]) & set(seen[1]["cores"])
    assert [s["OMP_NUM_THREADS"] for s in seen] == [str(len(s["cores"])) for s in seen]
    assert sorted(os.sched_getaffinity(0)) == mine  # the parent keeps every core (it retrains the test seeds)


def test_auto_is_one_worker_per_core_or_gpu_within_memory_and_trials(monkeypatch, tmp_path):
    monkeypatch.setattr(devices, "usable_cores", lambda: 4)
    monkeypatch.setattr(devices, "available_memory", lambda: 64 * 2**30)
    no_gpu = {}
    monkeypatch.setattr(devices, "NVIDIA_GPUS", tmp_path / "no-driver")
    assert auto_workers(50, no_gpu) == (4, "one per core")
    assert auto_workers(3, no_gpu) == (3, "one per trial left of 4 cores")
    monkeypatch.setattr(devices, "available_memory", lambda: 7 * 2**30)  # 3 GB per worker: room for 2
    count, why = auto_workers(50, no_gpu)
    assert count == 2 and why.startswith("2 of 4 cores (") and "GB of available memory" in why
    monkeypatch.setattr(devices, "available_memory", lambda: 64 * 2**30)
    assert auto_workers(50, {"CUDA_VISIBLE_DEVICES": "0,1"}) == (2, "one per GPU")
    assert auto_workers(50, {"HPO_WORKERS": "1"}) == (1, "HPO_WORKERS=1")
    with pytest.raises(UsageError, match="HPO_WORKERS must be a whole number >= 1, got 'two'"):
        auto_workers(50, {"HPO_WORKERS": "two"})


def test_the_first_line_says_the_worker_layout(monkeypatch):
    from hpo.config import StudyConfig
    from hpo.study import runner

    monkeypatch.delenv("HPO_WORKERS", raising=False)
    monkeypatch.setattr(runner, "visible_gpus", lambda: [])
    monkeypatch.setattr(runner, "auto_workers", lambda left: (min(2, left), "one per core"))
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: {0, 1})
    assert runner.worker_layout(StudyConfig(), 50) == (2, "2 workers, one per core: cores 0 / 1")
    assert runner.worker_layout(StudyConfig(), 1) == (1, "1 worker: one per core")
    assert runner.worker_layout(StudyConfig(workers=1), 50) == (1, "1 worker")
    assert runner.worker_layout(StudyConfig(workers=2), 50) == (2, "2 workers: cores 0 / 1")

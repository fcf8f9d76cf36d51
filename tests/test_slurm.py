"""python -m hpo.slurm on a real single-node Slurm cluster and a real PostgreSQL: a grid as a 3-task job array whose
tasks are workers of one study, finished once by a dependent job; and a task cancelled mid-trial."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pg_server
import pytest
import slurm_cluster
from optuna.trial import TrialState

from hpo.record import read_study, read_trial
from hpo.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
JOB_SECONDS = 900  # the whole array on a loaded 2-core machine, generously
STUDY = "digits-mlp-bp"

pytestmark = pytest.mark.skipif(
    bool(slurm_cluster.missing_reason() or pg_server.missing_reason()),
    reason=str(slurm_cluster.missing_reason() or pg_server.missing_reason()),
)


@pytest.fixture(scope="module")
def cluster():
    with slurm_cluster.SlurmCluster.start() as running:
        yield running


@pytest.fixture
def database():
    with pg_server.PostgresServer.start() as server:
        yield server


def grid(tmp_path: Path, trials: int, epochs: int) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(f'trials = {trials}\nepochs = {epochs}\nfolds = 2\ntest_seeds = 2\npruner = "none"\n'
                    f'results_dir = "{tmp_path / "results"}"\ncache_dir = "{tmp_path / "programs"}"\n'
                    '[space]\nwidth = [16]\ndepth = 1\n'
                    '[[grid]]\ndatasets = ["digits"]\nmodels = ["mlp"]\nalgos = ["bp"]\n')
    return path


def submit(cluster, database, tmp_path: Path, trials: int, epochs: int) -> tuple[str, str]:
    env = {**cluster.env, "PYTHONPATH": str(ROOT), "HPO_HEARTBEAT_SECONDS": "2", "HPO_GRACE_SECONDS": "6"}
    done = subprocess.run(
        [sys.executable, "-m", "hpo.slurm", "--config", str(grid(tmp_path, trials, epochs)), "--array", "3",
         "--storage", database.url, "--submit", "--cpus-per-task", "1", "--script-dir", str(tmp_path / "slurm")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert database.password not in done.stdout + done.stderr  # the URL is shown without its password
    for script in (tmp_path / "slurm").glob("*.sbatch"):
        assert database.password not in script.read_text()  # nor written into the job scripts
    line = next(line for line in done.stdout.splitlines() if line.startswith("submitted job array "))
    words = line.split()
    return words[3], words[8]


def slurm_task_of(pid: int) -> tuple[str, str] | None:
    """The (array job, task) whose environment the process ``pid`` runs in; None where it has ended or has none.
    The cluster is this machine: a worker's own environment says which task started it."""
    try:
        variables = dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                         if b"=" in item)
    except OSError:
        return None
    job, task = variables.get(b"SLURM_ARRAY_JOB_ID"), variables.get(b"SLURM_ARRAY_TASK_ID")
    return (job.decode(), task.decode()) if job and task else None


def study_of(database) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=open_storage(database.url, create=False))


def logs(tmp_path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in (tmp_path / "slurm" / "logs").glob("*.out")}


def test_a_job_array_runs_one_study_with_its_exact_total_and_finishes_once(cluster, database, tmp_path):
    array, finish = submit(cluster, database, tmp_path, trials=12, epochs=1)
    states = cluster.wait(array, finish, timeout=JOB_SECONDS)
    assert set(states.values()) == {"COMPLETED"} and len(states) == 4, states
    trials = study_of(database).get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 12
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({read_trial(t).worker["pid"] for t in trials if read_trial(t).worker}) >= 2  # several tasks worked
    assert len(read_study(study_of(database)).test.scores) == 2
    assert (tmp_path / "results" / "summary.csv").is_file()
    written = logs(tmp_path)  # one log per task: <job>-<array job>_<task>.out, and the finishing job's <job>-<id>.out
    reporting = [name for name, text in written.items() if "wrote summaries and charts" in text]
    retraining = [name for name, text in written.items() if "best trial #" in text]
    assert len(written) == 4 and reporting == retraining == [f"hpo-grid-{finish}.out"], written.keys()
    assert sorted(written) == sorted([f"hpo-grid-{finish}.out"] + [f"hpo-grid-{array}_{task}.out" for task in range(3)])


@pytest.mark.slow  # a second array whose tasks train longer, so that one can be cancelled mid-trial
def test_a_cancelled_task_leaves_no_trial_running_and_its_trial_is_retried(cluster, database, tmp_path):
    # trials of 200 epochs (a few seconds each): the one a task is training is still running when it is cancelled
    array, finish = submit(cluster, database, tmp_path, trials=12, epochs=200)
    deadline = time.monotonic() + JOB_SECONDS
    victim = None
    while victim is None:  # a task that is training a trial (the node runs as many tasks as it has cores)
        assert time.monotonic() < deadline, "no task started a trial"
        try:
            running = study_of(database).get_trials(states=(TrialState.RUNNING,))
        except KeyError:
            running = []
        owners = [read_trial(t).worker for t in running if read_trial(t).compile_seconds is not None]
        tasks = {slurm_task_of(owner["pid"]) for owner in owners if owner}
        victim = next((f"{array}_{task}" for job, task in sorted(tasks - {None}) if job == array), None)
        if victim is None:
            time.sleep(0.2)
    subprocess.run(["scancel", victim], env=cluster.env, check=True)
    states = cluster.wait(array, finish, timeout=JOB_SECONDS)
    assert states[victim] == "CANCELLED" and states[f"{finish}"] == "COMPLETED", states
    trials = study_of(database).get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 12
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    stopped = [t for t in trials if t.state == TrialState.FAIL and read_trial(t).surplus is None]
    assert stopped  # the cancelled task's trial, failed ...
    for trial in stopped:  # ... and retried with the same parameters
        retries = [r for r in trials if r.system_attrs.get("failed_trial") == trial.number]
        assert len(retries) == 1 and retries[0].params == trial.params
    assert len(read_study(study_of(database)).test.scores) == 2

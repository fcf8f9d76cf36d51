"""What a running study prints: elapsed time and ETA per trial, epochs of long trials (a bar on a terminal,
lines elsewhere), a pruned trial's reason, and no library warnings that ask nothing of the user."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from hpo import run
from hpo.config import StudyConfig
from hpo.console import clock
from hpo.report import __main__ as report_command
from hpo.storage import open_storage
from hpo.study.progress import EpochProgress, StudyClock
from hpo.study.runner import Progress

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--algo", "fa", "--dataset", "digits", "--trials", "3", "--epochs", "2", "--folds", "2"]
TRIAL_LINE = re.compile(
    r"^\[digits-mlp-fa\] (\d)/3 trial #\d (complete|pruned): .* \| [\d.]+s \| elapsed (\d+:\d\d), (ETA \d+:\d\d|done)$"
)


def test_clock_and_eta():
    now = [100.0]
    study_clock = StudyClock(total=10, done_at_start=4, now=lambda: now[0])
    assert study_clock.text(4) == "elapsed 0:00, ETA ?"  # nothing finished by this run yet: no rate
    now[0] = 130.0
    assert study_clock.text(6) == "elapsed 0:30, ETA 1:00"  # 2 trials in 30 s, 4 to go
    now[0] = 100.0 + 2 * 3600
    assert study_clock.text(9) == "elapsed 2:00:00, ETA 24:00"
    assert study_clock.text(10) == "elapsed 2:00:00, done"
    assert clock(59.6) == "1:00" and clock(3725) == "1:02:05"


def test_pruned_trial_line_gives_the_reason():
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.9, user_attrs={"wall_seconds": 2.0}))
    pruned = optuna.trial.create_trial(
        state=TrialState.PRUNED, intermediate_values={0: 0.4, 1: 0.5}, value=0.5,
        user_attrs={"pruned_reason": "pruner stopped the trial after epoch 2", "wall_seconds": 1.5},
    )
    study.add_trial(pruned)
    lines = []
    Progress(StudyConfig(trials=5, study_name="s"), "accuracy", lines.append)(study, study.trials[-1])
    assert re.fullmatch(
        r"\[s\] 2/5 trial #1 pruned: accuracy 0\.5000 \(pruner stopped the trial after epoch 2\) \| best 0\.9000 "
        r"\(#0\) \| 1\.5s \| elapsed 0:00, ETA 0:0\d", lines[0]), lines[0]


def test_epoch_lines_only_for_long_trials():
    lines = []
    progress = EpochProgress("s", "accuracy", lines.append, terminal=False, after=10.0)
    progress(0, 1, 5, 0.5, 4.0)  # a short trial so far: quiet
    progress(0, 2, 5, 0.6, 11.0)
    progress(0, 3, 5, 0.7, 12.0)  # fast epochs after a long compilation: one line per 10 s
    progress(0, 4, 5, 0.8, 21.5)
    progress(1, 1, 5, 0.4, 10.5)  # the next trial
    assert lines == ["[s] trial #0 epoch 2/5: accuracy 0.6000 | 11.0s", "[s] trial #0 epoch 4/5: accuracy 0.8000 | 21.5s",
                     "[s] trial #1 epoch 1/5: accuracy 0.4000 | 10.5s"]


def test_a_long_epoch_is_never_silent_and_a_finished_trial_is_not_watched():
    """While an epoch runs longer than the threshold, a line says which epoch it is in and for how long, once per
    threshold; a trial shorter than the threshold says nothing; the watch ends with the trial."""
    lines, after = [], 0.3
    running = re.compile(r"\[s\] trial #1 running epoch (\d)/2 \| (\d+\.\d)s")

    def wait_for(condition) -> None:  # a loaded machine may run the watch late, never early
        deadline = time.monotonic() + 20
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)

    progress = EpochProgress("s", "accuracy", lines.append, terminal=False, after=after)
    progress(0, 0, 2, float("nan"), 0.0)  # a short trial: started, done before the threshold
    progress(0, 1, 2, 0.5, 0.1)
    progress(0, 2, 2, 0.6, 0.2)
    progress.finish(0)
    time.sleep(2 * after)
    assert lines == []
    progress(1, 0, 2, float("nan"), 0.0)  # a trial whose first epoch runs long
    wait_for(lambda: len(lines) >= 2)
    seconds = [float(running.fullmatch(line).group(2)) for line in lines if running.fullmatch(line).group(1) == "1"]
    assert len(seconds) == len(lines) >= 2 and seconds[0] >= after and seconds[1] - seconds[0] >= after - 0.11, lines  # .1f rounding
    progress(1, 1, 2, 0.7, 1.2)
    assert lines[-1] == "[s] trial #1 epoch 1/2: accuracy 0.7000 | 1.2s"
    wait_for(lambda: running.fullmatch(lines[-1]))
    assert running.fullmatch(lines[-1]).group(1) == "2", lines
    progress.finish()  # the study's trials are over: the watch ends and says nothing more
    progress.thread.join(5)
    count = len(lines)
    time.sleep(2 * after)
    assert not progress.thread.is_alive() and len(lines) == count


def test_a_long_epoch_on_a_terminal_shows_in_the_trials_bar(capsys):
    progress = EpochProgress("s", "accuracy", print, terminal=True, after=0.2)
    progress(3, 0, 4, float("nan"), 0.0)
    deadline = time.monotonic() + 20
    while progress.bar is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    progress.finish(3)
    screen = capsys.readouterr().out
    assert re.search(r"\[s\] trial #3: +0%\|.*\| 0/4 \[.*epoch 1 running, \d+s\]", screen), screen


def run_cli(args, cwd, env, terminal=False):
    """Run hpo.run; with ``terminal``, its stdout is a pseudo-terminal (what a user's shell gives it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    command = [sys.executable, "-m", "hpo.run", *args]
    if not terminal:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600).stdout
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 24 rows, 120 columns
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    chunks = []

    def read() -> None:
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    process.wait(600)
    reader.join(30)
    os.close(leader)
    assert process.returncode == 0, process.stderr.read()
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow  # 30-50 s of study processes or eager training; run with -m slow
def test_cli_progress_lines_with_eta_and_epochs(tmp_path):
    """Every trial line has elapsed time and ETA; with the long-trial threshold at 0 s, epochs show as lines in
    a pipe and as a tqdm bar on a terminal."""
    env = {"HPO_EPOCH_PROGRESS_SECONDS": "0"}
    piped = run_cli([*TINY, "--storage", "a.journal"], tmp_path, env).splitlines()
    trial_lines = [line for line in piped if TRIAL_LINE.match(line)]
    assert [TRIAL_LINE.match(line).group(1) for line in trial_lines] == ["1", "2", "3"]
    assert [TRIAL_LINE.match(line).group(4).split()[0] for line in trial_lines] == ["ETA", "ETA", "done"]
    for number in range(3):
        epochs = [line for line in piped if line.startswith(f"[digits-mlp-fa] trial #{number} epoch ")]
        assert [line.split(" epoch ")[1].split(":")[0] for line in epochs] in (["1/2", "2/2"], ["1/2"])  # 1: pruned

    screen = run_cli([*TINY, "--storage", "b.journal"], tmp_path, env, terminal=True)
    assert re.search(r"\[digits-mlp-fa\] trial #0: +\d+%\|.*\| 1/2 \[", screen), screen  # the bar, at epoch 1
    assert "trial #0 epoch 1/2" not in screen  # no plain lines on a terminal
    assert re.search(r"\[digits-mlp-fa\] 3/3 trial #2 \w+: .* \| elapsed \d+:\d\d, done", screen)


def test_bad_threshold_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HPO_EPOCH_PROGRESS_SECONDS", "soon")
    assert run.main([*TINY, "--storage", str(tmp_path / "s.journal")]) == 2
    assert capsys.readouterr().err == "error: HPO_EPOCH_PROGRESS_SECONDS must be a number of seconds >= 0, got 'soon'\n"
    assert not (tmp_path / "s.journal").exists()


def test_rough_importances_say_so_on_their_chart_and_print_no_warnings(tmp_path, capsys):
    """Conditional parameters seen in few trials: Optuna's PED-ANOVA warns for each, per estimate; the report shows
    each importance with its bootstrap spread and says on the chart that 8 trials give a rough estimate."""
    storage = str(tmp_path / "s.journal")
    study = optuna.create_study(study_name="digits-mlp-fa", storage=open_storage(storage), direction="maximize")
    for key, value in {"dataset": "digits", "model": "mlp", "algo": "fa", "metric": "accuracy"}.items():
        study.set_user_attr(key, value)
    for i in range(8):
        optimizer = "sgd" if i == 0 else "adam"  # lr_sgd and momentum in one trial, lr_adam absent from one
        params = {"optimizer": optimizer, f"lr_{optimizer}": 0.01 * (i + 1)}
        distributions = {"optimizer": CategoricalDistribution(["adam", "sgd"]),
                         f"lr_{optimizer}": FloatDistribution(1e-4, 1.0, log=True)}
        if optimizer == "sgd":
            params["momentum"], distributions["momentum"] = 0.5 + i / 10, FloatDistribution(0.5, 0.99)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=0.5 + i / 20))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert report_command.main(["--storage", storage, "--results-dir", str(tmp_path / "results")]) == 0
    assert not [w for w in caught if "Some regimes" in str(w.message)]
    assert "Some regimes" not in capsys.readouterr().err
    page = (tmp_path / "results" / "studies" / "digits-mlp-fa" / "importance.html").read_text()
    assert "bootstraps of 8 complete trials): rough, from fewer than 20 trials" in page

"""What a running study tells its user: elapsed time and ETA on every trial line, progress inside long trials.

* ``StudyClock``: elapsed time of this run and the remaining time, from the study's rate since this run began
  (trials finished by every worker, so ``--workers`` and other machines speed the ETA up as they should).
* ``EpochProgress``: once a trial has run for ``LONG_TRIAL_SECONDS``, its epochs: a tqdm bar on a terminal,
  updated every epoch and gone when the trial ends; otherwise (a log file, a notebook, ``--workers``) a line
  per epoch, at most one per ``LONG_TRIAL_SECONDS``.
* ``outcome``: what a finished trial's line says about how it ended, including why a pruned trial was stopped.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from optuna.trial import FrozenTrial, TrialState

from hpo.console import clock, long_trial_seconds
from hpo.record import read_trial

Printer = Callable[[str], None]
class StudyClock:
    """Elapsed time since this run started and the ETA of the study's remaining trials."""

    def __init__(self, total: int, done_at_start: int, now: Callable[[], float] = time.monotonic):
        self.total, self.done_at_start, self.now = total, done_at_start, now
        self.started = now()

    def text(self, done: int) -> str:
        """``elapsed 1:05, ETA 2:10`` (``ETA ?`` before this run has finished a trial; ``done`` at the end)."""
        elapsed = self.now() - self.started
        if done >= self.total:
            return f"elapsed {clock(elapsed)}, done"
        finished_here = done - self.done_at_start
        eta = clock(elapsed / finished_here * (self.total - done)) if finished_here > 0 else "?"
        return f"elapsed {clock(elapsed)}, ETA {eta}"


def outcome(trial: FrozenTrial, metric: str) -> str:
    """How ``trial`` ended, for its progress line: its score, and why a pruned trial was stopped (a diverged
    trial's last reported value, e.g. "mse 3.5e32", says nothing about why) or a surplus trial ended at once."""
    value = f"{metric} {trial.value:.4f}" if trial.value is not None else ""
    record = read_trial(trial)
    reason = {TrialState.PRUNED: record.pruned_reason, TrialState.FAIL: record.surplus}.get(trial.state)
    if reason and value:
        return f"{value} ({reason})"
    return reason or value


class EpochProgress:
    """Per-epoch progress of trials that run longer than ``after`` seconds, and no silent stretch longer than that.

    Called by the objective when a trial starts (epoch 0) and after every epoch (``hpo.study.objective.Objective``'s
    ``on_epoch``); ``finish(trial)`` ends a trial's bar before its result line is printed. While a trial's epoch runs
    longer than ``after`` seconds (a CNN or segregated-dendrites epoch on a CPU takes minutes), a background thread
    says which epoch it is in and for how long, every ``after`` seconds, as ``hpo.console.Steps`` does for other long
    steps: a quiet log is then a stopped process, never a slow epoch.
    """

    def __init__(self, name: str, metric: str, out: Printer, terminal: bool | None = None, after: float | None = None):
        self.name, self.metric, self.out = name, metric, out
        self.after = long_trial_seconds() if after is None else after
        self.terminal = (out is print and sys.stdout.isatty()) if terminal is None else terminal
        self.bar: Any = None  # tqdm's bar of the trial shown on a terminal
        self.bar_trial: int | None = None
        self.running: dict[int, _Running] = {}  # trials started and not finished
        self.lock = threading.RLock()
        self.thread: threading.Thread | None = None

    def __call__(self, trial_number: int, epoch: int, epochs: int, score: float, seconds: float) -> None:
        """``epoch`` of ``epochs`` done after ``seconds`` in the trial, with mean validation ``score``; epoch 0:
        the trial has started."""
        with self.lock:
            run = self.running.setdefault(trial_number, _Running(time.monotonic() - seconds, epochs))
            run.done, run.score = epoch, score
            if epoch == 0:
                self._keep_watch()
                return
            if self._epoch_done(trial_number, run, epoch, epochs, score, seconds):
                run.spoken = time.monotonic()

    def _epoch_done(self, trial_number: int, run: _Running, epoch: int, epochs: int, score: float,
                    seconds: float) -> bool:
        """Show the epoch if the trial is long; whether it was shown."""
        if seconds < self.after and (self.bar is None or self.bar_trial != trial_number):
            return False
        if not self.terminal:
            # a line when the trial passes ``after`` seconds and then at most one per ``after`` seconds: epochs
            # that follow a long compilation within a second would otherwise fill a log with lines
            if run.printed is None or seconds - run.printed >= self.after:
                run.printed = seconds
                self.out(
                    f"[{self.name}] trial #{trial_number} epoch {epoch}/{epochs}: {self.metric} {score:.4f} "
                    f"| {seconds:.1f}s"
                )
                return True
            return False
        self._bar(trial_number, epoch, epochs)
        self.bar.set_postfix_str(f"{self.metric} {score:.4f}", refresh=False)
        self.bar.update(1)
        return True

    def _bar(self, trial_number: int, epoch: int, epochs: int) -> None:
        """The terminal's bar for ``trial_number``, made at ``epoch - 1`` epochs done if it has none."""
        if self.bar is not None and self.bar_trial != trial_number:
            self._close_bar()
        if self.bar is None:
            from tqdm import tqdm

            self.bar_trial = trial_number
            size = shutil.get_terminal_size()  # 80x24 where the terminal tells none (tqdm would then draw nothing)

            self.bar = tqdm(
                total=epochs, initial=epoch - 1, desc=f"[{self.name}] trial #{trial_number}", unit="epoch",
                leave=False, file=sys.stdout, ncols=size.columns, nrows=size.lines, mininterval=0, miniters=1,
            )

    def _keep_watch(self) -> None:
        """Start the thread that speaks for epochs running long, unless it runs (it ends with the last trial)."""
        if self.after > 0 and (self.thread is None or not self.thread.is_alive()):
            self.thread = threading.Thread(target=self._watch, name="epoch-progress", daemon=True)
            self.thread.start()

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.after))
            with self.lock:
                if not self.running:
                    return
                now = time.monotonic()
                for trial_number, run in self.running.items():
                    if now - max(run.started, run.spoken) >= self.after:
                        run.spoken = now
                        self._still_running(trial_number, run, now - run.started)

    def _still_running(self, trial_number: int, run: _Running, seconds: float) -> None:
        epoch = min(run.done + 1, run.epochs)
        if not self.terminal:
            self.out(f"[{self.name}] trial #{trial_number} running epoch {epoch}/{run.epochs} | {seconds:.1f}s")
            return
        self._bar(trial_number, epoch, run.epochs)
        score = f"{self.metric} {run.score:.4f}, " if run.done else ""
        self.bar.set_postfix_str(f"{score}epoch {epoch} running, {seconds:.0f}s")  # refreshes the bar

    def finish(self, trial_number: int | None = None) -> None:
        """``trial_number`` (None: every trial) has ended: its bar goes, and its watch."""
        with self.lock:
            for number in list(self.running) if trial_number is None else [trial_number]:
                self.running.pop(number, None)
            if trial_number is None or self.bar_trial == trial_number:
                self._close_bar()

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class _Running:
    """A trial between its start and its result line, as ``EpochProgress`` watches it."""

    started: float  # time.monotonic() at its start
    epochs: int
    done: int = 0  # epochs done
    score: float = float("nan")  # after the last epoch done
    spoken: float = 0.0  # time.monotonic() at its last line (0: none yet)
    printed: float | None = None  # the trial's seconds at its last plain epoch line

"""What a long command tells its user: progress lines, clocks and counts, shared by every package below the command
line (``hpo.cli`` is the top: nothing under it imports it)."""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

from hpo.errors import UsageError

Printer = Callable[[str], None]


LONG_TRIAL_SECONDS = 10.0  # trials running longer than this show their epochs ($HPO_EPOCH_PROGRESS_SECONDS)


def long_trial_seconds() -> float:
    """Seconds after which a trial shows its epochs: ``$HPO_EPOCH_PROGRESS_SECONDS`` (0: always), else 10."""
    text = os.environ.get("HPO_EPOCH_PROGRESS_SECONDS", "")
    if not text:
        return LONG_TRIAL_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise UsageError(f"HPO_EPOCH_PROGRESS_SECONDS must be a number of seconds >= 0, got {text!r}")
    return seconds


def clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def plural(n: int, noun: str) -> str:
    """``1 study``, ``2 studies``, ``1 epoch``, ``10 epochs``."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


class Steps:
    """A long step's progress lines: ``report(text)`` prints ``[name] text | 12.3s`` once the step has taken
    ``after`` seconds (and then whenever told something new after ``after`` more), and while one piece of work
    runs longer than that, a background thread repeats the last state with the time, every ``after`` seconds: no
    silent stretch longer than ``after``. A context manager: the thread ends with the block."""

    def __init__(self, name: str, out: Printer, after: float | None = None):
        self.name, self.out = name, out
        self.after = long_trial_seconds() if after is None else after
        self.started = time.monotonic()
        self.state = "starting"
        self.spoken: float | None = None  # seconds at the last line printed
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._keep_talking, name="progress", daemon=True)

    def __enter__(self) -> Steps:
        if self.after > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def report(self, state: str) -> None:
        """The step is now at ``state``; said if the step is long and it has not spoken for ``after`` seconds."""
        with self.lock:
            self.state = state
            seconds = self.elapsed()
            if seconds >= self.after and (self.spoken is None or seconds - self.spoken >= self.after):
                self._say(seconds)

    def _say(self, seconds: float) -> None:
        self.spoken = seconds
        self.out(f"[{self.name}] {self.state} | {seconds:.1f}s")

    def _keep_talking(self) -> None:
        while not self.stopped.wait(min(1.0, self.after)):
            with self.lock:
                seconds = self.elapsed()
                if seconds >= self.after and (self.spoken is None or seconds - self.spoken >= self.after):
                    self._say(seconds)

"""Ctrl-C (SIGINT) and SIGTERM (``kill``, ``scancel``, ``docker stop``) stop a study the same way, every time.

Inside ``with handle_interrupts():`` both signals raise ``Interrupted`` (a ``KeyboardInterrupt``, so every handler of
Ctrl-C also handles SIGTERM): the running trial is failed and re-queued with the same parameters
(``hpo.parallel.workers.Held``), local worker processes are told too (``hpo.parallel.launcher``), and the process
exits with ``128 + signal`` (130, 143). Only the first signal interrupts; later ones, while the trial is being re-queued,
are noted and ignored, so a second Ctrl-C or a SIGTERM sent to every process of a job cannot cut the re-queue
short. Inside ``with deferred():`` the first signal is held until the block ends and raised there: a storage
call that creates or ends a trial is never cut between its write and the caller learning of it, so no trial is
left running with nobody holding it; nor is a journal's append or replay (``hpo.storage.journal``).

``exit_now(code)`` ends an interrupted process without the interpreter's shutdown. JAX compiles on a thread
pool of XLA's and the main thread waits for the result interruptibly, so a signal during a compilation leaves
it running. The interpreter's shutdown then destroys JAX's client (``PjRtClient``: its devices first, then its
threads) under the running compilation, which dereferences a destroyed device: a segmentation fault after
the "interrupted" message (3 of 4 interrupts 2 s into a compilation, about 1 in 4 at random points of the default
study; native stack seen in gdb:
``PjRtCompiler::CompileAndLoad`` -> ``SingleDeviceSharding::Create`` on a worker thread, ``~PjRtClient`` in
``Py_FinalizeEx`` on the main thread). Nothing is lost by skipping the shutdown: every result is in the
storage by then, and the standard streams are flushed first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM; ``exit_code`` is the shell's ``128 + signal``."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: list[int] = []  # signals received inside handle_interrupts(), in order
_state = {"deferring": 0, "raised": False}  # open deferred() blocks; whether the first signal has been raised


def _raise_first() -> None:
    _state["raised"] = True
    raise Interrupted(_received[0])


def _handler(signum: int, frame) -> None:
    _received.append(signum)
    if len(_received) == 1 and not _state["deferring"]:
        _raise_first()


def _quiet_unraisable(previous):
    """An unraisable-exception hook that drops ``Interrupted``: a signal that arrives inside a garbage-collector
    callback (JAX registers one) or a ``__del__`` cannot be raised there, and Python would print its traceback;
    it is not lost, ``received()`` keeps it for the next check."""

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, Interrupted):
            previous(unraisable)

    return hook


@contextlib.contextmanager
def handle_interrupts() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise ``Interrupted`` once; the previous handlers come back after.

    Main thread only (elsewhere it changes nothing). A signal that the parent ignored (``nohup``, a shell's
    background job without job control) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    previous_hook = sys.unraisablehook
    _received.clear()
    _state.update(deferring=0, raised=False)
    sys.unraisablehook = _quiet_unraisable(previous_hook)
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = previous_hook
        _received.clear()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold an interrupt that arrives while the block runs and raise it when the block ends (if the block raised,
    its own exception goes on; ``received()`` still says the signal came). Blocks nest.

    In any thread but the main one it changes nothing: signals reach the main thread only, and a block held open
    by another thread would hold back the main thread's interrupt and then raise it in the wrong thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
    if _received and not _state["raised"] and not _state["deferring"]:
        _raise_first()


def received() -> int | None:
    """The first interrupting signal received, or None: an interrupt swallowed by library code is not lost."""
    return _received[0] if _received else None


def exit_code_of(error: BaseException) -> int:
    return error.exit_code if isinstance(error, Interrupted) else 128 + signal.SIGINT


def exit_now(code: int) -> None:
    """Flush the standard streams and end the process with ``code``, skipping the interpreter's shutdown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)

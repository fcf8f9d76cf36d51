"""Local worker processes (``--workers W``): start them with the spawn start method and wait for them.

Process launching is kept apart from the trial loop (``hpo.parallel.workers``) and from what a worker runs
(``hpo.study.runner``): this module starts ``target(config, index)`` in W fresh interpreters and knows nothing else.
Never fork after JAX has started: a forked child inherits XLA's threads in an undefined state.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from typing import Any, Callable, Iterator

from hpo.errors import ReportedError, StorageError, UsageError, WorkerError
from hpo.parallel.devices import check_workers, visible_gpus, worker_cores, worker_environment
from hpo.parallel.interrupts import SIGNALS, Interrupted

REPORTED_EXIT_CODES = (UsageError.exit_code, StorageError.exit_code)  # a worker printed its one-line error
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when the thread that created it ends

Printer = Callable[[str], None]


@contextlib.contextmanager
def environment(settings: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``settings`` applied, restored afterwards."""
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def die_with_parent(parent: int) -> None:
    """Make this worker end when its parent does, however the parent ends (SIGKILL and the out-of-memory killer
    included): on Linux the kernel sends it SIGTERM (``PR_SET_PDEATHSIG``), which fails and re-queues its running
    trial like any SIGTERM. A parent that died before this ran is noticed at once."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(128 + signal.SIGTERM)


def _worker(target: Callable[[Any, int], Any], config: Any, index: int, parent: int, cores: list[int] | None) -> None:
    """What a spawned worker process runs: tied to its parent's life first, on its own ``cores`` (before JAX
    starts its threads, whose number follows them), then ``target(config, index)``."""
    die_with_parent(parent)
    if cores:
        os.sched_setaffinity(0, cores)
    target(config, index)


def run_local_workers(
    target: Callable[[Any, int], Any], config: Any, workers: int, out: Printer, complete: Callable[[], bool]
) -> None:
    """Run ``target(config, i)`` for ``i`` in ``range(workers)``, each in its own spawned process, and wait.

    ``target`` must be a module-level function (spawn pickles it by name). Each worker prints its own progress
    lines and dies with this process (``die_with_parent``). Raises ReportedError when the first worker that failed
    said why itself (bad input: exit code 2, a failed storage: 3) and Interrupted when a signal stopped one. A
    worker that died otherwise (killed, out of memory) is said in one line: if the others still completed the study
    (``complete()``) that is all, else WorkerError.
    """
    check_workers(workers)
    context = multiprocessing.get_context("spawn")
    cores = [worker_cores(i, workers) for i in range(workers)]
    processes = [
        context.Process(target=_worker, args=(target, config, i, os.getpid(), cores[i]), name=f"hpo-worker-{i}")
        for i in range(workers)
    ]
    gpus = visible_gpus()
    out(f"[{config.name}] starting {workers} worker processes" + (f" on {len(gpus)} GPUs" if gpus else ""))
    for i, process in enumerate(processes):
        # a spawned interpreter starts with this process's environment: set each worker's GPU before it starts
        with environment(worker_environment(i, workers, gpus, cores=cores[i])):
            process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt as interrupt:
        # Ctrl-C in a terminal reaches every worker; kill, scancel or docker stop may reach only this process.
        # Pass the signal on (a worker acts on the first one it gets and ignores repeats): each worker fails and
        # re-queues its running trial and exits; wait for all of them, so none is left training as an orphan.
        signum = getattr(interrupt, "signum", signal.SIGINT)
        for process in processes:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)
        for process in processes:
            process.join()
        raise
    failed = [(i, p.exitcode) for i, p in enumerate(processes) if p.exitcode is not None and p.exitcode != 0]
    if failed:
        i, code = failed[0]
        if code in REPORTED_EXIT_CODES:
            raise ReportedError(code)  # the worker printed its own one-line error
        # that worker alone was interrupted (and re-queued its trial): so is the study
        if any(code - 128 == s for s in SIGNALS):
            raise Interrupted(code - 128)
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        if complete():
            out(f"[{config.name}] worker w{i} {how}; the other workers completed the study")
            return
        raise WorkerError(
            f"worker w{i} of study {config.name!r} {how} before the study was complete; rerun the same command to "
            "resume it (its running trial is retried)"
        )

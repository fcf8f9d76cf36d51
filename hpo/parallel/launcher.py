"""Local worker processes (``--workers W``): start them with the spawn start method and wait for them.

Process launching is kept apart from the trial loop (``hpo.parallel.workers``) and from what a worker runs
(``hpo.study.runner``): this module starts ``target(config, index)`` in W fresh interpreters and knows nothing else.
Never fork after JAX has started: a forked child inherits XLA's threads in an undefined state.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from typing import Any, Callable, Iterator

from hpo.errors import ReportedError, UsageError
from hpo.parallel.devices import visible_gpus, worker_environment
from hpo.parallel.interrupts import SIGNALS, Interrupted

REPORTED_EXIT_CODES = (2, 3)  # a worker that exits with these has printed its one-line error itself

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


def run_local_workers(target: Callable[[Any, int], Any], config: Any, workers: int, out: Printer) -> None:
    """Run ``target(config, i)`` for ``i`` in ``range(workers)``, each in its own spawned process, and wait.

    ``target`` must be a module-level function (spawn pickles it by name). Each worker prints its own progress
    lines. Raises ReportedError when the first worker that failed said why itself (bad input: exit code 2, a
    failed storage: 3), else UsageError naming it and its exit code.
    """
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=target, args=(config, i), name=f"hpo-worker-{i}") for i in range(workers)
    ]
    gpus = visible_gpus()
    out(f"[{config.name}] starting {workers} worker processes" + (f" on {len(gpus)} GPUs" if gpus else ""))
    for i, process in enumerate(processes):
        # a spawned interpreter starts with this process's environment: set each worker's GPU before it starts
        with environment(worker_environment(i, workers, gpus)):
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
            if process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)
        for process in processes:
            process.join()
        raise
    failed = [(i, p.exitcode) for i, p in enumerate(processes) if p.exitcode != 0]
    if failed:
        i, code = failed[0]
        if code in REPORTED_EXIT_CODES:
            raise ReportedError(code)  # the worker printed its own one-line error
        if code - 128 in SIGNALS:  # that worker alone was interrupted (and re-queued its trial): so is the study
            raise Interrupted(code - 128)
        raise UsageError(f"worker w{i} of study {config.name!r} exited with code {code}")

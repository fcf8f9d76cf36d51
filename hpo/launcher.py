"""Local worker processes (``--workers W``): start them with the spawn start method and wait for them.

Process launching is kept apart from the trial loop (``hpo.workers``) and from what a worker runs
(``hpo.study``): this module starts ``target(config, index)`` in W fresh interpreters and knows nothing else.
Never fork after JAX has started: a forked child inherits XLA's threads in an undefined state.
"""

from __future__ import annotations

import multiprocessing
from typing import Any, Callable

from hpo.errors import UsageError

Printer = Callable[[str], None]


def run_local_workers(target: Callable[[Any, int], Any], config: Any, workers: int, out: Printer) -> None:
    """Run ``target(config, i)`` for ``i`` in ``range(workers)``, each in its own spawned process, and wait.

    ``target`` must be a module-level function (spawn pickles it by name). Each worker prints its own progress
    lines. Raises UsageError naming the first worker that exited with a non-zero code.
    """
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=target, args=(config, i), name=f"hpo-worker-{i}") for i in range(workers)
    ]
    out(f"[{config.name}] starting {workers} worker processes")
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:
            process.join()  # they got the same SIGINT: each fails and re-queues its trial, then exits
        raise
    failed = [(i, p.exitcode) for i, p in enumerate(processes) if p.exitcode != 0]
    if failed:
        i, code = failed[0]
        raise UsageError(f"worker w{i} of study {config.name!r} exited with code {code} (its error is above)")

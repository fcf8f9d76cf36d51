"""Which accelerator each local worker process (``--workers W``) uses, decided before JAX starts in it.

On a machine with G GPUs, worker i sees only GPU ``i mod G`` (``CUDA_VISIBLE_DEVICES``), so W workers spread over
the GPUs instead of all starting on the first. JAX normally preallocates 75% of a GPU's memory per process; when
several workers share one GPU that would fail or starve them, so each gets an equal share of it instead
(``XLA_PYTHON_CLIENT_MEM_FRACTION``; ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` where a share would be tiny). The
GPUs are counted without starting JAX in the parent (which would take GPU memory itself): from
``CUDA_VISIBLE_DEVICES`` when it is set, else from the NVIDIA driver's ``/proc/driver/nvidia/gpus``. Variables
the user already set for the workers are left alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from hpo.errors import UsageError
from models.machine import memory_budget

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
MEMORY_IN_USE = 0.9  # of a GPU's memory, shared out among the workers that use it
SMALLEST_SHARE = 0.1  # below this share, grow memory on demand instead of preallocating a slice


def visible_gpus(environ: Mapping[str, str] | None = None, driver: Path = NVIDIA_GPUS) -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (ordinals or UUIDs)."""
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip() and entry.strip() != "-1"]
    if driver.is_dir():
        return [str(i) for i in range(len(list(driver.iterdir())))]
    return []


def worker_environment(
    index: int, workers: int, gpus: list[str], environ: Mapping[str, str] | None = None, cores: list[int] | None = None
) -> dict:
    """Environment variables to set in worker ``index`` of ``workers`` on a machine with ``gpus`` (may be empty),
    running on ``cores`` (``worker_cores``): the BLAS thread counts of NumPy and SciPy, one per core it has."""
    environ = os.environ if environ is None else environ
    settings = {name: str(len(cores)) for name in THREAD_VARIABLES if cores and name not in environ}
    if not gpus:
        return settings
    settings["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    sharing = math.ceil(workers / len(gpus))  # workers on the busiest GPU
    if sharing > 1 and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in environ and "XLA_PYTHON_CLIENT_PREALLOCATE" not in environ:
        share = MEMORY_IN_USE / sharing
        if share >= SMALLEST_SHARE:
            settings["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{share:.3f}"
        else:
            settings["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return settings


WORKER_MEMORY_BYTES = 3 * 2**30  # what one study process may take: under 3 GB on full-size data (docs: Performance)
WORKERS_PER_GPU = round(1 / SMALLEST_SHARE)  # beyond this many on one GPU, each would get too small a slice
MAX_WORKERS_ENV = "HPO_MAX_WORKERS"  # an explicit bound that replaces the measured one (a machine known better)


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory new processes can have (``models.machine.memory_budget``: ``MemAvailable``, within this
    process's ``ulimit -v`` and cgroup limit), or None where the system does not say."""
    return memory_budget()


def count_variable(environ: Mapping[str, str], name: str) -> int | None:
    """The whole number >= 1 that environment variable ``name`` holds, None where it is unset or empty, else a
    UsageError naming it."""
    given = environ.get(name, "")
    if not given:
        return None
    if not given.isdigit() or int(given) < 1:
        raise UsageError(f"{name} must be a whole number >= 1, got {given!r}")
    return int(given)


def worker_limit(environ: Mapping[str, str] | None = None) -> tuple[int, str]:
    """How many local worker processes this machine can hold, and why: at most one per core, one per
    ``WORKER_MEMORY_BYTES`` of available memory and ``WORKERS_PER_GPU`` per GPU; ``$HPO_MAX_WORKERS`` replaces the
    measured bound."""
    environ = os.environ if environ is None else environ
    given = count_variable(environ, MAX_WORKERS_ENV)
    if given is not None:
        return given, f"{MAX_WORKERS_ENV}={given}"
    cores = usable_cores()
    bounds = [(cores, f"{cores} cores")]
    memory = available_memory()
    if memory is not None:
        bounds.append((max(1, memory // WORKER_MEMORY_BYTES),
                       f"{memory / 2**30:.1f} GB of available memory at {WORKER_MEMORY_BYTES / 2**30:g} GB per worker"))
    gpus = visible_gpus(environ)
    if gpus:
        bounds.append((WORKERS_PER_GPU * len(gpus), f"{len(gpus)} GPUs at most {WORKERS_PER_GPU} workers each"))
    limit = min(bound for bound, _ in bounds)
    return limit, ", ".join(reason for _, reason in bounds)


WORKERS_ENV = "HPO_WORKERS"  # what --workers auto means on this machine, where the measured choice is not wanted


def auto_workers(trials_left: int, environ: Mapping[str, str] | None = None) -> tuple[int, str]:
    """``--workers auto``: how many local workers, and why. One per GPU where there are GPUs, else one per core,
    within what the machine holds (``worker_limit``) and the trials left to run; ``$HPO_WORKERS`` replaces it.

    Measured on a 2-core CPU (``python -m benchmarks.workers``): one process uses its second core poorly (a
    Fashion-MNIST epoch 2.12 s on both cores, 2.33 s pinned to one), so two workers pinned to a core each
    (``worker_cores``) finish a fixed set of trials in about 0.7 of one worker's time, while two unpinned ones
    fight over both cores and gain nothing."""
    environ = os.environ if environ is None else environ
    given = count_variable(environ, WORKERS_ENV)
    if given is not None:
        return given, f"{WORKERS_ENV}={given}"
    gpus = visible_gpus(environ)
    limit, bounds = worker_limit(environ)
    wanted, unit = (len(gpus), "GPU") if gpus else (usable_cores(), "core")
    count = max(1, min(wanted, limit, trials_left))
    if count == wanted:
        return count, f"one per {unit}"
    if count == trials_left:
        return count, f"one per trial left of {wanted} {unit}s"
    return count, f"{count} of {wanted} {unit}s ({bounds})"


def worker_cores(index: int, workers: int, cores: list[int] | None = None) -> list[int] | None:
    """The CPU cores local worker ``index`` of ``workers`` runs on: the usable cores cut into disjoint runs of
    (nearly) equal length, so that workers share the machine instead of each starting a thread per core and
    fighting over all of them (XLA sizes its thread pool by the cores a process may use). None (no pinning) where
    there are fewer cores than workers, which only ``$HPO_MAX_WORKERS`` allows."""
    cores = sorted(os.sched_getaffinity(0)) if cores is None and hasattr(os, "sched_getaffinity") else cores
    if not cores or workers > len(cores):
        return None
    size, extra = divmod(len(cores), workers)
    start = index * size + min(index, extra)
    return cores[start:start + size + (1 if index < extra else 0)]


def describe_cores(workers: int) -> str:
    """``cores 0 / 1`` or ``cores 0-7 / 8-15``: the layout of ``worker_cores``, for a study's first line."""
    runs = [worker_cores(i, workers) for i in range(workers)]
    pinned = [run for run in runs if run]
    if len(pinned) < len(runs):
        return "sharing every core"
    return "cores " + " / ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in pinned)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # NumPy's and SciPy's BLAS


def check_workers(workers: int, environ: Mapping[str, str] | None = None) -> None:
    """Refuse, before anything starts, more local workers than the machine can hold (``worker_limit``)."""
    if workers <= 1:
        return
    limit, why = worker_limit(environ)
    if workers > limit:
        raise UsageError(
            f"--workers {workers} is more than this machine can hold ({why}: at most {limit}); give at most {limit}, "
            f"or set {MAX_WORKERS_ENV} to allow more"
        )

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
from pathlib import Path

from hpo.errors import UsageError

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
MEMORY_IN_USE = 0.9  # of a GPU's memory, shared out among the workers that use it
SMALLEST_SHARE = 0.1  # below this share, grow memory on demand instead of preallocating a slice


def visible_gpus(environ: dict[str, str] | None = None, driver: Path = NVIDIA_GPUS) -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (ordinals or UUIDs)."""
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip() and entry.strip() != "-1"]
    if driver.is_dir():
        return [str(i) for i in range(len(list(driver.iterdir())))]
    return []


def worker_environment(index: int, workers: int, gpus: list[str], environ: dict[str, str] | None = None) -> dict:
    """Environment variables to set in worker ``index`` of ``workers`` on a machine with ``gpus`` (may be empty)."""
    environ = os.environ if environ is None else environ
    if not gpus:
        return {}
    settings = {"CUDA_VISIBLE_DEVICES": gpus[index % len(gpus)]}
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


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes of memory the kernel says new processes can have (``MemAvailable``), or None where it does not say."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def worker_limit(environ: dict[str, str] | None = None) -> tuple[int, str]:
    """How many local worker processes this machine can hold, and why: at most one per core, one per
    ``WORKER_MEMORY_BYTES`` of available memory and ``WORKERS_PER_GPU`` per GPU; ``$HPO_MAX_WORKERS`` replaces the
    measured bound."""
    environ = os.environ if environ is None else environ
    given = environ.get(MAX_WORKERS_ENV, "")
    if given:
        if not given.isdigit() or int(given) < 1:
            raise UsageError(f"{MAX_WORKERS_ENV} must be a whole number >= 1, got {given!r}")
        return int(given), f"{MAX_WORKERS_ENV}={given}"
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


def check_workers(workers: int, environ: dict[str, str] | None = None) -> None:
    """Refuse, before anything starts, more local workers than the machine can hold (``worker_limit``)."""
    if workers <= 1:
        return
    limit, why = worker_limit(environ)
    if workers > limit:
        raise UsageError(
            f"--workers {workers} is more than this machine can hold ({why}: at most {limit}); give at most {limit}, "
            f"or set {MAX_WORKERS_ENV} to allow more"
        )

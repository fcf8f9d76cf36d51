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

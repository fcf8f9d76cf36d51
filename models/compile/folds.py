"""Fold-strategy decisions' pure parts: which kind of program a decision holds for, and the mapping before one.

The decision itself, by measurement, is ``models.compile.compiler.Compiler.decide_fold_strategy``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Hashable

import jax
import numpy as np

from models.train.types import FoldData, ModelFamily, Plan

AUTO_WORK_RATIO = 4  # programs whose work per step (parameters x batch size) is within this factor share a decision


def provisional_mapping() -> str:
    """The mapping of runs before (or without) a decision: the one that is never far from the faster on this
    backend. On a 2-core CPU sequential epochs were at most 15% slower than vmapped ones (MLP width 64: 50 against
    44 ms) and up to 33% faster (the 1-D CNN: 143 against 213 ms; docs/performance.md): one run already keeps a
    small machine busy. On accelerators a batch of runs is what fills the device."""
    return "sequential" if jax.default_backend() == "cpu" else "vmap"


def measuring_cost(compile_seconds: float, epoch_seconds: float) -> float:
    """Seconds measuring a kind's mapping costs beyond training: the second mapping's compilation and one timed
    epoch of each mapping (more rounds only within ``Compiler.budget_seconds``), whose work is
    thrown away."""
    return compile_seconds + 2 * epoch_seconds


def time_call(strategy: str, run: Callable[[], Any]) -> float:
    """Seconds ``run()``, one whole epoch of fold strategy ``strategy``, takes until its results are ready."""
    start = time.perf_counter()
    jax.block_until_ready(run())
    return time.perf_counter() - start


def work_bucket(family: ModelFamily, spec: Hashable, state, batches) -> int:
    """Which size class a program's work per training step falls in: ``floor(log_AUTO_WORK_RATIO(parameters x
    batch size))`` of one run. Mapping runs with vmap or one after another wins by different margins at different
    sizes (on a 2-core AVX2 CPU vmap folds are 9% faster for a 784-64-64-10 MLP, sequential ones 10% faster at
    width 256), so one decision per network kind would be wrong somewhere; one per program shape would cost a
    compilation for every new shape of a search space."""
    n_params = family.count_params(spec, jax.tree_util.tree_map(lambda a: a[0], state))
    work = max(1, n_params) * max(1, int(batches.shape[2]))
    return int(np.floor(np.log(work) / np.log(AUTO_WORK_RATIO)))


def fold_kind(family: ModelFamily, spec: Hashable, plan: Plan, bucket: int, batches, data: FoldData) -> tuple:
    """The kind of program an ``auto`` fold decision holds for, the decision's key: the family's
    ``strategy_class`` of the spec (dense or convolutional networks, ...) with the data's rank (1-D or 2-D
    inputs), the number of runs, the evaluation layout and the work per step (``bucket``: ``work_bucket``)."""
    return ("fold_strategy", family.name, family.strategy_class(spec), int(np.ndim(data.x)), int(batches.shape[0]),
            plan.evals_per_epoch, plan.diagnostics, ("work", bucket))

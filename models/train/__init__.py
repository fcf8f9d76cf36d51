"""The cross-validation core: k independent runs of one configuration, compiled, for every model family.

    fields.py  static, traced and host-only configuration fields (what fixes a compiled program)
    types.py   the data of k runs, results, timing, and the ModelFamily protocol
    epoch.py   the compiled epoch program (lax.scan over mini-batches; runs vmapped or mapped in turn)
    loop.py    cross_validate, train_group, fit_and_score: the host loop over epochs

How programs are stored, compiled, shared and their fold strategy decided is ``models.compile``.
"""

from models.train.epoch import EVAL_CHUNK, map_runs, masked_means, run_epoch, segment_layout
from models.train.fields import HOST, TRACED, Static, chosen_among, traced_values
from models.train.loop import (
    GroupKey,
    batch_orders,
    could_host,
    cross_validate,
    fit_and_score,
    group_key,
    group_mapping,
    precompile,
    split_as_runs,
    stack,
    train_group,
    train_member,
)
from models.train.types import (
    FOLD_STRATEGIES,
    MAPPINGS,
    CVResult,
    DivergedError,
    EpochCallback,
    EpochMetrics,
    EpochProgram,
    FoldData,
    Member,
    ModelFamily,
    Plan,
    RunState,
    Split,
    Timing,
)

__all__ = [
    "EVAL_CHUNK", "FOLD_STRATEGIES", "HOST", "MAPPINGS", "TRACED", "CVResult", "DivergedError", "EpochCallback",
    "EpochMetrics", "EpochProgram", "FoldData", "GroupKey", "Member", "ModelFamily", "Plan", "RunState", "Split", "Static", "Timing", "batch_orders",
    "chosen_among", "could_host", "cross_validate", "fit_and_score", "group_key", "group_mapping", "map_runs",
    "masked_means", "precompile", "run_epoch", "segment_layout", "split_as_runs", "stack", "traced_values",
    "train_group", "train_member",
]

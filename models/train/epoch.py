"""The compiled epoch: one epoch of every run as one XLA program, pure functions at module level (static arguments are
bound with ``functools.partial``).

``jax.lax.scan`` over mini-batches gathered on the device from data that stays resident there; the runs (folds) are
one ``jax.vmap``-ed program or run one after another with ``jax.lax.map`` inside it (``Plan.fold_strategy``).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Hashable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from models.train.types import Array, EpochMetrics, ModelFamily, Plan, RunState

EVALUATION_STREAM = 0x5EED  # folded into a run's key for the randomness of its evaluations


def map_runs(fold_strategy: str, f: Callable) -> Callable:
    """``f`` over the leading (run) axis of its arguments: ``jax.vmap``, or ``jax.lax.map`` (one after another)."""
    if fold_strategy == "vmap":
        return jax.vmap(f)
    if fold_strategy == "sequential":
        return lambda *args: jax.lax.map(lambda a: f(*a), args)
    raise ValueError(f"map_runs needs vmap or sequential (auto is resolved first), got {fold_strategy!r}")


EVAL_CHUNK = 2048  # validation examples a network evaluates together: bounds an evaluation's activations


def masked_means(per_example: Callable, idx: Array, mask: Array, chunk: int = EVAL_CHUNK, key=None) -> tuple:
    """The ``mask``-weighted means over ``idx`` of the per-example arrays ``per_example(idx_chunk[, key])``
    returns, computed ``chunk`` examples at a time (``jax.lax.map``): an evaluation's memory is a chunk's, not the
    split's -- a CNN's first layer on 20000 validation images would hold gigabytes, on every vmapped fold. The
    chunks are as even as they can be (at most ``chunk`` examples; a smaller split is one chunk of its own size), and
    their padding examples (index 0) carry weight 0. With ``key`` each chunk gets its own key of
    ``jax.random.split(key, chunks)``.
    """
    n_chunks = -(-idx.shape[0] // chunk)
    chunk = -(-idx.shape[0] // n_chunks)  # fewer than n_chunks padding examples in all
    pad = n_chunks * chunk - idx.shape[0]
    chunks = jnp.pad(idx, (0, pad)).reshape(n_chunks, chunk)
    if key is None:
        values = jax.lax.map(per_example, chunks)
    else:
        values = jax.lax.map(lambda a: per_example(*a), (chunks, jax.random.split(key, n_chunks)))
    weight = jnp.pad(mask, (0, pad)).reshape(n_chunks, chunk).astype(values[0].dtype)
    weight = weight / weight.sum()
    return tuple((v * weight).sum() for v in values)


def segment_layout(n_batches: int, n_segments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut an epoch's ``n_batches`` batches, in order, into ``n_segments`` segments of near-equal length.

    Returns ``rows`` (segments, length): batch numbers, padded with batch 0 where a segment is shorter;
    ``valid`` (segments, length): False at padding; ``last`` (segments,): the position of each segment's last batch.
    """
    if not 1 <= n_segments <= n_batches:
        raise ValueError(f"evals_per_epoch must be between 1 and the {n_batches} mini-batches per epoch, got {n_segments}")
    sizes = np.array([n_batches // n_segments + (i < n_batches % n_segments) for i in range(n_segments)])
    positions = np.arange(sizes.max())
    valid = positions[None, :] < sizes[:, None]
    rows = np.where(valid, np.concatenate([[0], np.cumsum(sizes)[:-1]])[:, None] + positions, 0).astype(np.int32)
    return rows, valid, (sizes - 1).astype(np.int32)


def _step(family, spec, hyper, x, y, state: RunState, idx) -> tuple[RunState, tuple[Array, Array]]:
    key, step_key = (None, None) if state.key is None else jax.random.split(state.key)
    model, metrics = family.train_step(spec, hyper, state.model, step_key, x, y, idx)
    return RunState(model, key), metrics


def _evaluate(family, spec, hyper, x, y, val_idx, val_mask, state: RunState) -> tuple[Array, Array]:
    key = None if state.key is None else jax.random.fold_in(state.key, EVALUATION_STREAM)
    return family.evaluate(spec, hyper, state.model, key, x, y, val_idx, val_mask)


def run_epoch(family: ModelFamily, spec: Hashable, plan: Plan, state: RunState, batches, x, y, val_idx, val_mask, hyper):
    """One epoch of every run: ``(state (k, ...), batches (k, b, bs), ..., hyper (k,)) -> (state, metrics, points)``.

    ``points`` maps a metric name to its (k, evals_per_epoch) values; it is empty for the plain program (one
    evaluation at the end of the epoch, no diagnostics), in which nothing else is traced.
    """
    plain = plan.evals_per_epoch == 1 and not plan.diagnostics
    epoch = _plain_epoch if plain else _monitored_epoch

    def one(run_state, run_batches, run_val_idx, run_val_mask, run_hyper):
        step = partial(_step, family, spec, run_hyper, x, y)
        evaluate = partial(_evaluate, family, spec, run_hyper, x, y, run_val_idx, run_val_mask)
        return epoch(family, spec, plan, run_hyper, x, y, step, evaluate, run_state, run_batches)

    return map_runs(plan.fold_strategy, one)(state, batches, val_idx, val_mask, hyper)


def _plain_epoch(family, spec, plan, hyper, x, y, step, evaluate, state, batches):
    state, (losses, scores) = jax.lax.scan(step, state, batches)
    return state, EpochMetrics(losses.mean(), scores.mean(), *evaluate(state)), {}


def _monitored_epoch(family, spec, plan, hyper, x, y, step, evaluate, state, batches):
    """The epoch cut into ``evals_per_epoch`` segments (an outer scan), evaluated after each.

    Segments hold the epoch's batches in order, as equal as possible; shorter ones are padded with steps that
    ``lax.cond`` skips (the predicate is the same for every run, so it stays a branch under vmap). Diagnostics
    use the segment's last training batch and the state after it.
    """
    rows, valid, last = segment_layout(batches.shape[0], plan.evals_per_epoch)
    padded = not valid.all()

    def segment_step(state, xs):
        idx, real = xs
        if not padded:
            return step(state, idx)
        skip = jnp.zeros((), jnp.float32)
        return jax.lax.cond(real, step, lambda s, _: (s, (skip, skip)), state, idx)

    def segment(state, xs):
        seg, real, end = xs
        before = state.model
        state, (losses, scores) = jax.lax.scan(segment_step, state, (seg, real))
        weight = real / real.sum()
        point = {"train_loss": (losses * weight).sum(), "train_score": (scores * weight).sum()}
        point["val_loss"], point["val_score"] = evaluate(state)
        if plan.diagnostics:
            point.update(family.diagnose(spec, hyper, state.model, before, state.key, x, y, seg[end]))
        return state, point

    state, points = jax.lax.scan(segment, state, (batches[rows], valid, last))
    share = valid.sum(1) / valid.sum()  # each segment's share of the epoch's steps
    train = [(points[name] * share).sum() for name in ("train_loss", "train_score")]
    return state, EpochMetrics(*train, points["val_loss"][-1], points["val_score"][-1]), points


class Compiled(NamedTuple):
    epoch: Any  # (RunState, batches, x, y, val_idx, val_mask, hyper) -> (RunState, EpochMetrics, points)

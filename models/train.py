"""The compiled training loop: k-fold cross-validation of one network configuration.

One epoch of every fold is one compiled XLA program: ``jax.lax.scan`` over mini-batches gathered on the device
from data that stays resident there, folds run either as one ``jax.vmap``-ed program or one after another with
``jax.lax.map`` inside the same program (``fold_strategy``). Scalar hyperparameters (learning rate, momentum,
weight decay, feedback scale) are traced inputs, injected into the optimiser with ``optax.inject_hyperparams``,
so a trial with a new learning rate reuses the compiled programs of the previous trial with the same shapes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import diagnostics
from models.networks import CNN, MLP, ConvLayer
from models.programs import ProgramCache
from models.rules import FEEDBACK, get_rule

Array = jax.Array

FEEDBACK_DISTRIBUTIONS = ("normal", "uniform")
OPTIMIZERS = ("adam", "sgd")
LOSSES = ("cross_entropy", "mse")
FOLD_STRATEGIES = ("sequential", "vmap")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines how one network is trained (a trial's hyperparameters)."""

    rule: str  # learning rule name (models.rules.RULES)
    hidden: tuple[int, ...]  # hidden-layer widths (the dense head's, for models with a convolutional trunk)
    learning_rate: float  # optimiser step size (traced: never recompiles)
    activation: str = "relu"  # hidden nonlinearity (models.networks.ACTIVATIONS)
    optimizer: str = "adam"  # "adam" or "sgd" (SGD with heavy-ball momentum)
    momentum: float = 0.9  # SGD momentum (traced; ignored by adam)
    weight_decay: float = 0.0  # decoupled decay of kernels and trained feedback, times lr (traced)
    batch_size: int = 64  # mini-batch size
    epochs: int = 10  # passes over each fold's training part
    feedback_distribution: str = "normal"  # feedback init: truncated normal or uniform, variance 1/fan_in
    feedback_scale: float = 1.0  # multiplies every feedback matrix after initialisation
    loss: str = "cross_entropy"  # "cross_entropy" (classification, score = accuracy) or "mse"
    conv: tuple[ConvLayer, ...] = ()  # convolutional trunk before the hidden layers (empty: an MLP)

    def __post_init__(self) -> None:
        get_rule(self.rule)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("feedback_distribution", self.feedback_distribution, FEEDBACK_DISTRIBUTIONS)
        _check_choice("loss", self.loss, LOSSES)
        if self.batch_size < 1 or self.epochs < 1 or any(w < 1 for w in self.hidden):
            raise ValueError(f"batch_size, epochs and widths must be >= 1, got {self}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not isinstance(self.conv, tuple) or not all(isinstance(layer, ConvLayer) for layer in self.conv):
            raise ValueError(f"conv must be a tuple of ConvLayer (hashable: compiled programs are keyed on it), got {self.conv!r}")

    @property
    def hyperparameters(self) -> dict[str, float]:
        """The traced scalars: changing them never triggers a recompilation."""
        return {
            "learning_rate": self.learning_rate,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
        }


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


class FoldData(NamedTuple):
    """Device-resident data and the index sets of k folds (see ``hpo.data.make_folds``).

    Training parts are truncated to a common length and validation parts padded with a mask, so all folds
    share one shape and can run in one program.
    """

    x: Array  # (n, ...) inputs of the whole training split
    y: Array  # (n,) int labels or (n, d) float targets
    train_idx: np.ndarray  # (k, m) host indices of each fold's training part (batches are drawn on the host)
    val_idx: Array  # (k, v) indices of each fold's validation part (padded)
    val_mask: Array  # (k, v) True where val_idx is real, False where padded


class TrainState(NamedTuple):
    """The state of one fold's network."""

    params: Any  # trained parameters (collection "params")
    fixed: Any  # fixed variables (collection "feedback"): never updated
    opt_state: Any  # optimiser state including the injected hyperparameters
    key: Any = None  # PRNG key (raw uint32[2]) split at every step, for rules with a random backward pass (needs_rng)


class EpochMetrics(NamedTuple):
    """Per-fold metrics of one epoch, each of shape (k,)."""

    train_loss: Array
    train_score: Array
    val_loss: Array
    val_score: Array


class DivergedError(RuntimeError):
    """Training produced a non-finite loss; the message says where."""


@dataclass
class CVResult:
    """Outcome of cross-validating one configuration."""

    fold_scores: np.ndarray  # (k,) final validation score per fold
    curves: dict[str, np.ndarray]  # metric name -> (epochs, k) per-epoch values
    compile_seconds: float  # time spent tracing and compiling (0 when programs were reused)
    train_seconds: float  # time spent running compiled programs
    n_params: int  # trained forward parameters (kernels and biases) of one network
    extra: dict[str, Any] = field(default_factory=dict)
    # metric name -> (epochs * evals_per_epoch, k) values at every evaluation point: the learning curves
    # (train_loss/train_score: mean over the steps since the previous point; val_*: at the point) and, with
    # diagnostics on, the metrics of ``models.diagnostics`` ("update_angle/dense_0", ...)
    points: dict[str, np.ndarray] = field(default_factory=dict)
    point_epochs: np.ndarray = field(default_factory=lambda: np.zeros(0))  # position of each point, in epochs

    @property
    def score(self) -> float:
        return float(np.mean(self.fold_scores))


# ----------------------------------------------------------------------------------------------------------
# Building blocks


def make_model(config: TrainConfig, out_features: int) -> nn.Module:
    """The network ``config`` describes (its variables are initialised by ``init_variables``)."""
    if config.conv:
        return CNN(config.conv, config.hidden, out_features, config.rule, config.activation)
    return MLP(config.hidden, out_features, config.rule, config.activation)


def _decay_mask(params: Any) -> Any:
    """Decay kernels and trained feedback matrices, never biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) in ("kernel", FEEDBACK), params
    )


def make_optimizer(name: str) -> Callable[..., optax.GradientTransformation]:
    """An optimiser factory whose scalar hyperparameters are injected (traced) values.

    Weight decay is decoupled (added after the adaptive scaling, then multiplied by the learning rate, as in
    AdamW), so under kp the kernel and its feedback matrix receive identical updates apart from their own decay.
    """

    def adam(learning_rate, weight_decay):
        return optax.chain(
            optax.scale_by_adam(),
            optax.add_decayed_weights(weight_decay, _decay_mask),
            optax.scale_by_learning_rate(learning_rate),
        )

    def sgd(learning_rate, momentum, weight_decay):
        return optax.chain(
            optax.trace(decay=momentum),
            optax.add_decayed_weights(weight_decay, _decay_mask),
            optax.scale_by_learning_rate(learning_rate),
        )

    return optax.inject_hyperparams({"adam": adam, "sgd": sgd}[name])


def _loss_and_score(loss: str) -> Callable[[Array, Array], tuple[Array, Array]]:
    """Per-example loss and score: (cross-entropy, correct) or (squared error, squared error)."""

    def cross_entropy(logits, labels):
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return per_example, (jnp.argmax(logits, -1) == labels).astype(logits.dtype)

    def mse(outputs, targets):
        per_example = jnp.mean((outputs - targets.reshape(outputs.shape)) ** 2, axis=-1)
        return per_example, per_example

    return {"cross_entropy": cross_entropy, "mse": mse}[loss]


@dataclass(frozen=True)
class ProgramSpec:
    """Everything that fixes the compiled programs' shapes; equal specs share compiled programs."""

    config: TrainConfig  # with traced hyperparameters zeroed out, see ``spec_for``
    out_features: int
    fold_strategy: str
    evals_per_epoch: int = 1  # evaluation points per epoch (learning curves, diagnostics)
    diagnostics: bool = False  # compute ``models.diagnostics`` metrics at every evaluation point


def spec_for(
    config: TrainConfig, out_features: int, fold_strategy: str, evals_per_epoch: int = 1, diagnostics: bool = False
) -> ProgramSpec:
    _check_choice("fold_strategy", fold_strategy, FOLD_STRATEGIES)
    if evals_per_epoch < 1:
        raise ValueError(f"evals_per_epoch must be >= 1, got {evals_per_epoch}")
    ignored = {**{k: 1.0 for k in config.hyperparameters}, "epochs": 1, "feedback_scale": 1.0, "feedback_distribution": "normal"}
    static = TrainConfig(**{**config.__dict__, **ignored})
    return ProgramSpec(static, out_features, fold_strategy, evals_per_epoch, diagnostics)


class Programs(NamedTuple):
    init_opt: Callable  # (params, hyper) -> optimiser state of one fold
    # (state, batches (k, b, bs), x, y, val_idx, val_mask, hyper) -> (state, EpochMetrics, points), where
    # points maps a metric name to its (k, evals_per_epoch) values (empty when one plain evaluation per epoch)
    epoch: Callable


def build_programs(spec: ProgramSpec) -> Programs:
    """Pure (uncompiled) functions for one spec; ``cross_validate`` compiles them ahead of time."""
    config = spec.config
    model = make_model(config, spec.out_features)
    rule = get_rule(config.rule)
    optimizer = make_optimizer(config.optimizer)
    per_example = _loss_and_score(config.loss)
    map_folds = jax.vmap if spec.fold_strategy == "vmap" else _lax_map

    def transform(hyper):
        names = ("learning_rate", "weight_decay") + (("momentum",) if config.optimizer == "sgd" else ())
        return optimizer(**{n: hyper[n] for n in names})

    def apply(params, fixed, x):
        return model.apply({"params": params, **fixed}, x)

    def batch_loss(params, fixed, x, y, key):
        # the targets and a fresh key reach the network only for rules that need them (Rule.apply_kwargs)
        outputs = model.apply({"params": params, **fixed}, x, **rule.apply_kwargs(y, key))
        loss, score = per_example(outputs, y)
        return loss.mean(), score.mean()

    def fold_epoch(state, batches, val_idx, val_mask, x, y, hyper):
        tx = transform(hyper)

        def step(state, idx):
            key, step_key = (None, None) if state.key is None else jax.random.split(state.key)
            (loss, score), grads = jax.value_and_grad(batch_loss, has_aux=True)(
                state.params, state.fixed, x[idx], y[idx], step_key
            )
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            return TrainState(params, state.fixed, opt_state, key), (loss, score)

        def validate(params, fixed):
            val_loss, val_score = per_example(apply(params, fixed, x[val_idx]), y[val_idx])
            weight = val_mask.astype(val_loss.dtype) / val_mask.sum()
            return (val_loss * weight).sum(), (val_score * weight).sum()

        if spec.evals_per_epoch == 1 and not spec.diagnostics:  # the plain program: nothing else is traced
            state, (losses, scores) = jax.lax.scan(step, state, batches)
            return state, EpochMetrics(losses.mean(), scores.mean(), *validate(state.params, state.fixed)), {}
        return monitored_epoch(state, batches, x, y, step, validate)

    def mean_loss(outputs, targets):
        return per_example(outputs, targets)[0].mean()

    def monitored_epoch(state, batches, x, y, step, validate):
        """The epoch cut into ``evals_per_epoch`` segments (an outer scan), evaluated after each.

        Segments hold the epoch's batches in order, as equal as possible; shorter ones are padded with steps
        that ``lax.cond`` skips (the predicate is the same for every fold, so it stays a branch under vmap).
        Diagnostics use the segment's last training batch and the parameters after it.
        """
        rows, valid, last = segment_layout(batches.shape[0], spec.evals_per_epoch)
        padded = not valid.all()

        def segment_step(state, xs):
            idx, real = xs
            if not padded:
                return step(state, idx)
            skip = jnp.zeros((), jnp.float32)
            return jax.lax.cond(real, step, lambda s, _: (s, (skip, skip)), state, idx)

        def segment(state, xs):
            seg, real, end = xs
            start = state.params
            state, (losses, scores) = jax.lax.scan(segment_step, state, (seg, real))
            weight = real / real.sum()
            point = {"train_loss": (losses * weight).sum(), "train_score": (scores * weight).sum()}
            point["val_loss"], point["val_score"] = validate(state.params, state.fixed)
            if spec.diagnostics:
                idx = seg[end]
                point.update(
                    diagnostics.diagnose(model, state.params, state.fixed, x[idx], y[idx], mean_loss, state.key)
                )
                point.update(diagnostics.weight_change(state.params, start))
            return state, point

        state, points = jax.lax.scan(segment, state, (batches[rows], valid, last))
        share = valid.sum(1) / valid.sum()  # each segment's share of the epoch's steps
        train = [(points[name] * share).sum() for name in ("train_loss", "train_score")]
        return state, EpochMetrics(*train, points["val_loss"][-1], points["val_score"][-1]), points

    def init_opt(params, hyper):
        return map_folds(transform(hyper).init)(params)

    def epoch(state, batches, x, y, val_idx, val_mask, hyper):
        def one(s, b, v, m):
            return fold_epoch(s, b, v, m, x, y, hyper)

        return map_folds(one)(state, batches, val_idx, val_mask)

    return Programs(init_opt, epoch)


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


def _lax_map(f):
    """Like ``jax.vmap(f)`` but runs the folds one after another inside the same program."""

    def mapped(*args):
        return jax.lax.map(lambda a: f(*a), args)

    return mapped


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal truncated to [-2, 2], rescaled to unit variance (as ``jax.nn.initializers``)."""
    z = rng.standard_normal(shape)
    while (outside := np.abs(z) > 2).any():
        z[outside] = rng.standard_normal(int(outside.sum()))
    return z / 0.87962566103423978


def init_variables(model: nn.Module, sample_x: Array, rng: np.random.Generator, config: TrainConfig) -> dict:
    """Initialise a network's variables on the host with numpy.

    Doing this in numpy rather than with the modules' JAX initialisers keeps random-number kernels out of
    the compiled programs, which on the CPU backend would cost more compile time than a whole trial trains.
    The distributions are the modules' defaults: kernels LeCun truncated normal (variance 1/fan_in), biases
    zero, and feedback matrices variance 1/fan_in from ``config.feedback_distribution``, times
    ``config.feedback_scale``. ``fan_in`` is the product of all but the last axis, as in Flax.
    """
    abstract = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, sample_x))

    def make(path, leaf):
        name = getattr(path[-1], "key", None)
        shape = tuple(leaf.shape)
        std = 1.0 / np.sqrt(max(1, int(np.prod(shape[:-1]))))
        if name == "bias":
            value = np.zeros(shape)
        elif name == "kernel":
            value = std * _truncated_normal(rng, shape)
        elif name == FEEDBACK and config.feedback_distribution == "normal":
            value = config.feedback_scale * std * _truncated_normal(rng, shape)
        elif name == FEEDBACK:
            value = config.feedback_scale * rng.uniform(-np.sqrt(3) * std, np.sqrt(3) * std, shape)
        else:
            raise ValueError(f"no initialiser for variable {jax.tree_util.keystr(path)}")
        return value.astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(make, abstract)


class _Compiled(NamedTuple):
    init_opt: Any  # (params, hyper) -> stacked optimiser state
    epoch: Any  # (state, batches, x, y, val_idx, val_mask, hyper) -> (state, EpochMetrics)


_COMPILED = ProgramCache()


def _compiled(spec: ProgramSpec, params, fixed, hyper, batches, data: FoldData, key=None) -> tuple[_Compiled, float]:
    """Ahead-of-time compiled programs for ``spec`` and these shapes, and the seconds spent compiling.

    Programs are kept in a bounded per-process cache (``models.programs``), so later trials with the same shapes
    compile nothing; JAX's persistent compilation cache (configured by ``hpo``) does the same across processes.
    """
    shapes = jax.tree_util.tree_map(lambda a: (a.shape, str(a.dtype)), (params, fixed, batches, data))

    def build() -> _Compiled:
        programs = build_programs(spec)
        init_opt = jax.jit(programs.init_opt).lower(params, hyper).compile()
        state_shape = TrainState(params, fixed, jax.eval_shape(programs.init_opt, params, hyper), key)
        device_data = (data.x, data.y, data.val_idx, data.val_mask)
        epoch = jax.jit(programs.epoch, donate_argnums=0).lower(state_shape, batches, *device_data, hyper).compile()
        return _Compiled(init_opt, epoch)

    return _COMPILED.get((spec, str(shapes)), build)


def count_params(params: Any) -> int:
    """Number of trained forward parameters, feedback matrices excluded."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return int(sum(np.prod(v.shape) for path, v in leaves if getattr(path[-1], "key", None) != FEEDBACK))


def _stack(trees: list) -> Any:
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *trees)


def batch_orders(rng: np.random.Generator, train_idx: np.ndarray, batch_size: int) -> np.ndarray:
    """One epoch's mini-batches per fold: a fresh permutation of each training part, cut into full batches."""
    n_batches = train_idx.shape[1] // batch_size
    if n_batches == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {train_idx.shape[1]} training examples per fold")
    orders = [rng.permutation(row)[: n_batches * batch_size] for row in train_idx]
    return np.stack(orders).reshape(len(train_idx), n_batches, batch_size).astype(np.int32)


EpochCallback = Callable[[int, EpochMetrics], None]


def cross_validate(
    config: TrainConfig,
    data: FoldData,
    out_features: int,
    seed: int,
    on_epoch: EpochCallback | None = None,
    fold_strategy: str = "sequential",
    on_compiled: Callable[[float], None] | None = None,
    evals_per_epoch: int = 1,
    diagnostics: bool = False,
) -> CVResult:
    """Train one fresh network per fold for ``config.epochs`` epochs and score each validation part.

    All randomness (initialisation, batch order) derives from ``seed``. ``on_epoch(epoch, metrics)`` is
    called after every epoch with per-fold metrics (numpy arrays); it may raise to stop training early (the
    study's pruner does this). A non-finite training loss raises ``DivergedError`` naming epoch and fold.
    ``on_compiled(seconds)`` is told the compile time before training starts (so it is known even when
    training is stopped early). ``evals_per_epoch`` evaluation points per epoch give the learning curves in
    ``CVResult.points``; ``diagnostics`` adds the alignment metrics of ``models.diagnostics`` to them (off,
    the compiled program is exactly the one without them). Neither changes the training itself.
    """
    spec = spec_for(config, out_features, fold_strategy, evals_per_epoch, diagnostics)
    n_folds = data.train_idx.shape[0]
    *fold_seeds, order_seed = np.random.SeedSequence(seed).spawn(n_folds + 1)
    order_rng = np.random.default_rng(order_seed)
    train_idx = np.asarray(data.train_idx)
    model = make_model(config, out_features)
    sample_x = data.x[:1]
    variables = _stack([init_variables(model, sample_x, np.random.default_rng(s), config) for s in fold_seeds])
    params = variables.pop("params")
    # per-fold keys of a random backward pass, from a child of each fold's seed (the initialisation is unchanged)
    key = np.stack([s.spawn(1)[0].generate_state(2) for s in fold_seeds]) if get_rule(config.rule).needs_rng else None
    hyper = {k: np.float32(v) for k, v in config.hyperparameters.items()}
    batches = batch_orders(order_rng, train_idx, config.batch_size)
    _, valid, _ = segment_layout(batches.shape[1], evals_per_epoch)
    point_epochs = (np.arange(config.epochs)[:, None] + valid.sum(1).cumsum() / valid.sum()).ravel()
    compiled, compile_seconds = _compiled(spec, params, variables, hyper, batches, data, key)
    if on_compiled is not None:
        on_compiled(compile_seconds)

    start = time.perf_counter()
    state = TrainState(params, variables, compiled.init_opt(params, hyper), key)
    history: list[EpochMetrics] = []
    point_history: list[dict[str, np.ndarray]] = []
    for epoch in range(config.epochs):
        if epoch:
            batches = batch_orders(order_rng, train_idx, config.batch_size)
        state, metrics, points = compiled.epoch(state, batches, data.x, data.y, data.val_idx, data.val_mask, hyper)
        metrics, points = jax.device_get((metrics, points))  # one transfer: each is a wait on a busy machine
        metrics = EpochMetrics(*(np.asarray(m) for m in metrics))
        history.append(metrics)
        point_history.append(points)
        bad = np.flatnonzero(~np.isfinite(metrics.train_loss))
        if bad.size:
            raise DivergedError(
                f"non-finite training loss ({metrics.train_loss[bad[0]]}) in epoch {epoch + 1}, fold {bad[0] + 1}"
            )
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    train_seconds = time.perf_counter() - start

    curves = {name: np.stack([getattr(m, name) for m in history]) for name in EpochMetrics._fields}
    if point_history[0]:  # (k, evals) per epoch -> (epochs * evals, k)
        points = {name: np.concatenate([p[name] for p in point_history], axis=1).T for name in point_history[0]}
    else:  # one plain evaluation per epoch: the points are the epoch metrics
        points = dict(curves)
    n_params = count_params(jax.tree_util.tree_map(lambda a: a[0], params))
    return CVResult(
        history[-1].val_score, curves, compile_seconds, train_seconds, n_params, points=points, point_epochs=point_epochs
    )

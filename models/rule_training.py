"""Networks of rule layers (MLPs and CNNs) trained with an Optax optimiser: ``TrainConfig`` and its model family.

The family gives the cross-validation core (``models.train``) what is particular to these networks: host-side
initialisation that follows the layers' declared initialisers (``models.initializers.host_init``), the optimiser
built from the traced hyperparameters, one training step, the masked validation and the alignment diagnostics of
``models.diagnostics``. Its step functions are pure, module-level functions of
``(spec, hyper, state, ...)``; the core binds the static ``spec`` with ``functools.partial`` and compiles them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import diagnostics
from models.initializers import FanAvg, FanIn, host_init
from models.networks import CNN, MLP, SWITCHES, ConvLayer, get_activation, switchable
from models.rules.registry import FEEDBACK, get_rule
from models.train import HOST, TRACED, FoldData, Static, chosen_among, masked_means, traced_values

Array = jax.Array

FEEDBACK_DISTRIBUTIONS = {"normal": "truncated_normal", "uniform": "uniform"}  # name -> models.initializers.FanIn's
# forward kernels and feedback matrices: LeCun's variance 1 / fan_in (truncated normal kernels), or Glorot's (Xavier)
# 2 / (fan_in + fan_out) with uniform kernels, as PyTorch's xavier_uniform_ (biotorch's default)
INITS = {"lecun": (FanIn, "truncated_normal"), "xavier": (FanAvg, "uniform")}
OPTIMIZERS = ("adam", "sgd", "sgd_l2")  # sgd_l2: PyTorch's SGD, its weight decay an L2 term in the gradient
LOSSES = ("cross_entropy", "mse")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines how one network of rule layers is trained (a trial's hyperparameters).

    Fields are static (they fix the compiled programs), traced (program inputs: a new value never recompiles),
    host-only (initialisation and the epoch loop) or a choice among static candidates that one program serves, as
    their metadata declares (``models.train.Static``). A search space that tries several activations or
    optimisers names them in ``activation_choices``/``optimizer_choices``, so trials that differ only there share
    compiled programs.
    """

    rule: str  # learning rule name (models.rules.RULES)
    hidden: tuple[int, ...]  # hidden-layer widths (the dense head's, for models with a convolutional trunk)
    learning_rate: float = field(metadata=TRACED)  # optimiser step size
    activation: str = field(default="relu", metadata=chosen_among("activation_choices"))  # networks.ACTIVATIONS
    optimizer: str = field(default="adam", metadata=chosen_among("optimizer_choices"))  # OPTIMIZERS
    momentum: float = field(default=0.9, metadata=TRACED)  # SGD momentum (ignored by adam)
    weight_decay: float = field(default=0.0, metadata=TRACED)  # see make_optimizer: decoupled, or L2 for sgd_l2
    lr_milestones: tuple[int, ...] = field(default=(), metadata=HOST)  # epochs after which the rate is x lr_gamma
    lr_gamma: float = field(default=0.1, metadata=HOST)  # (PyTorch's MultiStepLR: none by default)
    batch_size: int = 64  # mini-batch size
    epochs: int = field(default=10, metadata=HOST)  # passes over each fold's training part
    feedback_distribution: str = field(default="normal", metadata=HOST)  # truncated normal or uniform, var 1/fan_in
    feedback_scale: float = field(default=1.0, metadata=HOST)  # multiplies every feedback matrix's initial values
    init: str = field(default="lecun", metadata=HOST)  # variance of kernels and feedback matrices (INITS)
    loss: str = "cross_entropy"  # "cross_entropy" (classification, score = accuracy) or "mse"
    conv: tuple[ConvLayer, ...] = ()  # convolutional trunk before the hidden layers (empty: an MLP)
    activation_choices: tuple[str, ...] = ()  # activations one compiled program serves (empty: just `activation`)
    optimizer_choices: tuple[str, ...] = ()  # optimisers one compiled program serves (empty: just `optimizer`)

    def __post_init__(self) -> None:
        get_rule(self.rule)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        for name in self.activation_choices:
            get_activation(name)
        for name in self.optimizer_choices:
            _check_choice("optimizer_choices", name, OPTIMIZERS)
        for name, choices in (("activation", self.activation_choices), ("optimizer", self.optimizer_choices)):
            if choices and getattr(self, name) not in choices:
                raise ValueError(f"{name} {getattr(self, name)!r} must be one of its choices {choices}")
        _check_choice("feedback_distribution", self.feedback_distribution, tuple(FEEDBACK_DISTRIBUTIONS))
        _check_choice("init", self.init, tuple(INITS))
        _check_choice("loss", self.loss, LOSSES)
        if self.batch_size < 1 or self.epochs < 1 or any(w < 1 for w in self.hidden):
            raise ValueError(f"batch_size, epochs and widths must be >= 1, got {self}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        milestones = self.lr_milestones
        if not isinstance(milestones, tuple) or any(not isinstance(m, int) or m < 1 for m in milestones) or list(
                milestones) != sorted(set(milestones)):
            raise ValueError(f"lr_milestones must be increasing epochs >= 1, got {milestones!r}")
        if not self.lr_gamma >= 0:
            raise ValueError(f"lr_gamma must be >= 0, got {self.lr_gamma}")
        if not isinstance(self.conv, tuple) or not all(isinstance(layer, ConvLayer) for layer in self.conv):
            raise ValueError(f"conv must be a tuple of ConvLayer (hashable: compiled programs are keyed on it), got {self.conv!r}")

    @property
    def family(self) -> RuleNetworks:
        return RULE_NETWORKS

    def learning_rate_at(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (from 0): ``learning_rate`` times ``lr_gamma`` for every milestone
        at or before it, as PyTorch's ``MultiStepLR`` stepped once per epoch."""
        return self.learning_rate * self.lr_gamma ** sum(m <= epoch for m in self.lr_milestones)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def make_model(config: TrainConfig | Static, out_features: int) -> nn.Module:
    """The network ``config`` describes. From a full config its feedback matrices are initialised as the config
    says; from its static part (what programs are built from) with the default, which the programs never read."""
    kwargs: dict[str, Any] = {}
    if isinstance(config, TrainConfig):
        distribution = FEEDBACK_DISTRIBUTIONS[config.feedback_distribution]
        initializer, kernels = INITS[config.init]
        kwargs["feedback_init"] = initializer(config.feedback_scale, distribution)
        kwargs["kernel_init"] = initializer(1.0, kernels)  # LeCun's equals the networks' default: the same module
        activation = config.activation  # the variables do not depend on it
    else:
        activation = config.activation_choices
        activation = activation[0] if len(activation) == 1 else activation  # several: chosen by activation_index
    if config.conv:
        return CNN(config.conv, config.hidden, out_features, config.rule, activation, **kwargs)
    return MLP(config.hidden, out_features, config.rule, activation, **kwargs)


def _decay_mask(params: Any) -> Any:
    """Decay kernels and trained feedback matrices, never biases."""
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) in ("kernel", FEEDBACK), params)


def _adam(learning_rate, weight_decay):
    return optax.chain(
        optax.scale_by_adam(),
        optax.add_decayed_weights(weight_decay, _decay_mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def _sgd(learning_rate, momentum, weight_decay):
    return optax.chain(
        optax.trace(decay=momentum),
        optax.add_decayed_weights(weight_decay, _decay_mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def _sgd_l2(learning_rate, momentum, weight_decay):
    return optax.chain(
        optax.add_decayed_weights(weight_decay),  # every trained parameter, biases too, before the momentum
        optax.trace(decay=momentum),
        optax.scale_by_learning_rate(learning_rate),
    )


_OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {"adam": _adam, "sgd": _sgd, "sgd_l2": _sgd_l2}
_SGD_ARGS = ("learning_rate", "momentum", "weight_decay")
_OPTIMIZER_ARGS = {"adam": ("learning_rate", "weight_decay"), "sgd": _SGD_ARGS, "sgd_l2": _SGD_ARGS}


def make_optimizer(name: str) -> Callable[..., optax.GradientTransformation]:
    """The optimiser ``name`` as a factory of its scalar hyperparameters (``learning_rate``, ``weight_decay`` and,
    for sgd, ``momentum``); inside a compiled program they are traced values, so a new value never recompiles.

    Weight decay is decoupled (added after the adaptive scaling, then multiplied by the learning rate, as in
    AdamW), so under kp the kernel and its feedback matrix receive identical updates apart from their own decay.
    ``sgd_l2`` is PyTorch's SGD instead, for protocols written for it (``benchmarks.biotorch_lenet``): its decay is
    an L2 term added to the gradient of every trained parameter, biases included, before the momentum
    accumulates it, so at momentum 0.9 it decays ten times as much per step as the same decoupled value.
    """
    return _OPTIMIZERS[name]


def _select(index: Array, options: list) -> Any:
    """``options[index]`` for a traced index, elementwise over equal pytrees (exactly the chosen values)."""
    out = options[0]
    for i, option in enumerate(options[1:], start=1):
        out = jax.tree_util.tree_map(lambda a, b, i=i: jnp.where(index == i, a, b), option, out)
    return out


def switched(transforms: list[optax.GradientTransformation], index: Array) -> optax.GradientTransformation:
    """The transform ``transforms[index]`` for a traced index: every candidate keeps its own state and computes
    its update, the chosen one is returned, so one compiled program serves every choice."""

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(grads, state, params=None):
        results = [t.update(grads, s, params) for t, s in zip(transforms, state)]
        return _select(index, [u for u, _ in results]), tuple(s for _, s in results)

    return optax.GradientTransformation(init, update)


def optimizer(spec: Spec, hyper: dict) -> optax.GradientTransformation:
    """The spec's optimiser (or the traced choice among its candidates) with the traced hyperparameters."""
    names = spec.config.optimizer_choices
    transforms = [make_optimizer(name)(**{n: hyper[n] for n in _OPTIMIZER_ARGS[name]}) for name in names]
    return transforms[0] if len(transforms) == 1 else switched(transforms, hyper["optimizer"])


def per_example_loss(loss: str) -> Callable[[Array, Array], tuple[Array, Array]]:
    """Per-example loss and score: (cross-entropy, correct) or (squared error, squared error)."""

    def cross_entropy(logits, labels):
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return per_example, (jnp.argmax(logits, -1) == labels).astype(logits.dtype)

    def mse(outputs, targets):
        per_example = jnp.mean((outputs - targets.reshape(outputs.shape)) ** 2, axis=-1)
        return per_example, per_example

    return {"cross_entropy": cross_entropy, "mse": mse}[loss]


@functools.cache
def _zero_at_zero(activation: str) -> bool:
    """The activation maps 0 to exactly 0 (a zero-padded unit then stays silent: ``RuleNetworks.hosting``)."""
    return float(get_activation(activation)(jnp.zeros((), jnp.float32))) == 0.0


def count_params(params: Any) -> int:
    """Number of trained forward parameters, feedback matrices excluded."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return int(sum(np.prod(v.shape) for path, v in leaves if getattr(path[-1], "key", None) != FEEDBACK))


class Spec(NamedTuple):
    """The program spec: the config's static part and the output width."""

    config: Static
    out_features: int


def initial_optimizer_state(spec: Spec, hyper: dict, params: Any) -> Any:
    """The optimiser's initial state, made on the host without running (or compiling) its ``init``: every optimiser
    here starts from zeros (moments, traces, step counts), so zeros of the state's abstract shapes are exact
    (``tests/models/train/test_training.py`` compares them with ``init``)."""
    shapes = _optimizer_state_shapes(spec, *(_abstract(tree) for tree in (hyper, params)))
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _abstract(tree: Any) -> tuple:
    """A hashable stand-in for ``tree``: its structure and its leaves' shapes and dtypes."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple(jax.ShapeDtypeStruct(np.shape(leaf), jnp.result_type(leaf)) for leaf in leaves)


@functools.lru_cache(maxsize=256)
def _optimizer_state_shapes(spec: Spec, hyper: tuple, params: tuple) -> Any:
    """The optimiser state's abstract shapes, traced once per network: they depend on the spec and the shapes of
    the parameters and the traced hyperparameters (traced here as in the programs), never on their values."""
    unflatten = lambda abstract: jax.tree_util.tree_unflatten(*abstract)  # noqa: E731
    return jax.eval_shape(lambda h, p: optimizer(spec, h).init(p), unflatten(hyper), unflatten(params))


class LayerState(NamedTuple):
    """One run's network: trained parameters, fixed variables (collection "feedback") and the optimiser state."""

    params: Any
    fixed: Any
    opt_state: Any


class RuleNetworks:
    """The model family of ``TrainConfig`` (see the module docstring and ``models.train.ModelFamily``)."""

    name = "rule-networks"
    has_diagnostics = True

    def program_spec(self, config: TrainConfig, sample_x: Any, out_features: int) -> Spec:
        return Spec(Static(config), out_features)

    def hyperparameters(self, config: TrainConfig, epoch: int = 0) -> dict[str, np.ndarray]:
        values = traced_values(config)
        values["learning_rate"] = np.asarray(config.learning_rate_at(epoch), np.float32)
        return values

    def epochs(self, config: TrainConfig) -> int:
        return config.epochs

    def batch_size(self, config: TrainConfig) -> int:
        return config.batch_size

    def prepare(self, config: TrainConfig, data: FoldData) -> FoldData:
        return data

    def init(self, config: TrainConfig, spec: Spec, sample_x: Any, rng: np.random.Generator) -> LayerState:
        variables = host_init(make_model(config, spec.out_features), sample_x, rng)
        params = variables.pop("params")
        return LayerState(params, variables, initial_optimizer_state(spec, traced_values(config), params))

    def needs_key(self, spec: Spec) -> bool:
        return get_rule(spec.config.rule).needs_rng

    def count_params(self, spec: Spec, state: LayerState) -> int:
        return count_params(state.params)

    def train_step(self, spec: Spec, hyper: dict, state: LayerState, key, x, y, idx):
        model, rule = make_model(spec.config, spec.out_features), get_rule(spec.config.rule)
        per_example = per_example_loss(spec.config.loss)

        def batch_loss(params, fixed, xb, yb, key):
            # the targets and a fresh key reach the network only for rules that need them (Rule.apply_kwargs)
            kwargs = rule.apply_kwargs(yb, key)
            outputs = model.apply({"params": params, **fixed}, xb, activation_index=hyper["activation"], **kwargs)
            loss, score = per_example(outputs, yb)
            return loss.mean(), score.mean()

        (loss, score), grads = jax.value_and_grad(batch_loss, has_aux=True)(state.params, state.fixed, x[idx], y[idx], key)
        updates, opt_state = optimizer(spec, hyper).update(grads, state.opt_state, state.params)
        return LayerState(optax.apply_updates(state.params, updates), state.fixed, opt_state), (loss, score)

    def evaluate(self, spec: Spec, hyper: dict, state: LayerState, key, x, y, val_idx, val_mask):
        model = make_model(spec.config, spec.out_features)
        loss = per_example_loss(spec.config.loss)
        variables = {"params": state.params, **state.fixed}

        def per_example(idx):
            return loss(model.apply(variables, x[idx], activation_index=hyper["activation"]), y[idx])

        return masked_means(per_example, val_idx, val_mask)

    def strategy_class(self, spec: Spec) -> str:
        return "conv" if spec.config.conv else "dense"  # with the data's rank (1-D or 2-D convolutions): the class

    def hosting(self, host: Spec, spec: Spec) -> str | None:
        """``spec``'s networks train exactly in ``host``'s program (``models.sharing``) when only the hidden layers
        differ: none wider than the host's at the same depth, and as many or fewer, the host's further layers
        keeping their width so that they can be switched off (``models.networks.hidden_layer``).

        Zero-padded units stay out of everything: their incoming kernel columns and bias are zero, so they
        compute f(0) = 0 (every activation candidate must have it); their outgoing kernel rows are zero, and so
        are the feedback matrices' rows and columns (zero-padded stored matrices, sign(0) = 0), so they receive
        a zero error; every update of a padded entry is zero, and zero moments, traces and decay keep it zero
        under both optimisers. A switched-off layer passes its input on, learns nothing and sends no error back
        (its zero weights stay zero). Rules whose backward matrix depends on its shape (``Rule.pads_exactly``)
        are excluded. Equal up to the order of floating-point sums."""
        if host.out_features != spec.out_features or host.config.differences(spec.config) - {"hidden"}:
            return None
        widths, host_widths = spec.config.hidden, host.config.hidden
        if not 1 <= len(widths) <= len(host_widths) or any(w > h for w, h in zip(widths, host_widths)):
            return None
        if not all(switchable(host_widths, i) for i in range(len(widths), len(host_widths))):
            return None
        if not get_rule(spec.config.rule).pads_exactly or not all(map(_zero_at_zero, spec.config.activation_choices)):
            return None
        return f"hidden {widths} in the program of {host_widths}"

    def hosted_points(self, host: Spec, spec: Spec, points: dict) -> dict:
        """The diagnostics of ``spec``'s networks among those of a run in ``host``'s program: without the host's
        switched-off layers (``<metric>/dense_<i>``, i >= spec's depth), whose updates and errors are zero."""
        extra = {f"dense_{i}" for i in range(len(spec.config.hidden), len(host.config.hidden))}
        return {name: values for name, values in points.items() if name.rpartition("/")[2] not in extra}

    def saved_state(self, state: LayerState) -> LayerState:
        """Parameters and feedback matrices: not the optimiser's moments, nor the layer switches (a network's own
        are all on, which is how a network applied without them runs), so files keep their format."""
        return state._replace(opt_state=None, fixed={k: v for k, v in state.fixed.items() if k != SWITCHES})

    def diagnose(self, spec: Spec, hyper: dict, state: LayerState, before: LayerState, key, x, y, idx) -> dict:
        model = make_model(spec.config, spec.out_features)
        per_example = per_example_loss(spec.config.loss)

        def mean_loss(outputs, targets):
            return per_example(outputs, targets)[0].mean()

        extra = {"activation_index": hyper["activation"]}
        out = diagnostics.diagnose(model, state.params, state.fixed, x[idx], y[idx], mean_loss, key, extra)
        out.update(diagnostics.weight_change(state.params, before.params))
        return out


RULE_NETWORKS = RuleNetworks()

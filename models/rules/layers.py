"""Flax layers for every learning rule: one dense and one convolutional module that take the rule as a field,
and the taps through which direct rules (dfa, drtp) deliver their hidden layers' errors.

Fixed feedback matrices live in the Flax variable collection ``"feedback"`` (an optimiser never sees them);
trained ones (kp) live in ``"params"`` under the name ``"feedback"``. Every variable is created through
``models.initializers.declare``, so the host-side initialisation follows each module's declared initialisers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import flax.linen as nn
import jax

from models.initializers import FanIn, Zeros, declare, initial_std
from models.rules.ops import ConvForward, DenseForward, Forward, direct_tap, error_check, rule_op, target_signal
from models.rules.registry import FEEDBACK, FEEDBACK_RNG, get_rule

Array = jax.Array
Initializer = Callable[..., Array]

NO_FEEDBACK_RNG = (
    f"this layer's backward pass draws random feedback (brsf): pass rngs={{'{FEEDBACK_RNG}': key}} to apply, "
    "a new key for every update"
)
NO_TARGET = "drtp's hidden layers learn from the target: pass target=labels to the network's __call__"
NO_TAP = (
    "a layer of a direct rule (dfa, drtp) received an all-zero error: its rule sends no error from layer to "
    "layer, so add a DirectFeedback (dfa) or DirectTarget (drtp) tap of this hidden layer's output to the network "
    "output (see models.networks.MLP); pass check_error=False to silence this check"
)


def _rule_layer(module: nn.Module, forward: Forward, x: Array, shape: tuple[int, ...]) -> Array:
    """Create the layer's variables (kernel of ``shape``, bias, feedback where the rule stores one) and apply it."""
    rule = get_rule(module.rule)
    kernel = declare(module, "params", "kernel", module.kernel_init, shape)
    bias = declare(module, "params", "bias", module.bias_init, shape[-1:])
    feedback = None
    if rule.stores_feedback:
        collection = "params" if rule.trains_feedback else FEEDBACK
        feedback = declare(module, collection, FEEDBACK, module.feedback_init, shape)
    key = None
    if rule.needs_rng:
        if not module.has_rng(FEEDBACK_RNG):
            return error_check(forward(x, kernel, bias), NO_FEEDBACK_RNG, False)
        key = module.make_rng(FEEDBACK_RNG)
    y = rule_op(rule, forward, x, kernel, bias, feedback, key, initial_std(module.kernel_init, shape))
    if rule.direct is not None and module.check_error:
        y = error_check(y, NO_TAP, True)
    return y


class Dense(nn.Module):
    """``y = x @ kernel + bias`` (kernel ``(in, features)``, as ``flax.linen.Dense``) learning by ``rule``."""

    features: int  # output units
    rule: str = "bp"  # learning rule name (models.rules.RULES)
    kernel_init: Initializer = FanIn()
    bias_init: Initializer = Zeros()
    feedback_init: Initializer = FanIn()  # stored feedback matrices (fa, kp, frsf)
    check_error: bool = True  # direct rules: warn when no tap delivers an error (a host callback per update)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _rule_layer(self, DenseForward(), x, (x.shape[-1], self.features))


def _per_axis(value: int | Sequence[int], spatial: int, what: str) -> tuple[int, ...]:
    """An int applies to every spatial axis; a sequence must give one value per axis."""
    values = (value,) * spatial if isinstance(value, int) else tuple(value)
    if len(values) != spatial:
        raise ValueError(f"{what} {value!r} does not match the input's {spatial} spatial axes")
    return values


class Conv(nn.Module):
    """``y = conv(x, kernel) + bias`` over inputs ``(batch, *spatial, channels)`` (1-D or 2-D, from the input's
    rank; as ``flax.linen.Conv``) learning by ``rule``."""

    features: int  # output channels
    kernel_size: int | Sequence[int]  # window extent, one int for every spatial axis or one per axis
    strides: int | Sequence[int] = 1  # step, one int for every spatial axis or one per axis
    padding: str = "SAME"  # "SAME" (output ceil(n / stride)) or "VALID" (no padding)
    rule: str = "bp"  # learning rule name (models.rules.RULES)
    kernel_init: Initializer = FanIn()  # fan_in = prod(window) * in_channels
    bias_init: Initializer = Zeros()
    feedback_init: Initializer = FanIn()
    check_error: bool = True  # as Dense.check_error

    @nn.compact
    def __call__(self, x: Array) -> Array:
        spatial = x.ndim - 2
        window = _per_axis(self.kernel_size, spatial, "kernel_size")
        forward = ConvForward(_per_axis(self.strides, spatial, "strides"), self.padding)
        return _rule_layer(self, forward, x, window + (x.shape[-1], self.features))


class DirectFeedback(nn.Module):
    """DFA's fixed projection from the output error to one hidden layer, as a zero-valued output tap.

    Add ``DirectFeedback(n_out)(h)`` to the network output for each hidden layer's output ``h`` (flattened
    feature maps of convolutions; see ``models.networks``): its backward pass delivers ``e @ B.T`` to ``h``.
    """

    out_features: int
    feedback_init: Initializer = FanIn()

    def _feedback(self, hidden: Array) -> Array:
        return declare(self, FEEDBACK, FEEDBACK, self.feedback_init, (hidden.shape[-1], self.out_features))

    @nn.compact
    def __call__(self, hidden: Array, target: Array | None = None) -> Array:
        return direct_tap(hidden, self._feedback(hidden), None)


class DirectTarget(DirectFeedback):
    """DRTP's fixed projection from the target to one hidden layer, as a zero-valued output tap.

    Called as ``tap(hidden, target)`` with integer labels or target vectors (``target_signal``); without a target
    the tap is zero and cannot be differentiated.
    """

    @nn.compact
    def __call__(self, hidden: Array, target: Array | None = None) -> Array:
        feedback = self._feedback(hidden)
        if target is None:  # zeros that depend on hidden, and a loud error if differentiated
            return error_check(direct_tap(hidden, feedback, None), NO_TARGET, False)
        return direct_tap(hidden, feedback, target_signal(target, self.out_features))


TAPS: dict[str, type[DirectFeedback]] = {"error": DirectFeedback, "target": DirectTarget}


def direct_tap_layer(rule_name: str, out_features: int, feedback_init: Initializer | None = None) -> nn.Module | None:
    """The tap a hidden layer of a direct rule needs (``Rule.direct``), or None for every other rule."""
    rule = get_rule(rule_name)
    if rule.direct is None:
        return None
    kwargs: dict[str, Any] = {} if feedback_init is None else {"feedback_init": feedback_init}
    return TAPS[rule.direct](out_features, **kwargs)


# The rules' dense layers under their own names, for models written by hand (the README's example).
class FADense(Dense):
    rule: str = "fa"


class KPDense(Dense):
    rule: str = "kp"


class DFADense(Dense):
    rule: str = "dfa"

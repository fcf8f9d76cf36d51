"""Learning rules as pure ``jax.custom_vjp`` functions and the Flax modules that wrap them.

Every rule keeps the ordinary forward pass ``y = x @ kernel + bias`` (kernel shape ``(in, out)``, as in
``flax.linen.Dense``) and changes only what flows backwards:

* ``bp``  -- backpropagation: the error reaches the input through ``kernel.T``.
* ``fa``  -- feedback alignment (Lillicrap, Cownden, Tweed & Akerman 2016, Nat. Commun. 7:13276): the error
  reaches the input through a fixed random matrix ``feedback`` of the kernel's shape, ``dx = dy @ feedback.T``.
  With ``feedback == kernel`` it is backpropagation exactly.
* ``kp``  -- Kolen-Pollack (Kolen & Pollack 1994; Akrout et al. 2019, NeurIPS): as ``fa``, but ``feedback``
  is trained and receives exactly the kernel's update ``x.T @ dy``; together with weight decay on both,
  ``kernel - feedback`` shrinks geometrically and the feedback aligns with the forward weights.
* ``dfa`` -- direct feedback alignment (Nokland 2016, NeurIPS): no error flows from layer to layer
  (``dx = 0``); instead every hidden layer's output ``h_l = f(a_l)`` receives the output error ``e`` through
  its own fixed random matrix, ``dh_l = e @ feedback_l.T`` with ``feedback_l`` of shape ``(n_l, n_out)``, so
  ``da_l = (e @ feedback_l.T) * f'(a_l)``. The projection is a zero-valued "tap" (``direct_feedback``) added
  to the network output, whose VJP delivers the projected error. With ``feedback_l`` equal to the product of
  the downstream kernels, a linear DFA network receives exactly the backpropagation error.
* ``usf``, ``frsf``, ``brsf`` -- sign-concordant feedback (Liao, Leibo & Poggio 2016, "How important is weight
  symmetry in backpropagation?", AAAI; in deep convolutional networks Moskovitz, Litwin-Kumar & Abbott 2018,
  arXiv:1812.06488): as ``fa``, but the feedback matrix has the signs of the *current* kernel, ``B = M * sign(W)``
  formed in the backward pass. uSF: ``M = 1 / sqrt(fan_in)`` (uniform magnitude; see
  ``models.conv.sign_feedback_scale`` for why it is scaled); frSF: ``M = |R|`` with ``R`` a fixed random matrix
  drawn once (stored as fa's ``feedback``); brSF: ``M = |R|``, ``R ~ N(0, 1 / fan_in)`` redrawn at every update
  from a key the trainer passes through the Flax rng stream ``"feedback"`` (``Rule.needs_rng``).
* ``drtp`` -- direct random target projection (Frenkel, Lefebvre & Bol 2021, Front. Neurosci. 15:629892): as
  ``dfa``, but the hidden layers receive a fixed random projection of the one-hot *target* instead of the output
  error, ``da_l = (y* @ B_l.T) * f'(a_l) / n`` (``direct_target``); the network is called with the batch's
  targets (``Rule.needs_target``).

Fixed feedback matrices live in the Flax variable collection ``"feedback"`` (never seen by the optimiser);
trained ones (``kp``) live in ``"params"`` under the name ``"feedback"``. A rule is chosen by name through
``get_rule``; nothing else in the code branches on a rule's name: what a training step must pass to a network
(targets, a random key) comes from ``Rule.apply_kwargs``. Each rule's convolution (``models.conv``) is
registered beside its dense layer (``Rule.conv``, ``Rule.conv_layer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.conv import (
    FEEDBACK_RNG,
    NO_FEEDBACK_RNG,
    BPConv,
    BRSFConv,
    DFAConv,
    FAConv,
    FRSFConv,
    KPConv,
    USFConv,
    brsf_feedback,
    fixed_feedback,
    forward_only,
    frsf_feedback,
    usf_feedback,
)

Array = jax.Array
Initializer = Callable[..., Array]

FEEDBACK = "feedback"  # name of every feedback matrix, in whichever collection it lives


def _affine(x: Array, kernel: Array, bias: Array) -> Array:
    return x @ kernel + bias


def _affine_vjp(x: Array, matrix: Array, bias: Array, dy: Array) -> tuple[Array, Array, Array]:
    """Backprop's VJP of ``x @ matrix + bias``: ``(dy @ matrix.T, x.T @ dy, sum(dy))``.

    Every rule's backward pass is this map evaluated with its feedback matrix in place of the kernel (the
    weight gradients ``x.T @ dy`` do not depend on the matrix). Using JAX's own VJP rather than hand-written
    products makes a rule whose feedback equals the kernel bit-for-bit identical to backpropagation.
    """
    return jax.vjp(_affine, x, matrix, bias)[1](dy)


def bp_dense(x: Array, kernel: Array, bias: Array) -> Array:
    """Backpropagation: an ordinary affine layer whose backward pass is JAX's own derivative."""
    return x @ kernel + bias


@jax.custom_vjp
def fa_dense(x: Array, kernel: Array, bias: Array, feedback: Array) -> Array:
    """Feedback alignment: forward ``x @ kernel + bias``; backward sends ``dy @ feedback.T`` to ``x``."""
    return x @ kernel + bias


def _fa_fwd(x, kernel, bias, feedback):
    return x @ kernel + bias, (x, bias, feedback)


def _fa_bwd(residuals, dy):
    x, bias, feedback = residuals
    dx, dkernel, dbias = _affine_vjp(x, feedback, bias, dy)
    return dx, dkernel, dbias, jnp.zeros_like(feedback)


fa_dense.defvjp(_fa_fwd, _fa_bwd)


@jax.custom_vjp
def kp_dense(x: Array, kernel: Array, bias: Array, feedback: Array) -> Array:
    """Kolen-Pollack: as ``fa_dense``, and ``feedback`` receives the same update as ``kernel``."""
    return x @ kernel + bias


def _kp_bwd(residuals, dy):
    x, bias, feedback = residuals
    dx, dkernel, dbias = _affine_vjp(x, feedback, bias, dy)
    return dx, dkernel, dbias, dkernel


kp_dense.defvjp(_fa_fwd, _kp_bwd)


@jax.custom_vjp
def dfa_dense(x: Array, kernel: Array, bias: Array) -> Array:
    """Direct feedback alignment layer: local weight update, but no error is passed on to ``x``."""
    return x @ kernel + bias


def _dfa_fwd(x, kernel, bias):
    return x @ kernel + bias, (x, kernel, bias)


def _dfa_bwd(residuals, dy):
    x, kernel, bias = residuals
    _, dkernel, dbias = _affine_vjp(x, kernel, bias, dy)
    return jnp.zeros_like(x), dkernel, dbias


dfa_dense.defvjp(_dfa_fwd, _dfa_bwd)


@jax.custom_vjp
def direct_feedback(hidden: Array, feedback: Array) -> Array:
    """A zero-valued tap to add to the network output: its VJP sends the output error to ``hidden``.

    ``hidden`` has shape ``(..., n_l)`` and ``feedback`` ``(n_l, n_out)``; the result is zeros of shape
    ``(..., n_out)``. If the network output is ``y + direct_feedback(a_l, B_l)`` and ``e = dL/dy``, then
    ``dL/da_l = e @ B_l.T``: DFA's hidden error.
    """
    return jnp.zeros(hidden.shape[:-1] + feedback.shape[-1:], hidden.dtype)


def _direct_fwd(hidden, feedback):
    return direct_feedback(hidden, feedback), feedback


def _direct_bwd(feedback, error):
    return error @ feedback.T, jnp.zeros_like(feedback)


direct_feedback.defvjp(_direct_fwd, _direct_bwd)


@jax.custom_vjp
def usf_dense(x: Array, kernel: Array, bias: Array) -> Array:
    """Uniform sign-concordant feedback (uSF; Liao, Leibo & Poggio 2016, AAAI): ``dx = dy @ B.T`` with
    ``B = sign(kernel) / sqrt(fan_in)`` formed from the current kernel in the backward pass (see
    ``models.conv.sign_feedback_scale`` for the scale)."""
    return x @ kernel + bias


def _usf_bwd(residuals, dy):
    x, kernel, bias = residuals
    return _affine_vjp(x, usf_feedback(kernel), bias, dy)


usf_dense.defvjp(_dfa_fwd, _usf_bwd)


@jax.custom_vjp
def frsf_dense(x: Array, kernel: Array, bias: Array, feedback: Array) -> Array:
    """Fixed random-magnitude sign-concordant feedback (frSF; Liao, Leibo & Poggio 2016): ``dx = dy @ B.T``
    with ``B = |feedback| * sign(kernel)``: magnitudes fixed at initialisation, signs those of the current kernel."""
    return x @ kernel + bias


def _frsf_fwd(x, kernel, bias, feedback):
    return x @ kernel + bias, (x, kernel, bias, feedback)


def _frsf_bwd(residuals, dy):
    x, kernel, bias, feedback = residuals
    dx, dkernel, dbias = _affine_vjp(x, frsf_feedback(kernel, feedback), bias, dy)
    return dx, dkernel, dbias, jnp.zeros_like(feedback)


frsf_dense.defvjp(_frsf_fwd, _frsf_bwd)


@jax.custom_vjp
def brsf_dense(x: Array, kernel: Array, bias: Array, key: Array) -> Array:
    """Batchwise random-magnitude sign-concordant feedback (brSF; Liao, Leibo & Poggio 2016; studied in deep
    networks by Moskovitz, Litwin-Kumar & Abbott 2018): ``dx = dy @ B.T`` with ``B = |R| * sign(kernel)`` and
    ``R ~ N(0, 1 / fan_in)`` drawn from ``key`` in the backward pass (``models.conv.brsf_feedback``); a new key
    per update redraws the magnitudes at every update."""
    return x @ kernel + bias


def _brsf_bwd(residuals, dy):
    x, kernel, bias, key = residuals
    dx, dkernel, dbias = _affine_vjp(x, brsf_feedback(kernel, key), bias, dy)
    return dx, dkernel, dbias, None  # a key has no cotangent


brsf_dense.defvjp(_frsf_fwd, _brsf_bwd)


def target_signal(target: Array, out_features: int) -> Array:
    """What drtp projects: one-hot rows for integer class labels, the target vector itself otherwise."""
    if jnp.issubdtype(target.dtype, jnp.integer):
        return jax.nn.one_hot(target, out_features, dtype=jnp.float32)
    return target.reshape(target.shape[0], -1)


@jax.custom_vjp
def direct_target(hidden: Array, feedback: Array, target: Array) -> Array:
    """A zero-valued tap to add to the network output: its VJP sends ``target @ feedback.T / n`` to ``hidden``.

    Direct random target projection (DRTP; Frenkel, Lefebvre & Bol 2021, Front. Neurosci. 15:629892): the
    hidden layer ``h_l = f(a_l)`` gets ``dL/dh_l = y* @ B_l.T`` whatever the output error, so
    ``da_l = (y* @ B_l.T) * f'(a_l)`` and the optimiser descends along it, as in the authors' code (their hook
    returns ``labels @ B`` as the gradient of the layer's output). ``target`` is ``(n, n_out)`` (see
    ``target_signal``); dividing by the batch size ``n`` makes the update a batch mean like every other rule's
    gradient of the mean loss. No error reaches ``target`` or ``feedback``.
    """
    return jnp.zeros(hidden.shape[:-1] + feedback.shape[-1:], hidden.dtype)


def _target_fwd(hidden, feedback, target):
    return direct_target(hidden, feedback, target), (feedback, target)


def _target_bwd(residuals, error):
    feedback, target = residuals
    dhidden = (target @ feedback.T / target.shape[0]).astype(error.dtype)
    return dhidden, jnp.zeros_like(feedback), jnp.zeros_like(target)


direct_target.defvjp(_target_fwd, _target_bwd)

NO_TARGET = "drtp's hidden layers learn from the target: pass target=labels to the network's __call__"


# ----------------------------------------------------------------------------------------------------------
# Flax modules


default_kernel_init = nn.initializers.lecun_normal()
default_feedback_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class _DenseBase(nn.Module):
    """Shared fields of the dense modules: ``y = x @ kernel + bias`` with kernel shape ``(in, features)``."""

    features: int
    kernel_init: Initializer = default_kernel_init
    bias_init: Initializer = nn.initializers.zeros_init()

    def _kernel_and_bias(self, x: Array) -> tuple[tuple[int, int], Array, Array]:
        shape = (x.shape[-1], self.features)
        return shape, self.param("kernel", self.kernel_init, shape), self.param("bias", self.bias_init, (self.features,))


class BPDense(_DenseBase):
    """``flax.linen.Dense`` under backpropagation (kept for a uniform interface across rules)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        _, kernel, bias = self._kernel_and_bias(x)
        return bp_dense(x, kernel, bias)


class FADense(_DenseBase):
    """Dense layer trained by feedback alignment; ``feedback`` is fixed (collection ``"feedback"``)."""

    feedback_init: Initializer = default_feedback_init

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape, kernel, bias = self._kernel_and_bias(x)
        return fa_dense(x, kernel, bias, fixed_feedback(self, shape))


class KPDense(_DenseBase):
    """Dense layer trained by Kolen-Pollack; ``feedback`` is a trained parameter with the kernel's update."""

    feedback_init: Initializer = default_feedback_init

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape, kernel, bias = self._kernel_and_bias(x)
        feedback = self.param(FEEDBACK, self.feedback_init, shape)
        return kp_dense(x, kernel, bias, feedback)


class DFADense(_DenseBase):
    """Dense layer of a DFA network: learns from the error delivered to its output, passes none back."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        _, kernel, bias = self._kernel_and_bias(x)
        return dfa_dense(x, kernel, bias)


class DirectFeedback(nn.Module):
    """DFA's fixed projection from the output error to one hidden layer, as a zero-valued output tap.

    Add the returned array to the network output (see ``models.networks.MLP`` and the README).
    """

    out_features: int
    feedback_init: Initializer = default_feedback_init

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        shape = (hidden.shape[-1], self.out_features)
        return direct_feedback(hidden, fixed_feedback(self, shape))


class USFDense(_DenseBase):
    """Dense layer trained with uniform sign-concordant feedback (uSF): no stored feedback matrix."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        _, kernel, bias = self._kernel_and_bias(x)
        return usf_dense(x, kernel, bias)


class FRSFDense(_DenseBase):
    """Dense layer trained with fixed random-magnitude sign-concordant feedback (frSF).

    The fixed matrix ``feedback`` (collection ``"feedback"``, initialised as fa's) holds ``R``; the backward pass
    uses ``|R| * sign(kernel)``, so ``R``'s distribution and scale set the magnitudes and the kernel the signs.
    """

    feedback_init: Initializer = default_feedback_init

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape, kernel, bias = self._kernel_and_bias(x)
        return frsf_dense(x, kernel, bias, fixed_feedback(self, shape))


class BRSFDense(_DenseBase):
    """Dense layer trained with batchwise random-magnitude sign-concordant feedback (brSF).

    The magnitudes are drawn from the Flax rng stream ``FEEDBACK_RNG`` (``"feedback"``), which the trainer
    feeds a new key at every update; without that stream the layer computes its forward pass but cannot be
    differentiated.
    """

    @nn.compact
    def __call__(self, x: Array) -> Array:
        _, kernel, bias = self._kernel_and_bias(x)
        if not self.has_rng(FEEDBACK_RNG):
            return forward_only(x @ kernel + bias, NO_FEEDBACK_RNG)
        return brsf_dense(x, kernel, bias, self.make_rng(FEEDBACK_RNG))


class DirectTarget(nn.Module):
    """DRTP's fixed projection from the target to one hidden layer, as a zero-valued output tap.

    Called as ``tap(hidden, target)`` with integer labels or target vectors (``target_signal``); add the result to
    the network output. Without a target the tap is zero and cannot be differentiated.
    """

    out_features: int
    feedback_init: Initializer = default_feedback_init

    @nn.compact
    def __call__(self, hidden: Array, target: Array | None = None) -> Array:
        shape = (hidden.shape[-1], self.out_features)
        feedback = fixed_feedback(self, shape)
        if target is None:
            return forward_only(direct_feedback(hidden, feedback), NO_TARGET)  # zeros that depend on hidden
        return direct_target(hidden, feedback, target_signal(target, self.out_features))


# ----------------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class Rule:
    """What a network needs to know about a learning rule; the registry maps names to these."""

    name: str  # registry key, used on the command line and in study names
    title: str  # human-readable name for reports
    dense: type[nn.Module]  # Flax module for a dense layer under this rule
    direct: type[nn.Module] | None  # tap projecting the output error to hidden layers (dfa), else None
    has_feedback: bool  # the rule uses feedback matrices, so their initialisation is a hyperparameter
    trains_feedback: bool  # feedback matrices are parameters updated with the kernels (kp)
    conv: type[nn.Module] | None = None  # Flax module for a convolution under this rule (models.conv), if any
    needs_rng: bool = False  # the backward pass is random: a step applies the net with rngs={FEEDBACK_RNG: new key}
    needs_target: bool = False  # the direct taps project the target: a step calls the net with target=labels
    # (kernel, stored feedback or None) -> the matrix carrying the layer's error backwards, where it is not the
    # stored feedback itself (sign-concordant rules); diagnostics compare it with the kernel (wb_angle)
    kernel_feedback: Callable[[Array, Array | None], Array] | None = None

    def apply_kwargs(self, target: Array | None, key: Array | None) -> dict[str, Any]:
        """Keyword arguments of ``model.apply`` for a differentiated pass of a network under this rule.

        Only what the rule needs: ``target`` (``needs_target``) and ``rngs`` with ``key`` (``needs_rng``); empty
        for every other rule, so their call is exactly ``model.apply(variables, x)``.
        """
        kwargs: dict[str, Any] = {}
        if self.needs_target:
            if target is None:
                raise ValueError(f"learning rule {self.name!r} needs the targets of the batch")
            kwargs["target"] = target
        if self.needs_rng:
            if key is None:
                raise ValueError(f"learning rule {self.name!r} needs a random key for every update")
            kwargs["rngs"] = {FEEDBACK_RNG: key}
        return kwargs

    def dense_layer(self, features: int, feedback_init: Initializer | None = None, **kwargs: Any) -> nn.Module:
        """A dense layer of this rule; ``feedback_init`` applies only to rules with feedback matrices."""
        if feedback_init is not None and "feedback_init" in self.dense.__dataclass_fields__:
            kwargs["feedback_init"] = feedback_init
        return self.dense(features, **kwargs)

    def conv_layer(
        self, features: int, kernel_size: int, strides: int = 1, padding: str = "SAME",
        feedback_init: Initializer | None = None, **kwargs: Any,
    ) -> nn.Module:
        """A convolution of this rule (1-D or 2-D, from the input's rank); ``feedback_init`` as in ``dense_layer``."""
        if self.conv is None:
            raise ValueError(f"learning rule {self.name!r} has no convolution layer")
        if feedback_init is not None and "feedback_init" in self.conv.__dataclass_fields__:
            kwargs["feedback_init"] = feedback_init
        return self.conv(features, kernel_size, strides, padding, **kwargs)

    def direct_tap(self, out_features: int, feedback_init: Initializer | None = None) -> nn.Module | None:
        """The output-error tap for one hidden layer (direct rules only), else ``None``."""
        if self.direct is None:
            return None
        kwargs = {} if feedback_init is None else {"feedback_init": feedback_init}
        return self.direct(out_features, **kwargs)


def _usf_kernel_feedback(kernel: Array, stored: Array | None) -> Array:
    return usf_feedback(kernel)


def _brsf_mean_feedback(kernel: Array, stored: Array | None) -> Array:
    """The expected brsf feedback ``E|R| * sign(W)``: a positive multiple of usf's (a single draw is random)."""
    return usf_feedback(kernel) * (2.0 / jnp.pi) ** 0.5


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("bp", "Backpropagation", BPDense, None, has_feedback=False, trains_feedback=False, conv=BPConv),
        Rule("fa", "Feedback alignment", FADense, None, has_feedback=True, trains_feedback=False, conv=FAConv),
        Rule("kp", "Kolen-Pollack", KPDense, None, has_feedback=True, trains_feedback=True, conv=KPConv),
        Rule(
            "dfa", "Direct feedback alignment", DFADense, DirectFeedback, has_feedback=True, trains_feedback=False,
            conv=DFAConv,
        ),
        # sign-concordant feedback: usf and brsf fix the feedback scale (models.conv.sign_feedback_scale), so they
        # have no feedback hyperparameters; frsf's stored magnitudes are initialised (and searched) as fa's matrices
        Rule(
            "usf", "Uniform sign-concordant feedback", USFDense, None, has_feedback=False, trains_feedback=False,
            conv=USFConv, kernel_feedback=_usf_kernel_feedback,
        ),
        Rule(
            "brsf", "Batchwise random-magnitude sign-concordant feedback", BRSFDense, None, has_feedback=False,
            trains_feedback=False, conv=BRSFConv, needs_rng=True, kernel_feedback=_brsf_mean_feedback,
        ),
        Rule(
            "frsf", "Fixed random-magnitude sign-concordant feedback", FRSFDense, None, has_feedback=True,
            trains_feedback=False, conv=FRSFConv, kernel_feedback=frsf_feedback,
        ),
        # drtp's layers are dfa's (no error passed back); only the taps differ
        Rule(
            "drtp", "Direct random target projection", DFADense, DirectTarget, has_feedback=True,
            trains_feedback=False, conv=DFAConv, needs_target=True,
        ),
    )
}


class UnknownRuleError(ValueError):
    """Raised for a rule name that is not in the registry."""


def get_rule(name: str) -> Rule:
    """The registered rule called ``name``; an unknown name raises an error listing the known ones."""
    try:
        return RULES[name]
    except KeyError:
        known = ", ".join(sorted(RULES))
        raise UnknownRuleError(f"unknown learning rule {name!r}; known rules: {known}") from None


def register_rule(rule: Rule) -> None:
    """Add a rule to the registry (for extensions living outside this module)."""
    if rule.name in RULES:
        raise ValueError(f"a learning rule named {rule.name!r} is already registered")
    RULES[rule.name] = rule

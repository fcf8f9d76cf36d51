"""Convolution layers for every learning rule: pure ``jax.custom_vjp`` functions and their Flax modules.

The forward pass is always the ordinary convolution ``y = conv(x, kernel) + bias`` computed by
``jax.lax.conv_general_dilated`` with 1-D (``NWC`` inputs, ``WIO`` kernels) or 2-D (``NHWC``, ``HWIO``) layouts,
as ``flax.linen.Conv``. Only the backward pass depends on the rule (see ``models.rules`` for the dense case):

* ``bp``  -- ordinary autodiff of ``conv``, whose exact VJP is written out (``_conv2d_bwd``) as convolutions that
  XLA:CPU runs fast inside ``lax.scan``; tests compare it with ``jax.vjp`` of ``lax.conv_general_dilated``.
* ``fa``  -- the error reaches the input through a fixed random kernel ``feedback`` of the kernel's shape: the
  transposed convolution with ``feedback`` instead of ``kernel``. It is the VJP of ``conv`` evaluated with
  ``feedback`` in place of ``kernel`` (the weight gradient does not depend on the kernel), as ``_affine_vjp`` in
  ``models.rules``, so with ``feedback == kernel`` it is backpropagation bit for bit under ``jit``.
* ``kp``  -- as ``fa``, and ``feedback`` receives exactly the kernel's update.
* ``dfa`` -- no error reaches the input; the layer learns from the error its output receives. In a network the
  output feature map (flattened) gets the output error through a ``models.rules.DirectFeedback`` tap, so the
  hidden error is ``e @ B.T`` reshaped to the feature map (see ``models.networks.CNN``).

This module imports only jax and flax because ``models.rules`` imports it to fill the registry; the collection
name and default initialisers below are the same as there (a test checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Initializer = Callable[..., Array]

FEEDBACK = "feedback"  # name of every feedback kernel (== models.rules.FEEDBACK)
PADDINGS = ("SAME", "VALID")
LAYOUT = ("NHWC", "HWIO", "NHWC")  # lax.conv_general_dilated layouts (input, kernel, output); 1-D runs as H = 1


def conv(x: Array, kernel: Array, bias: Array, strides: tuple[int, ...], padding: str) -> Array:
    """``conv(x, kernel) + bias`` for ``x`` of shape ``(batch, *spatial, in)`` and kernel ``(*window, in, out)``.

    One or two spatial axes; a 1-D convolution is computed as a 2-D one over a height-1 image.
    """
    spatial = kernel.ndim - 2
    if spatial not in (1, 2) or x.ndim != spatial + 2 or len(strides) != spatial:
        raise ValueError(
            f"convolution needs 1 or 2 spatial axes with inputs (batch, *spatial, channels) and one stride per "
            f"axis; got input shape {x.shape}, kernel shape {kernel.shape} and strides {strides}"
        )
    if spatial == 1:
        return _conv2d(x[:, None], kernel[None], bias, (1, *strides), padding)[:, 0]
    return _conv2d(x, kernel, bias, tuple(strides), padding)


def _pads(x: Array, kernel: Array, strides: tuple[int, ...], padding: str) -> list[tuple[int, int]]:
    return jax.lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], strides, padding)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv2d(x: Array, kernel: Array, bias: Array, strides: tuple[int, int], padding: str) -> Array:
    """2-D convolution (``NHWC`` input, ``HWIO`` kernel) plus bias, with the VJP of ``_conv2d_bwd``."""
    pads = _pads(x, kernel, strides, padding)
    return jax.lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=LAYOUT) + bias


def _conv2d_fwd(x, kernel, bias, strides, padding):
    return _conv2d(x, kernel, bias, strides, padding), (x, kernel)


def _conv2d_bwd(strides, padding, residuals, dy):
    """The exact VJP, written as stride-1 forward convolutions in the ``NHWC``/``HWIO`` layout.

    JAX's own transpose rules express the input and kernel gradients as convolutions with permuted dimension
    numbers and dilations, which XLA:CPU runs some 50x slower inside ``lax.scan`` (jax-ml/jax#12868) -- and
    the training loop is a scan. Here the strides become zeros inserted into ``dy`` (``lax.pad`` interior
    padding) and the layouts become explicit transposes, so every convolution takes the fast path:

    * ``dx = correlate(pad(dilate(dy)), flip(kernel) with in/out swapped)``;
    * ``dkernel[h, w, i, o] = sum_{n, y, x} pad(x)[n, y + h, x + w, i] * dilate(dy)[n, y, x, o]``, a correlation
      with the batch as the contracted channel axis.

    ``tests/test_conv.py`` checks both against ``jax.vjp`` of ``lax.conv_general_dilated``.
    """
    x, kernel = residuals
    zero = jnp.zeros((), dy.dtype)
    pads = _pads(x, kernel, strides, padding)
    window, size, out = kernel.shape[:2], x.shape[1:3], dy.shape[1:3]
    dilate = [(0, 0, s - 1) for s in strides]
    full = [(k - 1 - lo, n + lo - (o - 1) * s - 1, s - 1) for k, n, o, s, (lo, _) in zip(window, size, out, strides, pads)]
    dy_full = jax.lax.pad(dy, zero, [(0, 0, 0), *full, (0, 0, 0)])
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dx = jax.lax.conv_general_dilated(dy_full, flipped, (1, 1), "VALID", dimension_numbers=LAYOUT)
    x_pad = jax.lax.pad(x, zero, [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])
    dy_dilated = jax.lax.pad(dy, zero, [(0, 0, 0), *dilate, (0, 0, 0)])
    dkernel = jax.lax.conv_general_dilated(
        x_pad.transpose(3, 1, 2, 0), dy_dilated.transpose(1, 2, 0, 3), (1, 1), "VALID", dimension_numbers=LAYOUT
    )  # (in, >= kh, >= kw, out): rows beyond the kernel come from input the strides never reach
    dkernel = dkernel[:, : window[0], : window[1]].transpose(1, 2, 0, 3)
    return dx, dkernel, dy.sum((0, 1, 2))


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _conv_vjp(x, matrix, bias, dy, strides, padding):
    """Backprop's VJP of ``conv(x, matrix) + bias``: every rule evaluates it with its feedback kernel as ``matrix``."""
    return jax.vjp(partial(conv, strides=strides, padding=padding), x, matrix, bias)[1](dy)


def bp_conv(x: Array, kernel: Array, bias: Array, strides: tuple[int, ...], padding: str) -> Array:
    """Backpropagation: an ordinary convolution differentiated by JAX (through ``conv``'s exact VJP)."""
    return conv(x, kernel, bias, strides, padding)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def fa_conv(x: Array, kernel: Array, bias: Array, feedback: Array, strides: tuple[int, ...], padding: str) -> Array:
    """Feedback alignment: forward ``conv(x, kernel) + bias``; the input error is the VJP through ``feedback``."""
    return conv(x, kernel, bias, strides, padding)


def _fa_fwd(x, kernel, bias, feedback, strides, padding):
    return conv(x, kernel, bias, strides, padding), (x, bias, feedback)


def _fa_bwd(strides, padding, residuals, dy):
    x, bias, feedback = residuals
    dx, dkernel, dbias = _conv_vjp(x, feedback, bias, dy, strides, padding)
    return dx, dkernel, dbias, jnp.zeros_like(feedback)


fa_conv.defvjp(_fa_fwd, _fa_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def kp_conv(x: Array, kernel: Array, bias: Array, feedback: Array, strides: tuple[int, ...], padding: str) -> Array:
    """Kolen-Pollack: as ``fa_conv``, and ``feedback`` receives the same update as ``kernel``."""
    return conv(x, kernel, bias, strides, padding)


def _kp_bwd(strides, padding, residuals, dy):
    x, bias, feedback = residuals
    dx, dkernel, dbias = _conv_vjp(x, feedback, bias, dy, strides, padding)
    return dx, dkernel, dbias, dkernel


kp_conv.defvjp(_fa_fwd, _kp_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def dfa_conv(x: Array, kernel: Array, bias: Array, strides: tuple[int, ...], padding: str) -> Array:
    """Direct feedback alignment: local weight update from the output's error, no error passed on to ``x``."""
    return conv(x, kernel, bias, strides, padding)


def _dfa_fwd(x, kernel, bias, strides, padding):
    return conv(x, kernel, bias, strides, padding), (x, kernel, bias)


def _dfa_bwd(strides, padding, residuals, dy):
    x, kernel, bias = residuals
    _, dkernel, dbias = _conv_vjp(x, kernel, bias, dy, strides, padding)
    return jnp.zeros_like(x), dkernel, dbias


dfa_conv.defvjp(_dfa_fwd, _dfa_bwd)


# Sign-concordant feedback (Liao, Leibo & Poggio 2016, "How important is weight symmetry in backpropagation?",
# AAAI; Moskovitz, Litwin-Kumar & Abbott 2018, arXiv:1812.06488). These helpers are shared with the dense
# layers of ``models.rules`` (which imports this module), so they live here.


def sign_feedback_scale(shape: tuple[int, ...]) -> float:
    """``1 / sqrt(fan_in)`` with ``fan_in`` the product of all but the last axis (as the LeCun kernel init).

    The scale of every sign-concordant feedback matrix: ``sign(W)`` alone has entries of magnitude 1, so the
    error reaching a layer would grow by about ``sqrt(fan_in)`` per layer compared with backprop. Scaled, its
    entries have the root-mean-square of the initial kernel (and of fa's default feedback), so errors keep
    backprop's magnitude and learning rates mean the same across rules. (biotorch scales by the Xavier std
    ``sqrt(2 / (fan_in + fan_out))``; with Adam a per-layer constant hardly matters, with SGD it does.)
    """
    fan_in = 1
    for n in shape[:-1]:
        fan_in *= n
    return float(fan_in) ** -0.5


def usf_feedback(kernel: Array) -> Array:
    """uSF's feedback matrix: ``sign(kernel) / sqrt(fan_in)``, from the current forward weights."""
    return jnp.sign(kernel) * sign_feedback_scale(kernel.shape)


def frsf_feedback(kernel: Array, magnitude: Array) -> Array:
    """frSF's feedback matrix ``|R| * sign(kernel)``, with the fixed random ``R`` (stored) giving the magnitudes."""
    return jnp.abs(magnitude) * jnp.sign(kernel)


def brsf_feedback(kernel: Array, key: Array) -> Array:
    """brSF's feedback matrix ``|R| * sign(kernel)`` with ``R ~ N(0, 1 / fan_in)`` drawn from ``key``.

    ``|R|`` is half-normal: mean ``sqrt(2 / pi) / sqrt(fan_in)``, mean square ``1 / fan_in`` (the scale of
    ``sign_feedback_scale``). A new key per update gives the batchwise redrawn magnitudes of brSF.
    """
    magnitude = jax.random.normal(key, kernel.shape, kernel.dtype) * sign_feedback_scale(kernel.shape)
    return frsf_feedback(kernel, magnitude)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def forward_only(y: Array, reason: str) -> Array:
    """``y`` unchanged; differentiating through it raises ``ValueError(reason)`` while tracing.

    Layers whose backward pass needs an input the forward pass does not (a random key, a target) use it when
    applied without that input: inference works, and a gradient fails loudly instead of being silently wrong.
    """
    return y


def _forward_only_fwd(y, reason):
    return y, None


def _forward_only_bwd(reason, residuals, dy):
    raise ValueError(reason)


forward_only.defvjp(_forward_only_fwd, _forward_only_bwd)

FEEDBACK_RNG = "feedback"  # Flax rng stream of layers whose backward pass is random (brsf)
NO_FEEDBACK_RNG = (
    f"this layer's backward pass draws random feedback (brsf): pass rngs={{'{FEEDBACK_RNG}': key}} to apply, "
    "a new key for every update"
)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def usf_conv(x: Array, kernel: Array, bias: Array, strides: tuple[int, ...], padding: str) -> Array:
    """Uniform sign-concordant feedback: the input error is the VJP through ``usf_feedback(kernel)``."""
    return conv(x, kernel, bias, strides, padding)


def _usf_bwd(strides, padding, residuals, dy):
    x, kernel, bias = residuals
    return _conv_vjp(x, usf_feedback(kernel), bias, dy, strides, padding)


usf_conv.defvjp(_dfa_fwd, _usf_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def frsf_conv(x: Array, kernel: Array, bias: Array, feedback: Array, strides: tuple[int, ...], padding: str) -> Array:
    """Fixed random-magnitude sign-concordant feedback: the VJP through ``|feedback| * sign(kernel)``."""
    return conv(x, kernel, bias, strides, padding)


def _frsf_fwd(x, kernel, bias, feedback, strides, padding):
    return conv(x, kernel, bias, strides, padding), (x, kernel, bias, feedback)


def _frsf_bwd(strides, padding, residuals, dy):
    x, kernel, bias, feedback = residuals
    dx, dkernel, dbias = _conv_vjp(x, frsf_feedback(kernel, feedback), bias, dy, strides, padding)
    return dx, dkernel, dbias, jnp.zeros_like(feedback)


frsf_conv.defvjp(_frsf_fwd, _frsf_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def brsf_conv(x: Array, kernel: Array, bias: Array, key: Array, strides: tuple[int, ...], padding: str) -> Array:
    """Batchwise random-magnitude sign-concordant feedback: the VJP through ``brsf_feedback(kernel, key)``."""
    return conv(x, kernel, bias, strides, padding)


def _brsf_bwd(strides, padding, residuals, dy):
    x, kernel, bias, key = residuals
    dx, dkernel, dbias = _conv_vjp(x, brsf_feedback(kernel, key), bias, dy, strides, padding)
    return dx, dkernel, dbias, None  # a key has no cotangent


brsf_conv.defvjp(_frsf_fwd, _brsf_bwd)


# ----------------------------------------------------------------------------------------------------------
# Flax modules

default_kernel_init = nn.initializers.lecun_normal()  # fan_in = prod(window) * in, as models.rules
default_feedback_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def _window(value: int | Sequence[int], spatial: int, what: str) -> tuple[int, ...]:
    """An int applies to every spatial axis; a sequence must give one value per axis."""
    values = (value,) * spatial if isinstance(value, int) else tuple(value)
    if len(values) != spatial:
        raise ValueError(f"{what} {value!r} does not match the input's {spatial} spatial axes")
    return values


def fixed_feedback(module: nn.Module, shape: tuple[int, ...]) -> Array:
    """A feedback matrix of ``shape`` held fixed in the collection ``"feedback"`` (never seen by an optimiser).

    ``module`` must have a ``feedback_init`` field; the initialiser draws from the ``"params"`` rng stream.
    """
    return module.variable(FEEDBACK, FEEDBACK, lambda: module.feedback_init(module.make_rng("params"), shape)).value


class _ConvBase(nn.Module):
    """Shared fields and shapes of the convolution modules (inputs ``(batch, *spatial, channels)``)."""

    features: int  # output channels
    kernel_size: int | Sequence[int]  # window extent, one int for every spatial axis or one per axis
    strides: int | Sequence[int] = 1  # step, one int for every spatial axis or one per axis
    padding: str = "SAME"  # "SAME" (output ceil(n / stride)) or "VALID" (no padding)
    kernel_init: Initializer = default_kernel_init
    bias_init: Initializer = nn.initializers.zeros_init()

    def _shapes(self, x: Array) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}")
        spatial = x.ndim - 2
        window = _window(self.kernel_size, spatial, "kernel_size")
        return window + (x.shape[-1], self.features), _window(self.strides, spatial, "strides")

    def _kernel_and_bias(self, shape: tuple[int, ...]) -> tuple[Array, Array]:
        return self.param("kernel", self.kernel_init, shape), self.param("bias", self.bias_init, (self.features,))


class BPConv(_ConvBase):
    """``flax.linen.Conv`` under backpropagation (a uniform interface across rules)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape, strides = self._shapes(x)
        kernel, bias = self._kernel_and_bias(shape)
        return bp_conv(x, kernel, bias, strides, self.padding)


class FAConv(_ConvBase):
    """Convolution trained by feedback alignment; ``feedback`` is a fixed kernel (collection ``"feedback"``)."""

    feedback_init: Initializer = default_feedback_init

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape, strides = self._shapes(x)
        kernel, bias = self._kernel_and_bias(shape)
        feedback = fixed_feedback(self, shape)
        return fa_conv(x, kernel, bias, feedback, strides, self.padding)


class KPConv(_ConvBase):
    """Convolution trained by Kolen-Pollack; ``feedback`` is a trained parameter with the kernel's update."""

    feedback_init: Initializer = default_feedback_init

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape, strides = self._shapes(x)
        kernel, bias = self._kernel_and_bias(shape)
        feedback = self.param(FEEDBACK, self.feedback_init, shape)
        return kp_conv(x, kernel, bias, feedback, strides, self.padding)


class DFAConv(_ConvBase):
    """Convolution of a DFA network: learns from the error delivered to its output, passes none back.

    The error arrives through a ``models.rules.DirectFeedback`` tap on the flattened output feature map.
    """

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape, strides = self._shapes(x)
        kernel, bias = self._kernel_and_bias(shape)
        return dfa_conv(x, kernel, bias, strides, self.padding)


class USFConv(_ConvBase):
    """Convolution trained with uniform sign-concordant feedback (uSF): no stored feedback kernel."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape, strides = self._shapes(x)
        kernel, bias = self._kernel_and_bias(shape)
        return usf_conv(x, kernel, bias, strides, self.padding)


class FRSFConv(_ConvBase):
    """Convolution trained with fixed random-magnitude sign-concordant feedback (frSF).

    The fixed kernel ``feedback`` (collection ``"feedback"``) holds ``R``; the backward pass uses ``|R|``.
    """

    feedback_init: Initializer = default_feedback_init

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape, strides = self._shapes(x)
        kernel, bias = self._kernel_and_bias(shape)
        feedback = fixed_feedback(self, shape)
        return frsf_conv(x, kernel, bias, feedback, strides, self.padding)


class BRSFConv(_ConvBase):
    """Convolution trained with batchwise random-magnitude sign-concordant feedback (brSF).

    The magnitudes are drawn from the Flax rng stream ``FEEDBACK_RNG``; applied without it the layer computes
    its forward pass but cannot be differentiated (``forward_only``).
    """

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape, strides = self._shapes(x)
        kernel, bias = self._kernel_and_bias(shape)
        if not self.has_rng(FEEDBACK_RNG):
            return forward_only(conv(x, kernel, bias, strides, self.padding), NO_FEEDBACK_RNG)
        return brsf_conv(x, kernel, bias, self.make_rng(FEEDBACK_RNG), strides, self.padding)

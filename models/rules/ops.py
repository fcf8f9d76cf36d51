"""The operations behind every rule: one layer operation for dense and convolutional layers, the tap of direct
rules, and a check on the error that flows back through a value.

``rule_op(rule, forward, x, kernel, bias, feedback, key, sign_scale)`` computes the layer's ordinary ``forward(x, kernel,
bias)``; its backward pass is *JAX's own VJP of that forward function* evaluated with the rule's matrix
(``rule.backward``) in place of the kernel. The weight gradients of an affine or convolutional map do not depend
on the kernel, so every rule gets backprop's weight update for the error its layer receives, and a rule whose
matrix equals the kernel is backpropagation bit for bit. Direct rules send nothing back (a zero input error);
Kolen-Pollack's trained feedback receives the kernel's update.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from models.rules.convolution import conv
from models.rules.registry import Rule

Array = jax.Array


@dataclass(frozen=True)
class DenseForward:
    """``x @ kernel + bias`` with a kernel of shape ``(in, out)``, as ``flax.linen.Dense``."""

    def __call__(self, x: Array, kernel: Array, bias: Array) -> Array:
        return x @ kernel + bias


@dataclass(frozen=True)
class ConvForward:
    """``conv(x, kernel) + bias`` (see ``conv``) with these strides and padding."""

    strides: tuple[int, ...]
    padding: str

    def __call__(self, x: Array, kernel: Array, bias: Array) -> Array:
        return conv(x, kernel, bias, self.strides, self.padding)


Forward = DenseForward | ConvForward


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 7))
def rule_op(
    rule: Rule, forward: Forward, x: Array, kernel: Array, bias: Array, feedback: Array | None, key: Array | None,
    sign_scale: float | None = None,
) -> Array:
    """The layer ``forward(x, kernel, bias)`` whose backward pass is that of ``rule`` (see the module docstring).

    ``feedback`` is the layer's stored feedback matrix (rules with ``stores_feedback``; else None), ``key`` the
    random key of rules with a random backward pass (``needs_rng``; else None) and ``sign_scale`` the magnitude of
    sign-concordant feedback (``models.rules.registry.sign_feedback_scale``; None: LeCun's ``1 / sqrt(fan_in)``).
    """
    return forward(x, kernel, bias)


def _rule_op_fwd(rule, forward, x, kernel, bias, feedback, key, sign_scale):
    return forward(x, kernel, bias), (x, kernel, bias, feedback, key)


def _rule_op_bwd(rule, forward, sign_scale, residuals, dy):
    x, kernel, bias, feedback, key = residuals
    matrix = kernel if rule.backward is None else rule.backward(kernel, feedback, key, sign_scale)
    dx, dkernel, dbias = jax.vjp(forward, x, matrix, bias)[1](dy)
    if rule.backward is None:  # a direct rule: the layer learns from the error it receives, sends none back
        dx = jnp.zeros_like(x)
    dfeedback = None
    if feedback is not None:
        dfeedback = dkernel if rule.trains_feedback else jnp.zeros_like(feedback)
    return dx, dkernel, dbias, dfeedback, None  # a key has no cotangent


rule_op.defvjp(_rule_op_fwd, _rule_op_bwd)


# ----------------------------------------------------------------------------------------------------------
# Direct rules' taps


def target_signal(target: Array, out_features: int) -> Array:
    """What drtp projects: one-hot rows for integer class labels, the target vector itself otherwise."""
    if jnp.issubdtype(target.dtype, jnp.integer):
        return jax.nn.one_hot(target, out_features, dtype=jnp.float32)
    return target.reshape(target.shape[0], -1)


@jax.custom_vjp
def direct_tap(hidden: Array, feedback: Array, target: Array | None) -> Array:
    """A zero-valued tap to add to the network output; its VJP sends a projection to the hidden layer.

    ``hidden`` is ``(..., n_l)`` and ``feedback`` ``(n_l, n_out)``; the result is zeros of shape ``(..., n_out)``.
    Without ``target`` (dfa): if the network output is ``y + direct_tap(h_l, B_l, None)`` and ``e = dL/dy``, then
    ``dL/dh_l = e @ B_l.T``, DFA's hidden error. With ``target`` (drtp, ``(n, n_out)``, see ``target_signal``):
    ``dL/dh_l = target @ B_l.T / n`` whatever the output error, as in the DRTP authors' code (their hook returns
    ``labels @ B`` as the gradient of the layer's output); dividing by the batch size makes it a batch mean like
    every other rule's gradient of the mean loss. Nothing reaches ``feedback`` or ``target``.
    """
    return jnp.zeros(hidden.shape[:-1] + feedback.shape[-1:], hidden.dtype)


def _direct_tap_fwd(hidden, feedback, target):
    return direct_tap(hidden, feedback, target), (feedback, target)


def _direct_tap_bwd(residuals, error):
    feedback, target = residuals
    if target is None:
        return error @ feedback.T, jnp.zeros_like(feedback), None
    dhidden = (target @ feedback.T / target.shape[0]).astype(error.dtype)
    return dhidden, jnp.zeros_like(feedback), jnp.zeros_like(target)


direct_tap.defvjp(_direct_tap_fwd, _direct_tap_bwd)


# ----------------------------------------------------------------------------------------------------------
# A check on what flows backwards


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def error_check(y: Array, message: str, only_if_zero: bool) -> Array:
    """``y`` unchanged, with a check on the error (cotangent) that reaches it.

    ``only_if_zero=False``: differentiating through it raises ``ValueError(message)`` while tracing -- a layer
    applied without an input its backward pass needs (a random key, a target) computes its forward pass, and a
    gradient fails loudly instead of being silently wrong. ``only_if_zero=True``: the error passes through, and
    ``message`` is warned at run time when it is all zeros (a direct rule's layer that no tap feeds).
    """
    return y


def _error_check_fwd(y, message, only_if_zero):
    return y, None


def _warn_if_zero(is_zero, message: str) -> None:
    if bool(is_zero):
        warnings.warn(message, stacklevel=1)


def _error_check_bwd(message, only_if_zero, residuals, dy):
    if not only_if_zero:
        raise ValueError(message)
    jax.debug.callback(partial(_warn_if_zero, message=message), jnp.all(dy == 0))
    return (dy,)


error_check.defvjp(_error_check_fwd, _error_check_bwd)

"""Networks built from the layers of one learning rule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.initializers import FanIn, Ones, declare
from models.rules.convolution import PADDINGS
from models.rules.layers import Conv, Dense, Initializer, direct_tap_layer

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
    "identity": lambda x: x,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called ``name``; unknown names list the known ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}") from None


def activation_function(names: str | tuple[str, ...], index: jax.Array | None) -> Callable[[jax.Array], jax.Array]:
    """The activation ``names`` (one name), or the one among several names that the traced ``index`` selects.

    With several names every candidate is computed and the chosen one selected elementwise (``jnp.where``): one
    compiled program serves every choice, the result and its derivative are exactly the chosen function's, and
    the price is the other candidates' arithmetic (``benchmarks/study.py`` measures it).
    """
    if isinstance(names, str):
        return get_activation(names)
    functions = [get_activation(name) for name in names]
    if len(functions) == 1:
        return functions[0]
    if index is None:
        raise ValueError(f"activation is one of {names}: pass activation_index to choose it")

    def selected(a: jax.Array) -> jax.Array:
        out = functions[0](a)
        for i, f in enumerate(functions[1:], start=1):
            out = jnp.where(index == i, f(a), out)
        return out

    return selected


SWITCHES = "architecture"  # the collection of the hidden layers' on/off switches (``layer_switches``)


def layer_switches(module: nn.Module, n: int) -> jax.Array | None:
    """The ``n`` on/off switches of a network's hidden layers: created on (``Ones``) when it is initialised, read
    from its variables when applied; None (every layer on) when applied without them (a saved network's file
    holds none). A network trained in the program of a deeper one (``models.sharing``) has its extra layers off."""
    if module.is_initializing():
        return declare(module, SWITCHES, "on", Ones(), (n,))
    return module.get_variable(SWITCHES, "on") if module.has_variable(SWITCHES, "on") else None


def switchable(widths: tuple[int, ...], i: int) -> bool:
    """Hidden layer ``i`` of ``widths`` can be switched off, its input passed on as its output: it is not the
    first, and it maps a width to the same width."""
    return i > 0 and widths[i] == widths[i - 1]


def hidden_layer(layer: nn.Module, act: Callable, h: jax.Array, on: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """``(next hidden state, what the layer's direct tap reads)``: ``act(layer(h))`` twice, or, where the traced
    switch ``on`` is off, ``h`` passed on unchanged while the layer neither learns nor sends an error back under
    any rule: its input and its tap see stopped gradients and its output is not used, so its updates are zero.
    Forward values and every error that reaches the other layers are then exactly those of the network without
    it. ``on`` None: the layer has no switch."""
    if on is None:
        out = act(layer(h))
        return out, out
    out = act(layer(jnp.where(on, h, jax.lax.stop_gradient(h))))
    return jnp.where(on, out, h), jnp.where(on, out, jax.lax.stop_gradient(out))


class MLP(nn.Module):
    """A multilayer perceptron whose every layer learns by ``rule``.

    Inputs of any shape ``(batch, ...)`` are flattened. For rules with direct feedback (dfa), each hidden
    layer's output gets a zero-valued tap added to the network output, through which the output error arrives
    (drtp: through which a projection of the target arrives, so ``__call__`` takes the batch's ``target``).
    Hidden layers after the first that keep their width have a switch (``layer_switches``, ``hidden_layer``).
    """

    hidden: tuple[int, ...]  # widths of the hidden layers (empty: a linear model)
    out_features: int  # number of classes or regression targets
    rule: str = "bp"  # learning rule name from models.rules.RULES
    activation: str | tuple[str, ...] = "relu"  # hidden nonlinearity (ACTIVATIONS), or candidates (activation_index)
    feedback_init: Initializer = FanIn()  # initialiser of every feedback matrix (layers' and taps')
    kernel_init: Initializer = FanIn()  # initialiser of every forward kernel

    @nn.compact
    def __call__(self, x: jax.Array, target: jax.Array | None = None, activation_index: jax.Array | None = None):
        """Network outputs; ``target`` (labels or target vectors) reaches the taps of rules that need it (drtp);
        ``activation_index`` chooses among several candidate activations (``activation_function``)."""
        act = activation_function(self.activation, activation_index)
        dense = partial(Dense, rule=self.rule, feedback_init=self.feedback_init, kernel_init=self.kernel_init,
                        check_error=False)
        h = x.reshape(x.shape[0], -1)
        taps = []
        switches = layer_switches(self, len(self.hidden))
        for i, width in enumerate(self.hidden):
            on = switches[i] if switches is not None and switchable(self.hidden, i) else None
            h, tapped = hidden_layer(dense(width, name=f"dense_{i}"), act, h, on)
            tap = direct_tap_layer(self.rule, self.out_features, self.feedback_init)
            if tap is not None:
                taps.append(tap(tapped, target))
        y = dense(self.out_features, name="output")(h)
        return sum(taps, y)


POOLS = ("none", "max", "avg")
POOL_WINDOW = 2  # pooling window and stride along every spatial axis (VALID: an odd last row is dropped)


@dataclass(frozen=True)
class ConvLayer:
    """One layer of a convolutional trunk: convolution, activation, then optional pooling."""

    features: int  # output channels
    kernel: int  # window extent along every spatial axis
    stride: int = 1  # convolution step along every spatial axis
    padding: str = "SAME"  # "SAME" (output ceil(n / stride)) or "VALID" (output floor((n - kernel) / stride) + 1)
    pool: str = "none"  # "none", "max" or "avg" pooling with a POOL_WINDOW window and stride after the activation

    def __post_init__(self) -> None:
        if self.features < 1 or self.kernel < 1 or self.stride < 1:
            raise ValueError(f"features, kernel and stride must be >= 1, got {self}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")

    def conv_size(self, size: int) -> int:
        """Extent of one spatial axis after the convolution (< 1: the kernel does not fit)."""
        if self.padding == "SAME":
            return math.ceil(size / self.stride)
        return (size - self.kernel) // self.stride + 1 if size >= self.kernel else 0

    def macs(self, spatial: tuple[int, ...], in_channels: int) -> int:
        """Multiply-adds of the convolution for one example with input extents ``spatial`` (its compute cost)."""
        outputs = math.prod(self.conv_size(n) for n in spatial)
        return outputs * self.kernel ** len(spatial) * in_channels * self.features

    def output_size(self, size: int) -> int:
        """Extent of one spatial axis after convolution and pooling (< 1: the layer does not fit)."""
        size = self.conv_size(size)
        return size // POOL_WINDOW if self.pool != "none" else size


def pool(h: jax.Array, kind: str) -> jax.Array:
    """``POOL_WINDOW``-wide max or average pooling with the same stride over every spatial axis (VALID).

    Written as a reshape and a reduction rather than ``nn.max_pool``: XLA:CPU's gradient of the latter
    (select-and-scatter) is several times slower. Ties share a max-pool gradient equally (after a ReLU, tied
    zeros get no gradient through the activation anyway).
    """
    w = POOL_WINDOW
    spatial = h.shape[1:-1]
    h = h[(slice(None), *(slice(0, n // w * w) for n in spatial))]
    split = [h.shape[0]] + [d for n in spatial for d in (n // w, w)] + [h.shape[-1]]
    axes = tuple(range(2, 2 * len(spatial) + 1, 2))
    reduce: Callable[..., jax.Array] = jnp.max if kind == "max" else jnp.mean
    return reduce(h.reshape(split), axis=axes)


def trunk_shape(layers: tuple[ConvLayer, ...], spatial: tuple[int, ...]) -> tuple[int, ...]:
    """Spatial extents after every layer of a trunk; a ValueError names the first layer that does not fit."""
    for i, layer in enumerate(layers):
        out = tuple(layer.output_size(n) for n in spatial)
        if min(out) < 1:
            raise ValueError(f"conv layer {i} ({layer}) does not fit its input of spatial shape {spatial}")
        spatial = out
    return spatial


class CNN(nn.Module):
    """A convolutional network whose every layer learns by ``rule``: conv trunk, flatten, dense head, output.

    Inputs are ``(batch, *spatial, channels)`` with one spatial axis (sequences, 1-D convolutions) or two
    (images, 2-D convolutions). Pooling has no weights, so its backward pass is the ordinary derivative under
    every rule. For rules with direct feedback (dfa), every hidden layer's output (each conv layer's activated
    feature map, flattened, and each dense layer's) gets a zero-valued tap added to the network output, through
    which the output error arrives.
    """

    conv: tuple[ConvLayer, ...]  # the convolutional trunk, input side first
    hidden: tuple[int, ...]  # widths of the dense head between trunk and output (may be empty)
    out_features: int  # number of classes or regression targets
    rule: str = "bp"  # learning rule name from models.rules.RULES
    activation: str | tuple[str, ...] = "relu"  # after every conv and hidden dense layer, as MLP.activation
    feedback_init: Initializer = FanIn()  # initialiser of every feedback matrix (layers' and taps')
    kernel_init: Initializer = FanIn()  # initialiser of every forward kernel

    @nn.compact
    def __call__(self, x: jax.Array, target: jax.Array | None = None, activation_index: jax.Array | None = None):
        """Network outputs; ``target`` reaches the taps of rules that need it (drtp); ``activation_index`` chooses
        among several candidate activations (``activation_function``)."""
        act = activation_function(self.activation, activation_index)
        if x.ndim not in (3, 4):
            raise ValueError(f"CNN inputs must be (batch, length, channels) or (batch, h, w, channels), got {x.shape}")
        trunk_shape(self.conv, x.shape[1:-1])
        shared: dict[str, Any] = {"rule": self.rule, "feedback_init": self.feedback_init, "kernel_init": self.kernel_init,
                                  "check_error": False}
        h, taps = x, []

        def tap(hidden: jax.Array) -> None:
            layer = direct_tap_layer(self.rule, self.out_features, self.feedback_init)
            if layer is not None:
                taps.append(layer(hidden.reshape(hidden.shape[0], -1), target))

        for i, spec in enumerate(self.conv):
            h = act(Conv(spec.features, spec.kernel, spec.stride, spec.padding, name=f"conv_{i}", **shared)(h))
            tap(h)
            if spec.pool != "none":
                h = pool(h, spec.pool)
        h = h.reshape(h.shape[0], -1)
        switches = layer_switches(self, len(self.hidden))
        for i, width in enumerate(self.hidden):
            on = switches[i] if switches is not None and switchable(self.hidden, i) else None
            h, tapped = hidden_layer(Dense(width, name=f"dense_{i}", **shared), act, h, on)
            tap(tapped)
        y = Dense(self.out_features, name="output", **shared)(h)
        return sum(taps, y)

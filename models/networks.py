"""Networks built from the layers of one learning rule."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.rules import Initializer, get_rule

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


class MLP(nn.Module):
    """A multilayer perceptron whose every layer learns by ``rule``.

    Inputs of any shape ``(batch, ...)`` are flattened. For rules with direct feedback (dfa), each hidden
    layer's output gets a zero-valued tap added to the network output, through which the output error arrives.
    """

    hidden: tuple[int, ...]  # widths of the hidden layers (empty: a linear model)
    out_features: int  # number of classes or regression targets
    rule: str = "bp"  # learning rule name from models.rules.RULES
    activation: str = "relu"  # hidden nonlinearity from ACTIVATIONS
    feedback_init: Initializer | None = None  # initialiser for feedback matrices (None: the rule's default)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        rule = get_rule(self.rule)
        act = get_activation(self.activation)
        h = x.reshape(x.shape[0], -1)
        taps = []
        for i, width in enumerate(self.hidden):
            h = act(rule.dense_layer(width, self.feedback_init, name=f"dense_{i}")(h))
            tap = rule.direct_tap(self.out_features, self.feedback_init)
            if tap is not None:
                taps.append(tap(h))
        y = rule.dense_layer(self.out_features, self.feedback_init, name="output")(h)
        return sum(taps, y)

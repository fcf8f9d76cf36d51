"""The learning rules as data: which matrix carries each layer's error backwards, and what that needs.

Every rule keeps the layer's ordinary forward pass (``y = x @ W + b`` or ``y = conv(x, W) + b``) and changes only
the backward pass. What differs between rules is written down here, once, and read by the layer operation
(``models.rules.ops.rule_op``), the Flax layers and the diagnostics alike:

* ``bp``  -- backpropagation: the error reaches the input through ``W`` itself.
* ``fa``  -- feedback alignment (Lillicrap, Cownden, Tweed & Akerman 2016, Nat. Commun. 7:13276): through a fixed
  random matrix ``B`` of ``W``'s shape. With ``B == W`` it is backpropagation exactly.
* ``kp``  -- Kolen-Pollack (Kolen & Pollack 1994; Akrout et al. 2019, NeurIPS): as ``fa``, but ``B`` is trained
  and receives exactly ``W``'s update; with weight decay on both, ``W - B`` shrinks geometrically and ``B -> W``.
* ``dfa`` -- direct feedback alignment (Nokland 2016, NeurIPS): no error flows from layer to layer; every hidden
  layer's output ``h_l`` receives the output error ``e`` through its own fixed random matrix, ``dh_l = e @ B_l.T``,
  delivered by a zero-valued tap added to the network output (``models.rules.layers.DirectFeedback``).
* ``usf``, ``frsf``, ``brsf`` -- sign-concordant feedback (Liao, Leibo & Poggio 2016, AAAI; in deep networks
  Moskovitz, Litwin-Kumar & Abbott 2018, arXiv:1812.06488): ``B = M * sign(W)`` from the *current* kernel.
  uSF: ``M = s``, the standard deviation of the layer's kernel initialiser (``1 / sqrt(fan_in)`` for LeCun's, see
  ``sign_feedback_scale``); frSF: ``M = |R|``, ``R`` stored and fixed; brSF: ``M = |R|``, ``R ~ N(0, s^2)`` redrawn
  at every update from a random key.
* ``drtp`` -- direct random target projection (Frenkel, Lefebvre & Bol 2021, Front. Neurosci. 15:629892): as
  ``dfa``, but the hidden layers receive a fixed random projection of the one-hot *target*,
  ``da_l = (y* @ B_l.T) * f'(a_l) / n`` (``models.rules.layers.DirectTarget``).

Adding a rule is one ``backward`` function (or none, for a direct rule) and one row of ``RULES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp

from models.initializers import FanIn

Array = jax.Array
# (kernel W, stored feedback B or None, random key or None, sign scale s or None) -> the matrix that carries the
# layer's error to its input in place of W. Called with key None for a rule that needs one, it returns the expected
# matrix (diagnostics). s is the magnitude of sign-concordant feedback: the standard deviation of the layer's kernel
# initialiser (models.initializers.initial_std); None means LeCun's, 1 / sqrt(fan_in).
Backward = Callable[[Array, "Array | None", "Array | None", "float | None"], Array]

FEEDBACK = "feedback"  # name of every feedback matrix, in whichever collection it lives
FEEDBACK_RNG = "feedback"  # Flax rng stream of layers whose backward pass is random (brsf)
DIRECT_KINDS = ("error", "target")  # what the taps of direct rules project to the hidden layers


def sign_feedback_scale(shape: tuple[int, ...], scale: float | None = None) -> float:
    """The magnitude of a sign-concordant feedback matrix of ``shape``: ``scale``, the standard deviation of the
    layer's kernel initialiser, or ``1 / sqrt(fan_in)`` (LeCun's, our layers' default) where it is not given.

    ``sign(W)`` alone has entries of magnitude 1, so the error reaching a layer would grow by about ``sqrt(fan_in)``
    per layer compared with backprop. Scaled, its entries have the root-mean-square of the initial kernel (and of
    fa's default feedback), so errors keep backprop's magnitude and learning rates mean the same across rules.
    Under Xavier's initialisation this is biotorch's scaling factor ``sqrt(2 / (fan_in + fan_out))``; with Adam a
    per-layer constant hardly matters, with SGD it does.
    """
    return FanIn().std(shape) if scale is None else float(scale)  # the default kernel initialiser's


def usf_feedback(kernel: Array, scale: float | None = None) -> Array:
    """uSF's feedback matrix ``sign(kernel) * s`` from the current forward weights (``s``: ``sign_feedback_scale``)."""
    return jnp.sign(kernel) * sign_feedback_scale(kernel.shape, scale)


def frsf_feedback(kernel: Array, magnitude: Array) -> Array:
    """frSF's feedback matrix ``|R| * sign(kernel)``, with the fixed random ``R`` (stored) giving the magnitudes."""
    return jnp.abs(magnitude) * jnp.sign(kernel)


def brsf_feedback(kernel: Array, key: Array, scale: float | None = None) -> Array:
    """brSF's feedback matrix ``|R| * sign(kernel)`` with ``R ~ N(0, s^2)`` drawn from ``key`` (``s``:
    ``sign_feedback_scale``).

    ``|R|`` is half-normal: mean ``sqrt(2 / pi) * s``, mean square ``s^2``, as uSF's magnitude. A new key per update
    gives the batchwise redrawn magnitudes of brSF.
    """
    magnitude = jax.random.normal(key, kernel.shape, kernel.dtype) * sign_feedback_scale(kernel.shape, scale)
    return frsf_feedback(kernel, magnitude)


def _weights(kernel: Array, stored: Array | None, key: Array | None, scale: float | None = None) -> Array:
    return kernel


def _stored(kernel: Array, stored: Array | None, key: Array | None, scale: float | None = None) -> Array:
    if stored is None:
        raise ValueError("this rule's feedback matrix is a stored variable, and none was given")
    return stored


def _uniform_signs(kernel: Array, stored: Array | None, key: Array | None, scale: float | None = None) -> Array:
    return usf_feedback(kernel, scale)


def _fixed_magnitude_signs(kernel: Array, stored: Array | None, key: Array | None, scale: float | None = None) -> Array:
    return frsf_feedback(kernel, _stored(kernel, stored, key))


def _random_magnitude_signs(kernel: Array, stored: Array | None, key: Array | None, scale: float | None = None) -> Array:
    if key is None:  # the expected matrix E|R| * sign(W): a positive multiple of usf's (one draw is random)
        return usf_feedback(kernel, scale) * (2.0 / jnp.pi) ** 0.5
    return brsf_feedback(kernel, key, scale)


@dataclass(frozen=True)
class Rule:
    """A learning rule: how its layers send their error backwards and what a training step must give them."""

    name: str  # registry key, used on the command line and in study names
    title: str  # human-readable name for reports
    backward: Backward | None  # the matrix carrying the error to the layer's input; None: nothing is sent back
    stores_feedback: bool = False  # each layer holds a feedback matrix B of its kernel's shape (passed to backward)
    trains_feedback: bool = False  # B receives the kernel's update (a trained parameter); else B is fixed
    direct: str | None = None  # hidden layers get the output "error" or the "target" through their own fixed matrix
    needs_rng: bool = False  # backward draws random numbers: a step passes a fresh key (rng stream FEEDBACK_RNG)
    # a layer zero-padded to more units trains as the unpadded one (models.sharing): its backward matrix is zero
    # where the kernel and stored matrix are; False where it depends on the matrix's shape (a 1/sqrt(fan_in) scale,
    # random draws of that shape)
    pads_exactly: bool = True

    def __post_init__(self) -> None:
        if self.direct is not None and self.direct not in DIRECT_KINDS:
            raise ValueError(f"direct must be None or one of {', '.join(DIRECT_KINDS)}, got {self.direct!r}")
        if (self.backward is None) != (self.direct is not None):
            raise ValueError(f"rule {self.name!r}: exactly the rules that send no error back must have direct taps")

    @property
    def needs_target(self) -> bool:
        """The taps project the target: the network is called with the batch's targets."""
        return self.direct == "target"

    @property
    def has_feedback_init(self) -> bool:
        """The rule has stored feedback matrices (layer or tap), so their initialisation is a hyperparameter."""
        return self.stores_feedback or self.direct is not None

    @property
    def transports_weights(self) -> bool:
        """The error goes back through the forward weights themselves (backprop): there is no separate B."""
        return self.backward is _weights

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


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("bp", "Backpropagation", _weights),
        Rule("fa", "Feedback alignment", _stored, stores_feedback=True),
        Rule("kp", "Kolen-Pollack", _stored, stores_feedback=True, trains_feedback=True),
        Rule("dfa", "Direct feedback alignment", None, direct="error"),
        Rule("usf", "Uniform sign-concordant feedback", _uniform_signs, pads_exactly=False),
        Rule("brsf", "Batchwise random-magnitude sign-concordant feedback", _random_magnitude_signs, needs_rng=True,
             pads_exactly=False),
        # frsf's stored magnitudes are initialised (and searched) as fa's matrices
        Rule("frsf", "Fixed random-magnitude sign-concordant feedback", _fixed_magnitude_signs, stores_feedback=True),
        Rule("drtp", "Direct random target projection", None, direct="target"),
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

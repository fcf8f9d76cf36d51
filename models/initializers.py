"""Initialisers that the layers declare, and the host-side initialisation that follows those declarations.

A network's variables are drawn on the host with NumPy rather than by ``model.init`` inside a compiled program:
random-number kernels in an XLA:CPU program cost more compile time than a whole trial trains. To keep one
source of truth, the host draw is not a second table of distributions: every layer declares each variable's
initialiser (``declare``), and ``host_init`` draws each variable from the initialiser its layer declared.
The initialisers here are ordinary Flax initialisers (``init(key, shape, dtype)``) with a NumPy twin
(``host(rng, shape)``); any other Flax initialiser also works, drawn eagerly with JAX on the host.
"""

from __future__ import annotations

import contextvars
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]
DISTRIBUTIONS = ("truncated_normal", "uniform")
TRUNCATED_NORMAL_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2] (as jax.nn.initializers)


def fan_in(shape: tuple[int, ...]) -> int:
    """Inputs per output unit: the product of all but the last axis (dense ``(in, out)``, conv ``(*window, in, out)``)."""
    return max(1, math.prod(shape[:-1]))


def truncated_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal truncated to [-2, 2], rescaled to unit variance (the distribution of ``jax.nn.initializers``)."""
    z = rng.standard_normal(shape)
    while (outside := np.abs(z) > 2).any():
        z[outside] = rng.standard_normal(int(outside.sum()))
    return z / TRUNCATED_NORMAL_STD


@dataclass(frozen=True)
class FanIn:
    """Zero-mean weights of standard deviation ``gain / sqrt(fan_in)``: LeCun's initialisation for ``gain = 1``.

    ``distribution`` is a truncated normal (Flax's ``lecun_normal``) or a uniform distribution of that variance.
    """

    gain: float = 1.0  # multiplies the standard deviation (a feedback matrix's searched scale)
    distribution: str = "truncated_normal"  # or "uniform"
    mode: ClassVar[Any] = "fan_in"  # Flax's variance_scaling mode: the fan the variance is 1 over

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {self.distribution!r}")

    def fan(self, shape: tuple[int, ...]) -> float:
        return fan_in(shape)

    def std(self, shape: tuple[int, ...]) -> float:
        """The standard deviation of the weights drawn for ``shape``."""
        return self.gain * float(self.fan(shape)) ** -0.5

    def __call__(self, key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        distribution: Any = self.distribution  # "normal", "truncated_normal" or "uniform", checked at construction
        return nn.initializers.variance_scaling(self.gain**2, self.mode, distribution)(key, shape, dtype)

    def host(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        std = 1.0 / np.sqrt(self.fan(shape))
        if self.distribution == "truncated_normal":
            return self.gain * std * truncated_normal(rng, shape)
        return self.gain * rng.uniform(-np.sqrt(3) * std, np.sqrt(3) * std, shape)


def initial_std(init: Initializer, shape: tuple[int, ...]) -> float | None:
    """The standard deviation ``init`` draws weights of ``shape`` with, or None where it does not say (a Flax
    initialiser): the magnitude of a layer's sign-concordant feedback (``models.rules.registry.sign_feedback_scale``)."""
    std = getattr(init, "std", None)
    return None if std is None else std(shape)


def fan_out(shape: tuple[int, ...]) -> int:
    """Outputs per input unit: the last axis times the window (dense ``(in, out)``, conv ``(*window, in, out)``)."""
    return max(1, math.prod(shape[:-2]) * shape[-1])


@dataclass(frozen=True)
class FanAvg(FanIn):
    """Zero-mean weights of standard deviation ``gain * sqrt(2 / (fan_in + fan_out))``: Glorot and Bengio's (Xavier)
    initialisation for ``gain = 1``, uniform as PyTorch's ``xavier_uniform_`` (biotorch's default) or a truncated
    normal of that variance."""

    distribution: str = "uniform"  # or "truncated_normal"
    mode: ClassVar[Any] = "fan_avg"

    def fan(self, shape: tuple[int, ...]) -> float:
        return (fan_in(shape) + fan_out(shape)) / 2


@dataclass(frozen=True)
class Zeros:
    """All zeros (biases)."""

    def __call__(self, key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jnp.zeros(shape, dtype)

    def host(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape)


@dataclass(frozen=True)
class Ones:
    """All ones of ``dtype`` (a network's layer switches: every layer on)."""

    dtype: Any = jnp.bool_

    def __call__(self, key: Array, shape: tuple[int, ...], dtype: Any = None) -> Array:
        return jnp.ones(shape, self.dtype)

    def host(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return np.ones(shape, self.dtype)


# (collection, *module path, variable name) -> (initialiser, shape), filled while ``host_init`` traces a network
_DECLARED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("declared_variables", default=None)


def declare(module: nn.Module, collection: str, name: str, init: Initializer, shape: tuple[int, ...]) -> Array:
    """Create the variable ``collection/name`` of ``module`` with ``init``, recording the initialiser for ``host_init``.

    ``"params"`` are trained; any other collection holds fixed variables (drawn from the ``"params"`` rng stream).
    """
    declared = _DECLARED.get()
    if declared is not None:
        declared[(collection, *module.path, name)] = (init, tuple(shape))
    if collection == "params":
        return module.param(name, init, shape)
    return module.variable(collection, name, lambda: init(module.make_rng("params"), shape)).value


@functools.lru_cache(maxsize=256)
def _declared_variables(model: nn.Module, sample: jax.ShapeDtypeStruct, call_kwargs: tuple) -> tuple[Any, dict]:
    """The variable tree of ``model`` as abstract shapes, and the initialiser and shape each variable declared.

    Tracing a network's ``init`` costs ~20-50 ms, about what drawing its variables does, and every run of every
    trial needs it: so it is traced once per network and input shape (modules are hashable dataclasses)."""
    declared: dict = {}
    token = _DECLARED.set(declared)
    try:
        abstract = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x, **dict(call_kwargs)), sample)
    finally:
        _DECLARED.reset(token)
    return abstract, declared


def host_init(model: nn.Module, sample_x: Any, rng: np.random.Generator, **call_kwargs: Any) -> dict:
    """Every variable of ``model`` (called on inputs shaped like ``sample_x``), drawn on the host from ``rng``.

    Variables are drawn in the order of the variable tree (collections and names sorted), each from the
    initialiser its layer declared; the result has the structure and dtypes of ``model.init``'s.
    """
    key = (model, jax.ShapeDtypeStruct(np.shape(sample_x), jnp.result_type(sample_x)), tuple(sorted(call_kwargs.items())))
    try:
        hash(key)
    except TypeError:  # an unhashable keyword argument (an array): traced afresh
        abstract, declared = _declared_variables.__wrapped__(*key)
    else:
        abstract, declared = _declared_variables(*key)

    def draw(path, leaf):
        where = tuple(str(getattr(entry, "key", entry)) for entry in path)
        if where not in declared:
            raise ValueError(
                f"variable {'/'.join(where)} was not created through models.initializers.declare, so its "
                "initialiser is unknown to host_init"
            )
        init, shape = declared[where]
        if hasattr(init, "host"):
            value = init.host(rng, shape)
        else:  # a plain Flax initialiser: drawn with JAX, eagerly, from a key taken from rng
            value = init(jax.random.key(int(rng.integers(2**31))), shape, leaf.dtype)
        return np.asarray(value).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)

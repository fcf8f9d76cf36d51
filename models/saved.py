"""A trained network in one file: its configuration, trained parameters and feedback matrices, and how to score it.

A study retrains its best configuration on the whole training split (``hpo.study.heldout``) and saves the run of the
best trial's own seed with ``save_model`` next to its charts. ``load_model`` gives it back as a ``SavedModel``
whose ``score`` evaluates it on data exactly as training scored it (the family's ``prepare`` and ``evaluate``):

    model = load_model("results/studies/studies/mnist-5k-mlp-fa/best-model.msgpack")
    loss, accuracy = model.score(x_train, x_test, y_test)

The file is Flax's msgpack of ``{"format", "family", "config", "out_features", "input_shape", "metadata",
"state"}``: ``config`` is the configuration dataclass as JSON (read back through its type hints, so nested
``ConvLayer`` tuples come back as they were), ``state`` the family's ``saved_state`` (what evaluation needs:
trained parameters and fixed feedback variables, no optimiser state). Loading rebuilds the family's state from
the configuration and fills it with the stored arrays, so a file that does not fit its configuration is an error,
never a silently different network.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from models.machine import gib, memory_budget
from models.networks import trunk_shape
from models.rule_training import RULE_NETWORKS, TrainConfig
from models.sd import SDConfig, SegregatedDendrites
from models.train import split_as_runs

FORMAT = 1
CONFIGS = {RULE_NETWORKS.name: TrainConfig, SegregatedDendrites.name: SDConfig}  # family name -> configuration class


@dataclasses.dataclass(frozen=True)
class SavedModel:
    config: Any  # a TrainConfig or SDConfig
    state: Any  # the family's saved state (``ModelFamily.saved_state``)
    out_features: int
    input_shape: tuple[int, ...]  # one example's shape
    metadata: dict[str, Any]  # what saved it: study, trial, seed, its test score, ...

    def score(self, x_train: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(mean loss, mean score) of the network on ``x``, ``y`` (score: accuracy, or MSE for regression).

        ``x_train`` is the training split the network was trained on: a family may map its inputs with training
        statistics (segregated dendrites maps inputs to firing rates by their range), so scoring needs them as
        training did. A stochastic family (segregated dendrites' spike trains) draws from a fixed key.
        """
        family = self.config.family
        y = np.asarray(y)
        unused_labels = np.zeros((len(x_train), *y.shape[1:]), y.dtype)  # evaluation reads only the rows of ``x``
        data = family.prepare(self.config, split_as_runs(x_train, unused_labels, x, y, 1))
        spec = family.program_spec(self.config, np.zeros((1, *self.input_shape), np.float32), self.out_features)
        hyper = family.hyperparameters(self.config)
        key = jnp.zeros((2,), jnp.uint32) if family.needs_key(spec) else None
        loss, score = family.evaluate(spec, hyper, self.state, key, data.x, data.y, data.val_idx[0], data.val_mask[0])
        return float(loss), float(score)


def save_model(config: Any, state: Any, out_features: int, input_shape: tuple[int, ...],
               metadata: dict[str, Any] | None = None) -> bytes:
    """The bytes of a model file for one run's ``state`` (host arrays, no run axis); written by the caller
    (``hpo.files.atomic_write``) so a crash never leaves half a file."""
    family = config.family
    record = {
        "format": FORMAT,
        "family": family.name,
        "config": json.dumps(dataclasses.asdict(config)),
        "out_features": int(out_features),
        "input_shape": [int(n) for n in input_shape],
        "metadata": json.dumps(metadata or {}),
        "state": serialization.to_state_dict(family.saved_state(state)),
    }
    return serialization.msgpack_serialize(record)


READ_ERRORS = (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError, IndexError, OverflowError)


def load_model(path: str | Path) -> SavedModel:
    """Read a file written by ``save_model``. A file that is not one, is damaged, or whose configuration does not
    fit its arrays is a ValueError naming the file; the configuration's size is checked against the arrays the file
    holds before any network is built, so an edited configuration cannot make it allocate more than the file."""
    path = Path(path)
    try:
        record = serialization.msgpack_restore(path.read_bytes())
        if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("family") not in CONFIGS:
            found = record.get("format") if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"not a model file of this version (format {found!r})")
        config = _decode(CONFIGS[record["family"]], json.loads(record["config"]))
        input_shape = tuple(int(n) for n in record["input_shape"])
        out_features = int(record["out_features"])
        metadata = json.loads(record["metadata"])
        stored = sum(int(np.size(a)) for a in jax.tree_util.tree_leaves(record["state"]))
    except OSError as error:
        raise ValueError(f"{path}: cannot read it ({error.strerror or error})") from None
    except Exception as error:  # noqa: BLE001 -- msgpack's errors share no base class: any is "not readable"
        raise ValueError(f"{path}: not a readable model file ({type(error).__name__}: {error})") from None
    check_size(path, config, input_shape, out_features, stored)
    family = config.family
    sample = np.zeros((1, *input_shape), np.float32)
    try:
        spec = family.program_spec(config, sample, out_features)
        target = family.saved_state(family.init(config, spec, sample, np.random.default_rng(0)))
        state = serialization.from_state_dict(target, record["state"])
    except READ_ERRORS as error:
        raise ValueError(f"{path}: its arrays do not fit its configuration ({type(error).__name__}: {error})") from None
    leaves = jax.tree_util.tree_leaves
    if [np.shape(a) for a in leaves(target)] != [np.shape(a) for a in leaves(state)]:
        raise ValueError(f"{path}: its arrays do not fit its configuration")
    return SavedModel(config, state, out_features, input_shape, metadata)


def network_size(config: Any, input_shape: tuple[int, ...], out_features: int) -> tuple[int, int]:
    """(weights, activations of one example) of ``config``'s network in closed form, without building it: every
    convolution's kernel and every dense layer's matrix and bias, the dense head's input being the conv trunk's
    whole flattened output (``models.networks.trunk_shape``); activations are each layer's outputs."""
    conv = tuple(getattr(config, "conv", ()))
    *spatial, channels = input_shape if conv else (int(np.prod(input_shape)),)
    weights, activations = 0, 0
    for layer in conv:
        weights += layer.kernel ** len(spatial) * channels * layer.features + layer.features
        activations += math.prod(layer.conv_size(n) for n in spatial) * layer.features
        spatial, channels = list(trunk_shape((layer,), tuple(spatial))), layer.features
    sizes = [math.prod(spatial) * channels, *config.hidden, out_features]
    for a, b in zip(sizes, sizes[1:]):
        weights += int(a) * int(b) + int(b)
        activations += int(b)
    return weights, activations


BYTES_PER_VALUE = 4  # float32
COPIES = 3  # of the weights while loading: the stored arrays, the freshly initialised network, its feedback


def check_size(path: Path, config: Any, input_shape: tuple[int, ...], out_features: int, stored: int) -> None:
    """Refuse, before anything is built, a configuration whose network needs more weights than the file holds (an
    edited configuration must not make loading allocate more than the file), or more memory than this process may
    allocate (``models.machine.memory_budget``): its weights, one example and its activations."""
    if not input_shape or any(n < 1 for n in input_shape):
        raise ValueError(f"{path}: its input shape {input_shape} is not a shape")
    try:
        weights, activations = network_size(config, input_shape, out_features)
    except ValueError as error:  # a layer that does not fit its input
        raise ValueError(f"{path}: {error}") from None
    biases = sum(layer.features for layer in getattr(config, "conv", ())) + sum(config.hidden) + out_features
    if weights - biases > stored:
        raise ValueError(f"{path}: its configuration needs {weights - biases} weights but the file holds {stored}")
    needed = BYTES_PER_VALUE * (COPIES * weights + math.prod(input_shape) + activations)
    budget = memory_budget()
    if budget is not None and needed > budget:
        raise ValueError(f"{path}: its network needs about {gib(needed)} to load; this process may allocate "
                         f"{gib(budget)}")


def _decode(hint: Any, value: Any) -> Any:
    """``value`` (from JSON) as the type ``hint`` describes: dataclasses and tuples rebuilt, the rest as it is."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict):
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: _decode(hints[f.name], value[f.name]) for f in dataclasses.fields(hint) if f.name in value})
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _decode(next(a for a in args if a is not type(None)), value)
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in value)
        return tuple(_decode(a, v) for a, v in zip(args, value))
    return value

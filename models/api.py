"""One entry point for every kind of network: dispatch on the configuration's type.

``models.train.TrainConfig`` (networks of custom-VJP layers) is trained by ``models.train.cross_validate``;
other model families with their own training dynamics (for example segregated dendrites) register their
configuration type and trainer here. ``hpo`` only ever calls ``cross_validate`` and ``fit_and_score`` below.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from models import train
from models.train import CVResult, FoldData

Trainer = Callable[..., CVResult]  # (config, data, out_features, seed, on_epoch=, fold_strategy=, on_compiled=)

TRAINERS: dict[type, Trainer] = {train.TrainConfig: train.cross_validate}


def register_trainer(config_type: type, trainer: Trainer) -> None:
    TRAINERS[config_type] = trainer


def cross_validate(config: Any, data: FoldData, out_features: int, seed: int, **kwargs: Any) -> CVResult:
    """Cross-validate ``config`` with the trainer registered for its type (see ``models.train.cross_validate``)."""
    try:
        trainer = TRAINERS[type(config)]
    except KeyError:
        raise TypeError(f"no trainer registered for {type(config).__name__}") from None
    return trainer(config, data, out_features, seed, **kwargs)


def fit_and_score(
    config: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    out_features: int,
    seed: int,
) -> float:
    """Train on the whole training split and return the score on the test split.

    The same program as cross-validation with one "fold" whose validation part is the test split.
    """
    n_train, n_test = len(x_train), len(x_test)
    data = FoldData(
        x=jnp.asarray(np.concatenate([x_train, x_test])),
        y=jnp.asarray(np.concatenate([y_train, y_test])),
        train_idx=np.arange(n_train, dtype=np.int32)[None],
        val_idx=jnp.arange(n_train, n_train + n_test, dtype=jnp.int32)[None],
        val_mask=jnp.ones((1, n_test), bool),
    )
    return float(cross_validate(config, data, out_features, seed).fold_scores[0])

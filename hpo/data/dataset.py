"""The ``Dataset`` type and its standardisation: what every loader (bundled or torchvision files) returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

STANDARDISE_ROWS = 4096  # rows standardised at a time (bounds the temporary arrays)


@dataclass(frozen=True)
class Dataset:
    """A dataset with its fixed train/test split."""

    name: str  # registry name
    task: str  # "classification" (maximise accuracy) or "regression" (minimise MSE)
    x_train: np.ndarray  # float32 inputs, natural shape
    y_train: np.ndarray  # int32 labels (classification) or float32 (n, d) targets (regression)
    x_test: np.ndarray
    y_test: np.ndarray
    out_features: int  # number of classes or regression targets
    description: str = ""  # where the data comes from

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def metric(self) -> str:
        return "accuracy" if self.task == "classification" else "mse"

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return "maximize" if self.task == "classification" else "minimize"

    @property
    def loss(self) -> str:
        return "cross_entropy" if self.task == "classification" else "mse"


def standardise(x: np.ndarray, mean, std, scale: float = 1.0) -> np.ndarray:
    """``(x * scale - mean) / std`` as float32, computed a block of rows at a time in NumPy's precision for
    the operands (float64 for integer images and float64 statistics), so no full-size float64 copy is made.

    ``mean`` and ``std`` are scalars (global statistics) or per-channel arrays that broadcast over the last axis.
    """
    out = np.empty(x.shape, np.float32)
    for start in range(0, len(x), STANDARDISE_ROWS):
        block = x[start : start + STANDARDISE_ROWS]
        if scale != 1.0:
            block = block * scale
        out[start : start + STANDARDISE_ROWS] = (block - mean) / std
    return out


def standardise_split(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero mean, unit variance with the global statistics of the training split only."""
    mean, std = x_train.mean(), x_train.std()
    return standardise(x_train, mean, std), standardise(x_test, mean, std)

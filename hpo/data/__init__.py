"""Datasets, their fixed train/test splits, and k-fold cross-validation indices.

Every dataset has a fixed test split. Cross-validation folds are drawn from the training split only, so nothing
tuned by a study ever sees the test split; it scores the best configuration once, at the end. Inputs keep their
natural shape (images ``(n, h, w, c)``, sequences ``(n, length, 1)``); MLPs flatten them.

    from hpo.data import load_dataset, make_folds
    data = load_dataset("fashion-mnist")          # files found as hpo.data.sources says; bundled ones need none
    folds = make_folds(data, k=3, seed=0)
"""

from __future__ import annotations

import os
from typing import Callable

from hpo.data.bundled import BUNDLED
from hpo.data.dataset import Dataset, standardise, standardise_split
from hpo.data.folds import Folds, check_folds, make_folds
from hpo.data.sources import SPECS, default_data_dir, load_file_dataset
from hpo.errors import UsageError

# Datasets read from files (--data-dir, Debian's package folder, or downloaded by torchvision): name -> loader.
FILE_DATASETS: dict[str, Callable[..., Dataset]] = {
    name: (lambda data_dir=None, name=name: load_file_dataset(name, data_dir)) for name in SPECS
}
DATASETS: dict[str, Callable[..., Dataset]] = {**BUNDLED, **FILE_DATASETS}


def check_dataset_name(name: str) -> None:
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a registered dataset by name; ``data_dir`` is where file datasets are looked for first
    (``hpo.data.sources``); the bundled ones ignore it."""
    check_dataset_name(name)
    if name in FILE_DATASETS:
        return FILE_DATASETS[name](data_dir)
    return BUNDLED[name]()


__all__ = [
    "DATASETS", "FILE_DATASETS", "Dataset", "Folds", "check_dataset_name", "check_folds", "default_data_dir",
    "load_dataset", "make_folds", "standardise", "standardise_split",
]

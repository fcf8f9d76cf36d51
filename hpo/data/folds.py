"""k-fold cross-validation indices of a training split (the test split never enters a fold)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpo.data.dataset import Dataset
from hpo.errors import UsageError


@dataclass(frozen=True)
class Folds:
    """Indices of k folds of a training split, in the equal-shape layout that ``models.train.FoldData`` wants."""

    train_idx: np.ndarray  # (k, m) int32: each fold's training part, truncated to the shortest
    val_idx: np.ndarray  # (k, v) int32: each fold's validation part, padded with index 0
    val_mask: np.ndarray  # (k, v) bool: False on padding


def check_folds(dataset: Dataset, k: int) -> None:
    """``k``-fold cross-validation must be possible on the training split: every class in every fold (stratified
    folds need at least ``k`` examples of each class), and for regression at least ``k`` examples."""
    if dataset.task == "classification":
        classes, counts = np.unique(dataset.y_train, return_counts=True)
        fewest = int(counts.min())
        if k > fewest:
            rarest = classes[int(counts.argmin())]
            raise UsageError(
                f"--folds must be at most {fewest} for dataset {dataset.name!r} (its rarest class, {rarest}, has "
                f"{fewest} training examples and stratified folds need one per fold), got {k}"
            )
    elif k > len(dataset.y_train):
        raise UsageError(f"--folds must be at most {len(dataset.y_train)} for dataset {dataset.name!r}, got {k}")


def make_folds(dataset: Dataset, k: int, seed: int) -> Folds:
    """Stratified (classification) or plain (regression) shuffled k-fold split of the training split.

    Fold training parts differ in length by a few examples; they are truncated to the shortest after a
    seeded shuffle (training reshuffles every epoch, so no example is systematically left out within a fold's
    ordering, and the few dropped are a random handful). Validation parts are padded and masked, never
    truncated, so every validation example is scored.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    splitter_cls = StratifiedKFold if dataset.task == "classification" else KFold
    splitter = splitter_cls(n_splits=k, shuffle=True, random_state=seed)
    labels = dataset.y_train if dataset.task == "classification" else None
    splits = list(splitter.split(dataset.x_train, labels))
    rng = np.random.default_rng(seed)
    m = min(len(train) for train, _ in splits)
    v = max(len(val) for _, val in splits)
    train_idx = np.stack([rng.permutation(train)[:m] for train, _ in splits]).astype(np.int32)
    val_idx = np.zeros((k, v), np.int32)
    val_mask = np.zeros((k, v), bool)
    for i, (_, val) in enumerate(splits):
        val_idx[i, : len(val)] = val
        val_mask[i, : len(val)] = True
    return Folds(train_idx, val_idx, val_mask)

"""Bundled datasets: fixed seeded test splits, and folds that only ever see the training split."""

import numpy as np
import pytest

from hpo.data import DATASETS, load_dataset, make_folds
from hpo.errors import UsageError

BUNDLED = ["mnist-5k", "digits", "mnist1d", "teacher", "sinreg"]


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_dataset_shapes_and_fixed_split(name):
    a, b = load_dataset(name), load_dataset(name)
    assert a.x_train.dtype == np.float32 and a.x_test.dtype == np.float32
    assert len(a.x_train) == len(a.y_train) and len(a.x_test) == len(a.y_test)
    np.testing.assert_array_equal(a.x_test, b.x_test)  # the split is fixed, not redrawn
    np.testing.assert_array_equal(a.y_train, b.y_train)
    if a.task == "classification":
        assert a.y_train.dtype == np.int32 and set(np.unique(a.y_train)) == set(range(a.out_features))
        assert a.direction == "maximize" and a.metric == "accuracy"
    else:
        assert a.y_train.shape[1] == a.out_features and a.direction == "minimize" and a.metric == "mse"


def test_expected_sizes():
    assert load_dataset("mnist-5k").x_train.shape == (4000, 28, 28, 1)
    assert load_dataset("mnist-5k").x_test.shape == (1000, 28, 28, 1)
    assert load_dataset("digits").x_train.shape[1:] == (8, 8, 1)
    assert load_dataset("mnist1d").x_train.shape == (4000, 40, 1)


def test_test_split_is_disjoint_from_training_split():
    data = load_dataset("digits")
    train_rows = {row.tobytes() for row in data.x_train}
    # digits has a handful of exact duplicate images; nearly all test rows must be unseen
    assert sum(row.tobytes() in train_rows for row in data.x_test) <= 3


def test_standardised_with_training_statistics():
    data = load_dataset("mnist-5k")
    assert abs(float(data.x_train.mean())) < 1e-4 and abs(float(data.x_train.std()) - 1) < 1e-3


@pytest.mark.parametrize("name,k", [("digits", 3), ("teacher", 4)])
def test_folds_partition_the_training_split(name, k):
    data = load_dataset(name)
    folds = make_folds(data, k, seed=0)
    n = len(data.x_train)
    validation = np.concatenate([v[m] for v, m in zip(folds.val_idx, folds.val_mask)])
    np.testing.assert_array_equal(np.sort(validation), np.arange(n))  # every example validated exactly once
    for train, val, mask in zip(folds.train_idx, folds.val_idx, folds.val_mask):
        assert not set(train) & set(val[mask])  # never train on the validation part
        assert len(set(train)) == len(train)
        assert n - mask.sum() - len(train) <= k  # truncation drops at most a few examples
    if data.task == "classification":  # stratified: class proportions preserved
        overall = np.bincount(data.y_train) / n
        for val, mask in zip(folds.val_idx, folds.val_mask):
            np.testing.assert_allclose(np.bincount(data.y_train[val[mask]], minlength=len(overall)) / mask.sum(),
                                       overall, atol=0.02)


def test_folds_depend_on_seed_only():
    data = load_dataset("digits")
    np.testing.assert_array_equal(make_folds(data, 3, 1).val_idx, make_folds(data, 3, 1).val_idx)
    assert not np.array_equal(make_folds(data, 3, 1).val_idx, make_folds(data, 3, 2).val_idx)


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(UsageError, match="unknown dataset 'nope'; known datasets: mnist-5k, digits"):
        load_dataset("nope")
    assert set(BUNDLED) <= set(DATASETS)

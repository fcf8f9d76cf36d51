"""The Optuna objective: sample a configuration, cross-validate it with the compiled trainer, record the result."""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np
import optuna

from hpo.algorithms import study_space, suggest
from hpo.config import StudyConfig
from hpo.curves import encode_curves, final_diagnostics
from hpo.data import Dataset, Folds, make_folds
from hpo.errors import UsageError
from hpo.population import mark_startup, startup_length
from models.train import DivergedError, EpochMetrics, FoldData, cross_validate


def check_evaluation_points(config: StudyConfig, dataset: Dataset, folds: Folds) -> None:
    """``--evals-per-epoch`` must not exceed the mini-batches of an epoch at the largest batch size the space proposes."""
    largest = max(study_space(config).batch_sizes)
    fewest_batches = folds.train_idx.shape[1] // largest
    if config.evals_per_epoch > fewest_batches:
        raise UsageError(
            f"--evals-per-epoch must be at most {fewest_batches} (the mini-batches per epoch at batch size "
            f"{largest} on {dataset.name} with {config.folds} folds), got {config.evals_per_epoch}"
        )


def trial_seed(study_seed: int, trial_number: int) -> int:
    """Seed of one trial's networks and batch order, derived from the study seed."""
    return int(np.random.SeedSequence([study_seed, trial_number]).generate_state(1)[0])


class Objective:
    """Callable objective of one study; holds the dataset's folds on the device across trials."""

    def __init__(self, config: StudyConfig, dataset: Dataset):
        self.config = config
        self.dataset = dataset
        folds = make_folds(dataset, config.folds, config.seed)
        self.data = FoldData(
            x=jnp.asarray(dataset.x_train),
            y=jnp.asarray(dataset.y_train),
            train_idx=folds.train_idx,
            val_idx=jnp.asarray(folds.val_idx),
            val_mask=jnp.asarray(folds.val_mask),
        )
        check_evaluation_points(config, dataset, folds)
        self.startup = startup_length(config.algo)

    def __call__(self, trial: optuna.Trial) -> float:
        start = time.perf_counter()
        mark_startup(trial, self.startup)  # before sampling: the spread's population (hpo.population)
        train_config = suggest(trial, self.config, self.dataset)

        def on_epoch(epoch: int, metrics: EpochMetrics) -> None:
            trial.report(float(np.mean(metrics.val_score)), epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_reason", f"pruner stopped the trial after epoch {epoch + 1}")
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")

        try:
            return self._cross_validate(trial, train_config, on_epoch)
        finally:
            trial.set_user_attr("wall_seconds", time.perf_counter() - start)

    def _cross_validate(self, trial: optuna.Trial, train_config, on_epoch) -> float:
        try:
            result = cross_validate(
                train_config,
                self.data,
                self.dataset.out_features,
                trial_seed(self.config.seed, trial.number),
                on_epoch=on_epoch,
                fold_strategy=self.config.fold_strategy,
                on_compiled=lambda seconds: trial.set_user_attr("compile_seconds", seconds),
                evals_per_epoch=self.config.evals_per_epoch,
                diagnostics=self.config.diagnostics,
            )
        except DivergedError as error:
            trial.set_user_attr("pruned_reason", f"diverged: {error}")
            raise optuna.TrialPruned(f"diverged: {error}") from None

        trial.set_user_attr("fold_scores", [float(s) for s in result.fold_scores])
        trial.set_user_attr("fold_std", float(np.std(result.fold_scores)))
        trial.set_user_attr("train_seconds", result.train_seconds)
        trial.set_user_attr("n_params", result.n_params)
        trial.set_user_attr("curves", encode_curves(result.points, result.point_epochs))
        if self.config.diagnostics:
            trial.set_user_attr("diagnostics", final_diagnostics(result.points))
        return result.score

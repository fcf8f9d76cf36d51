"""Test scores of a study's best configuration: retrained with several seeds, stored on the study.

One seed of a training run is not a result: a chaotic run can land a few points apart on another seed or
another machine's floating point. So the best configuration is retrained on the whole training split once
per seed (``--test-seeds N``), all seeds in one compiled program (``models.train.fit_and_score``), and every
seed's test score is kept. The summaries report their mean, standard deviation and Student-t interval
(``hpo.report.stats``).

Stored as the study's ``test`` field (``hpo.record.TestScores``). Seed 0 is the trial's own seed
(``hpo.study.objective.trial_seed``), the one the single test score of earlier versions used, so
``--test-seeds 1`` means what the test score always meant.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
import optuna

from hpo.config import StudyConfig
from hpo.console import Steps
from hpo.data import Dataset
from hpo.record import TestScores
from hpo.space.algorithms import suggest
from hpo.study.objective import programs_directory, trial_seed
from models.compile import Compiler
from models.saved import save_model
from models.train import DivergedError, EpochMetrics, Plan, fit_and_score


def retraining_seeds(study_seed: int, trial_number: int, n: int) -> list[int]:
    """The ``n`` seeds the best trial is retrained with: its own trial seed first, then fresh ones derived from
    the study seed and the trial number (never from the other seeds, so asking for more keeps the first ones)."""
    extra = [int(np.random.SeedSequence([study_seed, trial_number, i]).generate_state(1)[0]) for i in range(1, n)]
    return [trial_seed(study_seed, trial_number), *extra]


def retrain_and_score(
    config: StudyConfig, dataset: Dataset, params: dict[str, Any], trial_number: int, keep_model: bool = False,
    compiler: Compiler | None = None, out: Callable[[str], None] = print, first: int = 0,
) -> tuple[TestScores, bytes | None]:
    """Retrain the configuration ``params`` of trial ``trial_number`` on the whole training split with
    ``config.test_seeds`` seeds in one program and score each on the test split; with ``first``, only the seeds
    from that index on (the scores of the earlier ones are stored: ``hpo.study.runner.record_test_score``).

    Needs no folds: the seeds and the fixed split are all it uses. Never tunes anything: the configuration is
    the one cross-validation chose, and the test split is seen only here. With ``model_path``, the network of
    seed 0 (the trial's own seed) is saved there (``models.saved``: parameters and feedback matrices). Once it
    has taken 10 s it says how far it is (``hpo.study.progress.Steps``) through ``out``.
    """
    train_config = suggest(optuna.trial.FixedTrial(params), config, dataset)
    seeds = retraining_seeds(config.seed, trial_number, config.test_seeds)[first:]
    keep_model = keep_model and first == 0  # the saved network is seed 0's
    d = dataset
    what = f"retraining trial #{trial_number} with {len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
    with Steps(config.name, out) as steps:
        steps.report(f"{what}: compiling")

        def on_epoch(epoch: int, metrics: EpochMetrics) -> None:
            score = float(np.mean(metrics.val_score))
            steps.report(f"{what}: epoch {epoch + 1}/{train_config.epochs} done, mean test {d.metric} {score:.4f}")

        try:
            # the study's fold strategy over seeds, no learning curves or diagnostics: the scores (and seed 0's network) are kept
            result = fit_and_score(
                train_config, d, seeds, plan=Plan(config.fold_strategy), on_epoch=on_epoch, keep_state=keep_model,
                compiler=compiler or Compiler(directory=programs_directory(config.cache_dir)),
            )
        except DivergedError as error:  # "fold k" of the message is the k-th seed here
            diverged = f"diverged: {error}".replace("fold", "seed")
            return TestScores(trial_number, (), tuple(seeds), dataset.metric, diverged), None
    scores = tuple(float(s) for s in result.fold_scores)
    model = None
    if keep_model:
        state = jax.tree_util.tree_map(lambda a: a[0], result.state)  # seed 0's run
        metadata = {"study": config.name, "trial": trial_number, "seed": seeds[0], "dataset": dataset.name,
                    "metric": dataset.metric, "test_score": scores[0], "params": params}
        model = save_model(train_config, state, d.out_features, d.x_train.shape[1:], metadata)
    return TestScores(trial_number, scores, tuple(seeds), dataset.metric), model

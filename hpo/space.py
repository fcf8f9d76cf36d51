"""Search spaces: define-by-run functions that turn an Optuna trial into a ``models.train.TrainConfig``.

Parameters that change array shapes (width, depth, batch size) come from small sets, so compiled programs are
reused across trials; scalars (learning rate, momentum, decay, feedback scale) are continuous and traced.
Rule-specific parameters are asked only when the rule has them (``Rule.has_feedback``,
``Rule.trains_feedback``), so the space of each rule is exactly what that rule can use.
"""

from __future__ import annotations

from typing import Any, Callable

from hpo.config import StudyConfig
from hpo.data import Dataset
from models.rules import get_rule
from models.train import TrainConfig

WIDTHS = (64, 128, 256, 512)  # hidden-layer width (all hidden layers share it)
DEPTHS = (1, 3)  # inclusive range of hidden layers
BATCH_SIZES = (32, 64, 128)
ACTIVATIONS = ("relu", "tanh")
ADAM_LR = (1e-4, 1e-2)  # log-uniform
SGD_LR = (1e-3, 3e-1)  # log-uniform
MOMENTUM = (0.5, 0.99)
FEEDBACK_DISTRIBUTIONS = ("normal", "uniform")
FEEDBACK_SCALE = (0.1, 10.0)  # log-uniform multiplier of the 1/fan_in-variance initialisation
KP_DECAY = (1e-4, 1.0)  # log-uniform decoupled weight decay (times the learning rate) of W and B


def suggest_training(trial: Any, study: StudyConfig) -> dict[str, Any]:
    """Optimiser, batch size and rule-specific feedback parameters, shared by every network family."""
    rule = get_rule(study.algo)
    params: dict[str, Any] = {"optimizer": trial.suggest_categorical("optimizer", ["adam", "sgd"])}
    if params["optimizer"] == "adam":
        params["learning_rate"] = trial.suggest_float("lr_adam", *ADAM_LR, log=True)
    else:
        params["learning_rate"] = trial.suggest_float("lr_sgd", *SGD_LR, log=True)
        params["momentum"] = trial.suggest_float("momentum", *MOMENTUM)
    params["batch_size"] = trial.suggest_categorical("batch_size", list(BATCH_SIZES))
    if rule.has_feedback:
        params["feedback_distribution"] = trial.suggest_categorical(
            "feedback_distribution", list(FEEDBACK_DISTRIBUTIONS)
        )
        params["feedback_scale"] = trial.suggest_float("feedback_scale", *FEEDBACK_SCALE, log=True)
    if rule.trains_feedback:
        params["weight_decay"] = trial.suggest_float("kp_decay", *KP_DECAY, log=True)
    return params


def suggest_mlp(trial: Any, study: StudyConfig, dataset: Dataset) -> TrainConfig:
    """Search space of multilayer perceptrons."""
    depth = trial.suggest_int("depth", *DEPTHS)
    width = trial.suggest_categorical("width", list(WIDTHS))
    activation = trial.suggest_categorical("activation", list(ACTIVATIONS))
    return TrainConfig(
        rule=study.algo,
        hidden=(width,) * depth,
        activation=activation,
        epochs=study.epochs,
        loss=dataset.loss,
        **suggest_training(trial, study),
    )


SPACES: dict[str, Callable[[Any, StudyConfig, Dataset], TrainConfig]] = {"mlp": suggest_mlp}


def suggest(trial: Any, study: StudyConfig, dataset: Dataset) -> TrainConfig:
    """The training configuration a trial proposes for ``study.model``."""
    return SPACES[study.model](trial, study, dataset)

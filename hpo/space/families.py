"""Search spaces: every model family's hyperparameters as a table of ``Parameter``s, and the define-by-run functions
that turn an Optuna trial into that family's configuration (``models.rule_training.TrainConfig``,
``models.sd.SDConfig``), one ``Space`` per model (``hpo.space.algorithms`` says which algorithm uses which).

A parameter's default range or choices is data (``MLP_PARAMETERS``, ``CNN_PARAMETERS``, ``SD_PARAMETERS``); a study
may override any of them from its ``[space]`` tables (``hpo.space.overrides``): a list of choices, a ``{low, high,
log}`` range, or a fixed value that is then not searched at all. Every question a suggest function asks goes through
``EffectiveSpace.ask``, which applies the override: a fixed value makes no ``trial.suggest_*`` call, a narrowed range
or choice set is asked under the parameter's usual Optuna name. With no override the names and distributions are
exactly those of the default space, so studies stored before spaces became data read the same.

Parameters that change array shapes (width, depth, batch size) come from small sets, so compiled programs are
reused across trials; scalars (learning rate, momentum, decay, feedback scale) are continuous and traced.
Rule-specific parameters exist only for the rules that have them (``Rule.has_feedback_init``,
``Rule.trains_feedback``), and conditional ones are asked only when their condition holds (``momentum`` only with
sgd), so the space of each rule is exactly what that rule can use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from hpo.data import Dataset
from hpo.errors import UsageError
from hpo.parallel.devices import available_memory
from hpo.space.cnn import CNN_PARAMETERS, check_cnn, suggest_cnn
from hpo.space.parameters import EffectiveSpace, Parameter, effective_space
from hpo.space.sd import SD_PARAMETERS, check_sd, suggest_sd
from hpo.space.training import MLP_PARAMETERS, StudySettings, suggest_mlp


@dataclass(frozen=True)
class Space:
    """A model's search space: the parameter table, the define-by-run sampler that asks it, and the dataset check."""

    suggest: Callable[[Any, StudySettings, Dataset], Any]  # (trial, study, dataset) -> the model family's config
    parameters: tuple[Parameter, ...]  # every parameter of the family, in the order of reports
    batch_parameter: str  # the parameter that is the mini-batch size (bounds --evals-per-epoch)
    check: Callable[[StudySettings, Dataset], None] | None = None  # UsageError when the dataset cannot be used
    # (space, dataset) -> the dense weights of the largest network the space can propose, and the parameters
    # that size it (the conv trunk is bounded by its own compute budget)
    largest_weights: Callable[[EffectiveSpace, Dataset], tuple[int, tuple[str, ...]]] | None = None

    def effective_of(self, algo: str, model: str, overrides: Mapping[str, Any]) -> EffectiveSpace:
        return effective_space(self.parameters, algo, model, overrides)

    def effective(self, study: StudySettings) -> EffectiveSpace:
        """The study's space: its algorithm's parameters with its overrides (``study.space``)."""
        return self.effective_of(study.algo, study.model, study.space)

    def largest_batch_size(self, study: StudySettings) -> int:
        return self.effective(study).largest(self.batch_parameter)

    def check_dataset(self, study: StudySettings, dataset: Dataset) -> None:
        """UsageError when the study cannot run on ``dataset`` (checked before any storage is written)."""
        if self.check is not None:
            self.check(study, dataset)
        folds = study.folds
        per_fold = len(dataset.x_train) * (folds - 1) // folds
        largest = self.largest_batch_size(study)
        if largest > per_fold:
            raise UsageError(
                f"space parameter {self.batch_parameter!r} reaches {largest}, more than the {per_fold} training "
                f"examples of a fold of {dataset.name!r} ({folds} folds)"
            )
        if self.largest_weights is not None:
            space = self.effective(study)
            weights, sized_by = self.largest_weights(space, dataset)
            check_memory(weights, study.folds, ", ".join(f"{name} {space.shown(name)}" for name in sized_by))


BYTES_PER_WEIGHT = 4 * 8  # float32, held ~8 times in training: weights, feedback, gradients, Adam's two moments, ...


def check_memory(weights: int, runs: int, sized_by: str, available: int | None = None) -> None:
    """Refuse a space whose largest network cannot be trained in this machine's memory: ``runs`` networks (the
    folds) of ``weights`` weights each, ``BYTES_PER_WEIGHT`` bytes per weight."""
    available = available_memory() if available is None else available
    needed = weights * BYTES_PER_WEIGHT * runs
    if available is not None and needed > available:
        raise UsageError(
            f"space parameters {sized_by} reach networks of {weights:.3g} weights, which need about "
            f"{needed / 2**30:.3g} GB to train {runs} at once; this machine has {available / 2**30:.3g} GB available: "
            "allow smaller values"
        )


def mlp_weights(space: EffectiveSpace, dataset: Dataset) -> tuple[int, tuple[str, ...]]:
    """Weights of the largest MLP of the space: every hidden layer of the largest width, the most layers."""
    inputs, width, depth = math.prod(dataset.input_shape), space.largest("width"), space.largest("depth")
    return inputs * width + (depth - 1) * width * width + width * dataset.out_features, ("width", "depth")


def cnn_weights(space: EffectiveSpace, dataset: Dataset) -> tuple[int, tuple[str, ...]]:
    """Weights of the largest CNN's dense head: its widest trunk output (every extent kept, the most channels)
    into the most head layers of the widest width."""
    trunk = math.prod(dataset.input_shape[:-1]) * max(space.values("conv_channels"))
    width, layers = space.largest("head_width"), space.largest("head_layers")
    head = trunk * width + (layers - 1) * width * width + width * dataset.out_features
    return head, ("head_width", "head_layers", "conv_channels")


def sd_weights(space: EffectiveSpace, dataset: Dataset) -> tuple[int, tuple[str, ...]]:
    """Weights of the largest segregated-dendrites network: forward and feedback matrices of the widest layers."""
    inputs, width, depth = math.prod(dataset.input_shape), max(space.values("sd_width")), space.largest("sd_depth")
    forward = inputs * width + (depth - 1) * width * width + width * dataset.out_features
    return forward + depth * width * dataset.out_features, ("sd_width", "sd_depth")


MLP_SPACE = Space(suggest_mlp, MLP_PARAMETERS, "batch_size", largest_weights=mlp_weights)
CNN_SPACE = Space(suggest_cnn, CNN_PARAMETERS, "batch_size", check_cnn, cnn_weights)
SD_SPACE = Space(suggest_sd, SD_PARAMETERS, "sd_batch_size", check_sd, sd_weights)

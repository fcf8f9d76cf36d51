"""Every algorithm a study can run, in one registry: the learning rules of ``models.rules`` and the whole models
with dynamics of their own (segregated dendrites), each with the models it exists for, the search space of each,
and the known-good configurations a new study tries first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpo.data import Dataset
from hpo.errors import UsageError
from hpo.space.families import CNN_SPACE, MLP_SPACE, SD_SPACE, Space
from hpo.space.parameters import EffectiveSpace, contains
from hpo.space.sd import SD_PAPER_START
from hpo.space.training import StudySettings
from models.rules import RULES


@dataclass(frozen=True)
class Algorithm:
    """One value of ``--algo``."""

    name: str  # the --algo value, part of study names
    title: str  # human-readable name for reports
    spaces: dict[str, Space]  # model (--model) -> its search space; the models this algorithm exists for
    starting_points: tuple[dict[str, Any], ...] = field(default=())  # enqueued once when a study is created

    def space(self, model: str) -> Space:
        if model not in self.spaces:
            raise UsageError(f"--algo {self.name} exists only for --model {', '.join(self.spaces)}, got {model!r}")
        return self.spaces[model]


ALGORITHMS: dict[str, Algorithm] = {
    **{name: Algorithm(name, rule.title, {"mlp": MLP_SPACE, "cnn": CNN_SPACE}) for name, rule in sorted(RULES.items())},
    # the paper's network as the first trial: sd's space is wide and only a narrow region learns at all
    "sd": Algorithm("sd", "Segregated dendrites", {"mlp": SD_SPACE}, (SD_PAPER_START,)),
}
MODELS = tuple(dict.fromkeys(model for algorithm in ALGORITHMS.values() for model in algorithm.spaces))


def get_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise UsageError(f"--algo must be one of {', '.join(ALGORITHMS)}, got {name!r}") from None


def study_space(study: StudySettings) -> Space:
    """The search space of a study's algorithm and model."""
    return get_algorithm(study.algo).space(study.model)


def study_effective_space(study: StudySettings) -> EffectiveSpace:
    """The parameters the study asks, with its ``[space]`` overrides applied (UsageError for a bad override)."""
    return study_space(study).effective(study)


def starting_points(study: StudySettings) -> list[dict[str, Any]]:
    """The algorithm's known-good configurations as this study's space can ask them.

    A value the study fixes is left out (it is not a trial parameter), and so is one outside a range or choice
    set the study narrowed (the sampler proposes that parameter instead); a point with nothing left is dropped.
    """
    space = study_effective_space(study)
    points = []
    for point in get_algorithm(study.algo).starting_points:
        kept = {}
        for name, value in point.items():
            parameter = space.parameter_of(name)
            if parameter is not None and contains(space.distributions[parameter.name], value):
                kept[name] = value
        if kept:
            points.append(kept)
    return points


def check_dataset(study: StudySettings, dataset: Dataset) -> None:
    """UsageError when the study's algorithm and model cannot use ``dataset`` (before anything is created)."""
    study_space(study).check_dataset(study, dataset)


def suggest(trial: Any, study: StudySettings, dataset: Dataset) -> Any:
    """The configuration a trial proposes for ``study.algo`` and ``study.model``."""
    return study_space(study).suggest(trial, study, dataset)

"""The stored record: every attribute a study and its trials keep in the storage, typed, in one place.

The storage is the contract between the study (``hpo.study``, ``hpo.parallel``), which writes, and everything that
reads: reports (``hpo.report``), the notebook, the trackers, optuna-dashboard (which lists them under each trial).
Optuna keeps them as JSON user attributes; this module is the only place that names their keys: a writer calls
``write_trial(trial, field=value)`` / ``write_study(study, field=value)`` with the fields of ``TrialRecord`` /
``StudyRecord`` (an unknown field is a programming error, raised at once), a reader calls ``read_trial(trial)`` /
``read_study(study)`` and gets the typed record, ``None`` for what was never written (older studies, pruned
trials). Values are stored as they have always been, so studies written by earlier versions read the same.

Trial attributes (``TrialRecord``): per-fold scores, parameter count, timing, learning curves and diagnostics, why
a trial was pruned or is surplus, which process ran it, whether it is a random start-up trial. Study attributes
(``StudyRecord``): the settings fixed when the study was created, its metric, its effective search space, and the
test scores of its best configuration (``TestScores``).

Curves. A complete trial keeps ``curves``: ``{"epoch": [...], "series": {name: [[fold 1 values], ...]}}`` with one
value per evaluation point (``epoch`` is each point's position in epochs), for the learning curves (``train_loss``,
``train_score``, ``val_loss``, ``val_score``) and the diagnostics of ``models.diagnostics`` (``update_angle/<layer>``,
``wb_angle/<layer>``, ...), 4 significant digits, ``null`` where undefined; and ``diagnostics``: each diagnostic's
final value (mean over folds). They are user attributes rather than Optuna artifacts so that every storage backend
works the same and they travel with the storage; about 6 kB per trial of a 3-hidden-layer network.

The start-up population. The spread of a study (mean, std, worst across trials) is over its ``STARTUP_TRIALS``
random start-up trials, the same experiment for every rule: the sampler's first proposals, drawn at random from
the rule's space and never pruned. A trial is marked ``startup`` when it starts, if fewer than that many trials
numbered below it have not failed (``hpo.study.population``). Studies run before the mark existed are read with
their first ``STARTUP_TRIALS`` trials that did not fail as the start-up ones (``startup_spread``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, Trial, TrialState

HALVING_PRUNERS = ("halving", "halving-half")  # successive halving over fold-epochs (hpo.study.pruners)

LEARNING = ("train_loss", "train_score", "val_loss", "val_score")  # the learning curves among a trial's series
SIGNIFICANT = 4  # digits kept in storage: angles to 0.01 degree, losses to 0.1 %
STARTUP_TRIALS = 10  # random start-up trials of every study (TPE's default), the spread's population


# ----------------------------------------------------------------------------------------------------------------
# Trials


@dataclass(frozen=True)
class TrialRecord:
    """What a trial stores beside its parameters, value and state. Every field is optional in storage."""

    fold_scores: list[float] | None = None  # final validation score of each fold, in fold order
    fold_std: float | None = None  # their standard deviation
    n_params: int | None = None  # trained forward parameters of one network
    curves: dict[str, Any] | None = None  # learning curves and diagnostics per evaluation point (encode_curves)
    diagnostics: dict[str, float | None] | None = None  # each diagnostic's final value, mean over folds
    wall_seconds: float | None = None  # the trial's whole time: compile + train + overhead
    compile_seconds: float | None = None  # tracing and compiling its programs, or loading or waiting for them
    train_seconds: float | None = None  # running its compiled epochs
    overhead_seconds: float | None = None  # the rest: sampling, initialisation, transfers, storage writes
    padding_seconds: float | None = None  # of train_seconds, spent on a larger program's padding (shared_program)
    peak_memory_mb: float | None = None  # the worker process's peak resident memory when it ended (ru_maxrss)
    background_compile_seconds: float | None = None  # its programs compiled by a background thread meanwhile
    shared_program: str | None = None  # the larger network's program it trained in (models.compile.sharing)
    pruned_reason: str | None = None  # why it ended pruned: the pruner, a divergence, no valid architecture
    surplus: str | None = None  # why it ended at once without training: the study's total was reached
    interrupted: str | None = None  # the signal that stopped it (Ctrl-C, SIGTERM): failed and re-queued, not wrong
    worker: dict[str, Any] | None = None  # the process that ran it: {"trial", "host", "pid", "started"}
    startup: bool | None = None  # a random start-up trial: the spread's population, never pruned
    starting_point: bool | None = None  # a known-good configuration the study enqueued first

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> TrialRecord:
        return cls(**{f.name: attrs[f.name] for f in fields(cls) if f.name in attrs})

    def to_attrs(self) -> dict[str, Any]:
        """The user attributes of the fields that are set."""
        return {name: value for name, value in asdict(self).items() if value is not None}


TRIAL_KEYS = frozenset(f.name for f in fields(TrialRecord))


def read_trial(trial: FrozenTrial | Trial) -> TrialRecord:
    return TrialRecord.from_attrs(trial.user_attrs)


def write_trial(trial: Any, **values: Any) -> None:
    """Store ``values`` (fields of ``TrialRecord``) as the user attributes of ``trial`` (a running Optuna trial)."""
    unknown = set(values) - TRIAL_KEYS
    if unknown:
        raise TypeError(f"not fields of TrialRecord: {', '.join(sorted(unknown))}")
    for name, value in values.items():
        trial.set_user_attr(name, value)


# ----------------------------------------------------------------------------------------------------------------
# Curves: the compact storage format of CVResult.points


def _compact(value: float) -> float | None:
    value = float(value)
    return None if not math.isfinite(value) else float(f"{value:.{SIGNIFICANT}g}")


def encode_curves(points: dict[str, np.ndarray], point_epochs: np.ndarray) -> dict[str, Any]:
    """The ``curves`` field from ``CVResult.points`` ((points, folds) arrays) and their positions."""
    return {
        "epoch": [_compact(e) for e in point_epochs],
        "series": {name: [[_compact(v) for v in fold] for fold in np.asarray(a).T] for name, a in points.items()},
    }


def decode_curves(attr: dict[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Positions (points,) and name -> (folds, points) float arrays (NaN where stored as null)."""
    epochs = np.asarray(attr["epoch"], float)
    series = {name: np.array(folds, dtype=float) for name, folds in attr["series"].items()}
    return epochs, series


def final_diagnostics(points: dict[str, np.ndarray]) -> dict[str, float | None]:
    """The ``diagnostics`` field: each diagnostic's value at the last point, mean over folds."""
    return {
        name: _compact(np.nanmean(a[-1])) if np.isfinite(a[-1]).any() else None
        for name, a in points.items()
        if name not in LEARNING
    }


# ----------------------------------------------------------------------------------------------------------------
# Studies


@dataclass(frozen=True)
class TestScores:
    """The test scores of a study's best configuration, retrained once per seed (``hpo.study.heldout``).

    Stored as ``{"trial", "seeds", "scores", "metric"}`` (and ``"error"`` with no scores when retraining diverged).
    Studies run before test seeds hold ``{"trial", "score", "metric"}``: read as one score of unknown seed.
    """

    __test__ = False  # not a pytest class

    trial: int  # number of the trial whose configuration was retrained
    scores: tuple[float, ...]  # one test score per seed (empty when retraining failed)
    seeds: tuple[int, ...] = ()  # the seeds (empty for a study that predates test seeds)
    metric: str = ""
    error: str | None = None  # why there are no scores
    predates_seeds: bool = False  # stored by a version with one test score and no seeds

    @property
    def n(self) -> int:
        """Number of seeds asked for (an attempt that failed still asked for them)."""
        return len(self.seeds) if self.seeds else len(self.scores)

    def to_attr(self) -> dict[str, Any]:
        attr: dict[str, Any] = {"trial": self.trial, "seeds": list(self.seeds), "scores": list(self.scores),
                                "metric": self.metric}
        if self.error is not None:
            attr["error"] = self.error
        return attr

    @classmethod
    def from_attr(cls, attr: Any) -> TestScores | None:
        """The stored value in either format, or None when there is none (or it is unreadable)."""
        if not isinstance(attr, dict) or not isinstance(attr.get("trial"), int):
            return None
        metric = str(attr.get("metric", ""))
        if "scores" in attr:
            return cls(attr["trial"], tuple(float(s) for s in attr["scores"]),
                       tuple(int(s) for s in attr.get("seeds", ())), metric, attr.get("error"))
        if "score" in attr:  # one score, before test seeds
            return cls(attr["trial"], (float(attr["score"]),), (), metric, predates_seeds=True)
        return None


@dataclass(frozen=True)
class StudyRecord:
    """What a study stores beside its trials. Every field is optional in storage (older studies lack some)."""

    dataset: str | None = None  # fixed when the study is created: a resume with another value is refused
    model: str | None = None
    algo: str | None = None
    folds: int | None = None
    epochs: int | None = None
    seed: int | None = None
    pruner: str | None = None  # how hopeless trials were stopped (hpo.study.pruners); older studies lack it
    metric: str | None = None  # "accuracy" (maximised) or "mse" (minimised)
    space: dict[str, Any] | None = None  # the effective search space it was created with (hpo.space.overrides)
    test: TestScores | None = field(default=None)  # the best configuration's test scores over seeds

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StudyRecord:
        values = {f.name: attrs[f.name] for f in fields(cls) if f.name in attrs}
        if "test" in values:
            values["test"] = TestScores.from_attr(values["test"])
        return cls(**values)

    def to_attrs(self) -> dict[str, Any]:
        attrs = {name: getattr(self, name) for name in STUDY_KEYS if getattr(self, name) is not None}
        if self.test is not None:
            attrs["test"] = self.test.to_attr()
        return attrs


STUDY_KEYS = tuple(f.name for f in fields(StudyRecord))
CREATION_KEYS = ("dataset", "model", "algo", "folds", "epochs", "seed", "pruner")  # fixed when a study is created


def read_study(study: Any) -> StudyRecord:
    """The record of an Optuna study (anything with ``user_attrs``)."""
    return StudyRecord.from_attrs(study.user_attrs)


def write_study(study: Any, **values: Any) -> None:
    """Store ``values`` (fields of ``StudyRecord``) as the user attributes of ``study``."""
    unknown = set(values) - set(STUDY_KEYS)
    if unknown:
        raise TypeError(f"not fields of StudyRecord: {', '.join(sorted(unknown))}")
    for name, value in values.items():
        study.set_user_attr(name, value.to_attr() if isinstance(value, TestScores) else value)


# ----------------------------------------------------------------------------------------------------------------
# The start-up population


@dataclass(frozen=True)
class Spread:
    """The start-up population of one study, as the summaries report it."""

    scores: np.ndarray  # the start-up trials' scores where they have one, in trial order
    unscored: int  # start-up trials that ended without a score
    marked: bool  # False: the study predates the mark; the population is reconstructed (module docstring)
    read_at: int | None = None  # the step the scores were read at (the first fold's end); None: final CV scores

    @property
    def n(self) -> int:
        return len(self.scores)


def startup_spread(trials: list[FrozenTrial], read_at: int | None = None) -> Spread:
    """The start-up population of a study's ``trials`` (random; see the module docstring), scored by their final
    CV value, or, with ``read_at``, by the value each reported at that step: a study whose pruner may stop a
    start-up trial after that step reads all of them there (``hpo.study.pruners``, ``spread_step``)."""
    records = {t.number: read_trial(t) for t in trials}
    marked = any(r.startup for r in records.values())
    if marked:
        population = [t for t in trials if records[t.number].startup]
    else:
        # the sampler's random phase then counted an enqueued starting point among its STARTUP_TRIALS
        population = sorted((t for t in trials if t.state != TrialState.FAIL), key=lambda t: t.number)[:STARTUP_TRIALS]
    population = [t for t in population if not records[t.number].starting_point]
    ended = [t for t in population if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if read_at is None:
        scored = [t.value for t in ended if t.state == TrialState.COMPLETE]
    else:
        scored = [t.intermediate_values[read_at] for t in ended if read_at in t.intermediate_values]
    return Spread(np.array(scored, dtype=float), len(ended) - len(scored), marked, read_at)


def spread_step(study: StudyRecord) -> int | None:
    """The step a study's start-up spread is read at: the end of the first fold for ``--pruner halving`` (its
    start-up trials are spared until then and may be stopped there), else None (final CV scores)."""
    return study.epochs if study.pruner in HALVING_PRUNERS else None

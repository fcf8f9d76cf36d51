"""Study configuration: one frozen, validated dataclass per study, from the command line or a TOML grid."""

from __future__ import annotations

import argparse
import itertools
import unicodedata
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from hpo.data import DATASETS
from hpo.errors import UsageError
from hpo.files import read_toml
from hpo.record import HALVING_PRUNERS
from hpo.space.algorithms import ALGORITHMS, MODELS, get_algorithm, study_effective_space
from hpo.space.overrides import SpaceLayer, apply_spaces, parse_space
from models.train import FOLD_STRATEGIES, Plan

SAMPLERS = ("tpe", "random", "gp", "cmaes")
PRUNERS = (*HALVING_PRUNERS, "median", "hyperband", "wilcoxon", "none")
TRACKERS = ("none", "mlflow", "wandb")  # hpo.study.trackers
DEFAULT_STORAGE = "sqlite:///studies/studies.db"


def setting(default: Any, group: str, help: str, flag: bool = True, parse: Callable[[str], Any] | None = None) -> Any:
    """A ``StudyConfig`` field with its command-line help and group (``hpo.cli`` makes the flags from these);
    ``flag=False``: set in TOML grids only; ``parse``: how the flag's text becomes a value (default: the type)."""
    kwargs = {"default_factory": default} if callable(default) else {"default": default}
    return field(**kwargs, metadata={"group": group, "help": help, "flag": flag, "parse": parse})


AUTO = "auto"


def worker_count(text: str) -> int | str:
    """``--workers``: a whole number, or ``auto``."""
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number or auto, got {text!r}") from None


GROUPS = {  # the command line's groups of study flags, in order (nanodo's config groups)
    "study": "what is studied",
    "search": "how it is searched",
    "storage": "where it is stored",
    "compute": "how trials run",
}


@dataclass(frozen=True)
class StudyConfig:
    """One hyperparameter study: which rule on which data, and how to search. Every field is a flag of
    ``python -m hpo.run`` (``--test-seeds`` for ``test_seeds``) and a key of TOML grids."""

    # what is studied
    algo: str = setting("fa", "study", "learning rule: {choices} (sd: segregated dendrites, mlp only)")
    dataset: str = setting("mnist-5k", "study", "dataset: {choices}")
    model: str = setting("mlp", "study", "network family: {choices}")
    trials: int = setting(50, "study", "total finished (complete or pruned) trials the study should reach")
    folds: int = setting(3, "study", "k of k-fold cross-validation on the training split")
    epochs: int = setting(10, "study", "training epochs per fold")
    seed: int = setting(0, "study", "study seed: sampler, folds, networks")
    test_seeds: int = setting(5, "study", "seeds the best configuration is retrained with on the whole training "
                              "split and scored on the test split: mean, std and 95%% CI over them")
    # search-space overrides, parameter -> value, [choices] or {low, high, log} (hpo.space.overrides; --space FILE)
    space: dict[str, Any] = setting(dict, "study", "search-space overrides ([space] tables)", flag=False)
    # how it is searched
    sampler: str = setting("tpe", "search", "Bayesian optimisation sampler: {choices}")
    pruner: str = setting("median", "search", "early stopping of unpromising trials: {choices}")
    # where it is stored
    storage: str = setting(DEFAULT_STORAGE, "storage", "storage URL (sqlite:///FILE, postgresql://...) or journal "
                           "file path")
    study_name: str | None = setting(None, "storage", "study name (default <dataset>-<model>-<algo>)")
    results_dir: str | None = setting(None, "storage", "where summaries and charts are written (default "
                                      "results/<storage name>: results/studies for the default storage)")
    data_dir: str | None = setting(None, "storage", "directory of the mnist, fashion-mnist and cifar10 files "
                                   "(default $HPO_DATA_DIR or ~/.cache/bioplausible-hpo/data; Debian's "
                                   "/usr/share/datasets/fashion-mnist is found without it)")
    cache_dir: str | None = setting(None, "storage", "directory of the store of compiled programs (in "
                                    "<dir>/programs), or 'none' (default $HPO_JAX_CACHE or "
                                    "~/.cache/bioplausible-hpo/jax)")
    tracker: str = setting("none", "storage", "also log every trial to an experiment tracker: {choices} (mlflow "
                           "and wandb need the extras .[mlflow] and .[wandb])")
    # how trials run
    workers: int | str = setting(AUTO, "compute", "local worker processes running each study together, each on "
                                 "cores of its own: a number, or auto: one per core on a CPU, one per GPU, as memory "
                                 "allows ($HPO_WORKERS replaces it); workers on other machines run the same command "
                                 "with the same --storage", parse=worker_count)
    trial_batch: int = setting(1, "compute", "trials each worker runs at once: those that share programs train as "
                               "one group, each reported and pruned on its own")
    fold_strategy: str = setting("auto", "compute", "{choices}: folds vmapped in one program, one after another, "
                                 "or auto: the faster, measured once per kind of program on this machine")
    evals_per_epoch: int = setting(1, "compute", "evaluation points per epoch for learning curves and diagnostics")
    diagnostics: bool = setting(True, "compute", "record alignment with backprop, W-B angles and weight change")
    compile_ahead: bool | None = setting(None, "compute", "compile while trials train (default: on a GPU, or a "
                                         "CPU with 4 or more cores)")

    def __post_init__(self) -> None:
        # Types first: a TOML grid can hold any value (study_name = 7, results_dir = ["a"]), and nothing below
        # may fail on one with a traceback or create a file for it.
        for flag, value in (("--algo", self.algo), ("--dataset", self.dataset), ("--model", self.model),
                            ("--storage", self.storage), ("--sampler", self.sampler), ("--pruner", self.pruner),
                            ("--fold-strategy", self.fold_strategy), ("--tracker", self.tracker)):
            _text(flag, value)
        for flag, optional in (("--study-name", self.study_name), ("--cache-dir", self.cache_dir),
                               ("--data-dir", self.data_dir), ("--results-dir", self.results_dir)):
            if optional is not None:
                _text(flag, optional)
        _choice("--algo", self.algo, tuple(ALGORITHMS))
        _choice("--dataset", self.dataset, list(DATASETS))
        _choice("--model", self.model, MODELS)
        get_algorithm(self.algo).space(self.model)  # the algorithm exists for this model
        _choice("--sampler", self.sampler, SAMPLERS)
        _choice("--pruner", self.pruner, PRUNERS)
        _choice("--fold-strategy", self.fold_strategy, FOLD_STRATEGIES)
        _choice("--tracker", self.tracker, TRACKERS)
        _at_least("--trials", self.trials, 1)
        _at_least("--folds", self.folds, 2)
        _at_least("--epochs", self.epochs, 1)
        _at_least("--evals-per-epoch", self.evals_per_epoch, 1)
        if not isinstance(self.diagnostics, bool):
            raise UsageError(f"diagnostics must be true or false, got {self.diagnostics!r}")
        if self.compile_ahead is not None and not isinstance(self.compile_ahead, bool):
            raise UsageError(f"compile_ahead must be true or false, got {self.compile_ahead!r}")
        if self.workers != AUTO:
            _at_least("--workers", self.workers, 1)
        _at_least("--trial-batch", self.trial_batch, 1)
        _at_least("--test-seeds", self.test_seeds, 1)
        _at_least("--seed", self.seed, 0)
        if self.study_name is not None:
            check_study_name(self.study_name)
        for flag, path in (("--storage", self.storage), ("--results-dir", self.results_dir),
                           ("--data-dir", self.data_dir), ("--cache-dir", self.cache_dir)):
            if path is not None and not path.strip():
                raise UsageError(f"{flag} must not be empty")
        if not isinstance(self.space, dict):
            raise UsageError(f"space must be a table of parameter overrides, got {self.space!r}")
        study_effective_space(self)  # every override names a parameter of this study and is well formed

    @property
    def name(self) -> str:
        return self.study_name or f"{self.dataset}-{self.model}-{self.algo}"

    @property
    def plan(self) -> Plan:
        """How every trial's epoch program is laid out: the fold strategy, evaluation points and diagnostics."""
        return Plan(self.fold_strategy, self.evals_per_epoch, self.diagnostics)


MAX_STUDY_NAME = 200  # characters; Optuna's database column holds 512, a results folder name 255 bytes


def check_study_name(name: str) -> None:
    """A study name must be one plain name: it is shown in every line and names a results folder.

    No path separators, no ``..``, no control characters (a name is never used as a path anyway, see
    ``hpo.files.study_folder``; these are refused so that what the user typed and what is stored agree).
    """
    if not name.strip():
        raise UsageError("--study-name must not be empty")
    bad = sorted({c for c in name if c in "/\\" or unicodedata.category(c).startswith("C")})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise UsageError(f"--study-name must not contain path separators or control characters ({shown}), got {name!r}")
    if ".." in name:
        raise UsageError(f"--study-name must not contain '..', got {name!r}")
    if len(name) > MAX_STUDY_NAME:
        raise UsageError(f"--study-name must be at most {MAX_STUDY_NAME} characters, got {len(name)}")


def _text(flag: str, value: Any) -> None:
    if not isinstance(value, str):
        raise UsageError(f"{flag} must be a string, got {value!r} ({type(value).__name__})")


def _choice(flag: str, value: Any, allowed: list[str] | tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")


def _at_least(flag: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise UsageError(f"{flag} must be an integer >= {low}, got {value!r}")


STUDY_KEYS = {f.name for f in fields(StudyConfig)}
GRID_AXES = {"algos": "algo", "datasets": "dataset", "models": "model"}


def load_grid(
    path: str | Path, overrides: dict[str, Any] | None = None, space_layers: list[SpaceLayer] | None = None
) -> list[StudyConfig]:
    """Read a study grid from TOML: top-level defaults plus ``[[grid]]`` tables of axes to cross.

    Example::

        trials = 50
        storage = "studies/bundled.journal"
        [[grid]]
        datasets = ["mnist-5k", "digits"]
        algos = ["bp", "fa", "kp", "dfa"]

    Every key must be a ``StudyConfig`` field (or, inside ``[[grid]]``, one of the plural axes
    ``algos``/``datasets``/``models``); anything else is an error naming the key. ``overrides`` (from the
    command line) win over the file. ``[space]`` tables (top level and inside any ``[[grid]]``) and
    ``space_layers`` (``--space`` files) set each study's search-space overrides (``hpo.space.overrides``).
    """
    path = Path(path)
    document = read_toml(path, "config file")

    grids = document.pop("grid", None)
    top_space = parse_space(document.pop("space", {}), str(path))
    defaults = _check_keys(document, STUDY_KEYS, f"{path}")
    if not isinstance(grids, list) or not grids:
        raise UsageError(f"config file {str(path)!r} needs at least one [[grid]] table")
    placed: list[tuple[StudyConfig, list[SpaceLayer]]] = []
    for i, grid in enumerate(grids):
        if not isinstance(grid, dict):
            raise UsageError(f"grid #{i + 1} in {str(path)!r} must be a [[grid]] table, got {grid!r}")
        grid = _check_keys(grid, STUDY_KEYS | set(GRID_AXES), f"{path} [[grid]] #{i + 1}")
        layers = [top_space, parse_space(grid.pop("space", {}), f"{path} [[grid]] #{i + 1}"), *(space_layers or [])]
        axes = {GRID_AXES[k]: _as_list(grid.pop(k), k, path) for k in list(grid) if k in GRID_AXES}
        for combo in itertools.product(*axes.values()):
            values = {**defaults, **grid, **dict(zip(axes, combo)), **(overrides or {})}
            placed.append((StudyConfig(**values), layers))
    configs = apply_spaces(placed)
    names = [c.name for c in configs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"config file {str(path)!r} defines study {duplicates[0]!r} more than once")
    return configs


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> dict[str, Any]:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UsageError(f"unknown key {unknown[0]!r} in {where}; allowed keys: {', '.join(sorted(allowed))}")
    return dict(table)


def _as_list(value: Any, key: str, path: Path) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise UsageError(f"{key} in {str(path)!r} must be a non-empty list, got {value!r}")
    return value

"""The types of the cross-validation core: the data of k runs, what a run reports, what a model family supplies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, NamedTuple, Protocol

import jax
import numpy as np

Array = jax.Array
FOLD_STRATEGIES = ("auto", "vmap", "sequential")
MAPPINGS = ("vmap", "sequential")  # what "auto" chooses between


class FoldData(NamedTuple):
    """Device-resident data and the index sets of k runs (the folds; see ``hpo.data.make_folds``).

    Training parts are truncated to a common length and validation parts padded with a mask, so all runs
    share one shape and can run in one program.
    """

    x: Array  # (n, ...) inputs of the whole training split
    y: Array  # (n,) int labels or (n, d) float targets
    train_idx: np.ndarray  # (k, m) host indices of each run's training part (batches are drawn on the host)
    val_idx: Array  # (k, v) indices of each run's validation part (padded)
    val_mask: Array  # (k, v) True where val_idx is real, False where padded


class EpochMetrics(NamedTuple):
    """Per-run metrics of one epoch, each of shape (k,): device arrays in a program, NumPy arrays on the host."""

    train_loss: Array | np.ndarray
    train_score: Array | np.ndarray
    val_loss: Array | np.ndarray
    val_score: Array | np.ndarray


class DivergedError(RuntimeError):
    """Training produced a non-finite loss; the message says where."""


@dataclass
class CVResult:
    """Outcome of training k runs of one configuration."""

    fold_scores: np.ndarray  # (k,) final validation score per run
    curves: dict[str, np.ndarray]  # metric name -> (epochs, k) per-epoch values
    compile_seconds: float  # time spent tracing and compiling (0 when programs were reused)
    train_seconds: float  # time spent running compiled programs
    n_params: int  # trained forward parameters of one network
    # metric name -> (epochs * evals_per_epoch, k) values at every evaluation point: the learning curves
    # (train_loss/train_score: mean over the steps since the previous point; val_*: at the point) and, with
    # diagnostics on, the family's diagnostics ("update_angle/dense_0", ...)
    points: dict[str, np.ndarray] = field(default_factory=dict)
    point_epochs: np.ndarray = field(default_factory=lambda: np.zeros(0))  # position of each point, in epochs
    state: Any = None  # the runs' final states on the host (leading axis k), when asked for (``keep_state``)
    fold_strategy: str = ""  # how the runs were mapped (vmap or sequential; what ``auto`` decided)
    shared_program: str = ""  # trained in a wider network's program (``models.sharing``): which; "" in its own
    padding_seconds: float = 0.0  # of ``train_seconds``, about how many the padded units' arithmetic took

    @property
    def score(self) -> float:
        return float(np.mean(self.fold_scores))


@dataclass
class Timing:
    """Where a training's seconds went, kept up to date while it runs (so a stopped training has them too)."""

    compile_seconds: float = 0.0  # tracing and compiling programs, or waiting for them (0 when they were reused)
    background_compile_seconds: float = 0.0  # compiling its programs in a background thread, while others trained
    train_seconds: float = 0.0  # running the compiled epochs, including the per-epoch transfer of metrics
    padding_seconds: float = 0.0  # of train_seconds, about how many a wider program's padding took (models.sharing)
    shared_program: str = ""  # the wider network's program it trained in (models.sharing); "" in its own


class ModelFamily(Protocol):
    """What a model family gives the core. ``spec`` is its program spec, ``hyper`` its traced scalars (a dict of
    float32 arrays, asked again before every epoch: a schedule changes them without recompiling), ``state`` one run's state (a pytree), ``key`` a raw PRNG key or None (``needs_key``).
    Functions called with ``spec`` run traced inside compiled programs; ``init`` and ``prepare`` on the host."""

    name: str  # tells the families' programs apart in the program cache
    has_diagnostics: bool  # ``diagnose`` computes something

    def program_spec(self, config: Any, sample_x: Any, out_features: int) -> Hashable: ...
    def hyperparameters(self, config: Any, epoch: int = 0) -> dict[str, np.ndarray]: ...
    def epochs(self, config: Any) -> int: ...
    def batch_size(self, config: Any) -> int: ...
    def prepare(self, config: Any, data: FoldData) -> FoldData: ...
    def init(self, config: Any, spec: Hashable, sample_x: Any, rng: np.random.Generator) -> Any: ...
    def needs_key(self, spec: Hashable) -> bool: ...
    def count_params(self, spec: Hashable, state: Any) -> int: ...
    def train_step(self, spec: Hashable, hyper: dict, state: Any, key: Any, x: Array, y: Array, idx: Array): ...
    def evaluate(self, spec: Hashable, hyper: dict, state: Any, key: Any, x: Array, y: Array, idx: Array, mask: Array): ...
    def diagnose(self, spec: Hashable, hyper: dict, state: Any, before: Any, key: Any, x: Array, y: Array, idx: Array) -> dict: ...
    def saved_state(self, state: Any) -> Any: ...  # ``state`` with only what ``evaluate`` reads (``models.saved``)
    def strategy_class(self, spec: Hashable) -> Hashable: ...  # programs that share an ``auto`` fold decision
    # how ``spec``'s networks train exactly in ``host``'s program, their state zero-padded (``models.sharing``), in
    # a few words; None where they cannot
    def hosting(self, host: Hashable, spec: Hashable) -> str | None: ...
    # the diagnostic points of ``spec``'s networks among those of a run in ``host``'s program (where ``hosting``)
    def hosted_points(self, host: Hashable, spec: Hashable, points: dict) -> dict: ...


class Split(Protocol):
    """A fixed train/test split (``hpo.data.Dataset`` is one): what ``fit_and_score`` trains on and scores."""

    @property
    def x_train(self) -> np.ndarray: ...
    @property
    def y_train(self) -> np.ndarray: ...
    @property
    def x_test(self) -> np.ndarray: ...
    @property
    def y_test(self) -> np.ndarray: ...
    @property
    def out_features(self) -> int: ...


class RunState(NamedTuple):
    """One run's state in the compiled epoch: the family's state and the run's PRNG key (None if unused)."""

    model: Any
    key: Any


@dataclass(frozen=True)
class Plan:
    """How the epoch program is laid out; with the family's spec and the arrays' shapes, it keys the programs."""

    fold_strategy: str  # "vmap" (one batched program over runs), "sequential" (lax.map over runs) or "auto"
    evals_per_epoch: int = 1  # evaluation points per epoch (learning curves, diagnostics)
    diagnostics: bool = False  # the family's diagnostics at every evaluation point

    def __post_init__(self) -> None:
        if self.fold_strategy not in FOLD_STRATEGIES:
            raise ValueError(f"fold_strategy must be one of {', '.join(FOLD_STRATEGIES)}, got {self.fold_strategy!r}")
        if self.evals_per_epoch < 1:
            raise ValueError(f"evals_per_epoch must be >= 1, got {self.evals_per_epoch}")


class EpochProgram(NamedTuple):
    """What an epoch program is compiled for, and the arguments of its first call: the family, its network spec,
    the plan, the host state of every run, their raw PRNG keys (or None), the first epoch's mini-batches, the data
    (prepared by the family, one run per member and fold) and the traced hyperparameters of every run."""

    family: ModelFamily
    spec: Hashable
    plan: Plan
    state: Any
    key: Any
    batches: np.ndarray
    data: FoldData
    hyper: dict


EpochCallback = Callable[[int, EpochMetrics], None]


@dataclass
class Member:
    """One configuration of a group trained together in one program (e.g. one trial of a trial batch)."""

    config: Any  # a model family's configuration; every member of a group has the same ``group_key``
    run_seeds: list[np.random.SeedSequence]  # one per run of the data: initialisation and random key
    order_rngs: list[np.random.Generator]  # one per run (the same generator may serve several): batch orders
    on_epoch: EpochCallback | None = None  # after every epoch with this member's metrics; raising stops it
    timing: Timing | None = None  # this member's share of the group's compile and training seconds
    on_compiled: Callable[[float], None] | None = None  # told its share of the compile seconds, before training

"""The cross-validation core: k independent runs of one configuration, compiled, for every model family.

A *model family* (networks of rule layers, ``models.rule_training``; segregated dendrites, ``models.sd``)
supplies only what is its own: how a run's state is initialised, one training step, an evaluation and, if it
has them, learning diagnostics. Everything else lives here, once: seeds and per-run initialisation, batch
orders, one bounded cache of compiled programs, the epoch loop, evaluation points within an epoch, the
divergence check, learning curves and ``CVResult``.

One epoch of every run is one compiled XLA program: ``jax.lax.scan`` over mini-batches gathered on the device
from data that stays resident there; runs (the folds) are one ``jax.vmap``-ed program or run one after another
with ``jax.lax.map`` inside the same program (``fold_strategy``; ``auto``: whichever trains a whole epoch
faster on this machine, measured once per kind of program, ``decide_fold_strategy``). Scalars a family
declares as traced (learning rate, momentum, decay, ...) are program inputs, so a new value never recompiles;
everything that fixes shapes or control flow is the family's *program spec*, the key under which compiled
programs are shared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any, Callable, Hashable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from models.programs import ProgramCache
from models.sharing import ProgramSharing, pad_state, unpad_state

Array = jax.Array
FOLD_STRATEGIES = ("auto", "vmap", "sequential")
MAPPINGS = ("vmap", "sequential")  # what "auto" chooses between
EVALUATION_STREAM = 0x5EED  # folded into a run's key for the randomness of its evaluations


# ----------------------------------------------------------------------------------------------------------
# Configuration fields: static (fixes the compiled programs), traced (a program input) or host-only


TRACED = {"kind": "traced"}  # field metadata: an input of the compiled programs; a new value never recompiles
HOST = {"kind": "host"}  # field metadata: used on the host only (initialisation, loop length), never in a program


def chosen_among(choices_field: str) -> dict:
    """Field metadata of a categorical choice that one compiled program serves for every value of the static
    field ``choices_field`` (a tuple; empty: only the field's own value): the program gets the index."""
    return {"kind": "choice", "among": choices_field}


def field_kind(f) -> str:
    return f.metadata.get("kind", "static")


def choices_of(config: Any, f) -> tuple:
    """The values a choice field's program serves: its choices field, or the field's own value alone."""
    return tuple(getattr(config, f.metadata["among"])) or (getattr(config, f.name),)


def traced_values(config: Any) -> dict[str, np.ndarray]:
    """The traced fields of a configuration dataclass as float32 program inputs, and each choice field's index
    among its choices as an int32 input."""
    values: dict[str, np.ndarray] = {}
    for f in fields(config):
        if field_kind(f) == "traced":
            values[f.name] = np.float32(getattr(config, f.name))
        elif field_kind(f) == "choice":
            values[f.name] = np.int32(choices_of(config, f).index(getattr(config, f.name)))
    return values


class Static:
    """The static fields of a configuration dataclass: what fixes its compiled programs.

    Hashable and compared by value, so equal static parts share compiled programs (the cache key); reading a traced,
    host-only or choice field through it is an error, so a value that must not be baked into a program never is
    (a choice field's choices are static, its value is an input: ``chosen_among``).
    """

    __slots__ = ("_type", "_values")

    def __init__(self, config: Any):
        object.__setattr__(self, "_type", type(config))
        values = {f.name: getattr(config, f.name) for f in fields(config) if field_kind(f) == "static"}
        for f in fields(config):
            if field_kind(f) == "choice":  # the program serves the choices; the value itself is an input
                values[f.metadata["among"]] = choices_of(config, f)
        object.__setattr__(self, "_values", tuple(values.items()))

    def __getattr__(self, name: str) -> Any:
        for key, value in self._values:
            if key == name:
                return value
        raise AttributeError(f"{name!r} is not a static field of {self._type.__name__}: programs cannot read it")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Static is read-only")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Static) and (self._type, self._values) == (other._type, other._values)

    def __hash__(self) -> int:
        return hash((self._type, self._values))

    def differences(self, other: Static) -> set[str]:
        """Names of the static fields whose values differ between two static parts of one configuration type."""
        if self._type is not other._type:
            raise TypeError(f"cannot compare the static parts of {self._type.__name__} and {other._type.__name__}")
        return {key for (key, mine), (_, theirs) in zip(self._values, other._values, strict=True) if mine != theirs}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values)
        return f"Static[{self._type.__name__}]({inner})"


# ----------------------------------------------------------------------------------------------------------
# Data, results and the model-family protocol


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
    """Per-run metrics of one epoch, each of shape (k,)."""

    train_loss: Array
    train_score: Array
    val_loss: Array
    val_score: Array


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
    float32 arrays), ``state`` one run's state (a pytree), ``key`` a raw PRNG key or None (``needs_key``).
    Functions called with ``spec`` run traced inside compiled programs; ``init`` and ``prepare`` on the host."""

    name: str  # tells the families' programs apart in the program cache
    has_diagnostics: bool  # ``diagnose`` computes something

    def program_spec(self, config: Any, sample_x: Any, out_features: int) -> Hashable: ...
    def hyperparameters(self, config: Any) -> dict[str, np.ndarray]: ...
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


# ----------------------------------------------------------------------------------------------------------
# The compiled programs: pure functions at module level; static arguments are bound with functools.partial


def map_runs(fold_strategy: str, f: Callable) -> Callable:
    """``f`` over the leading (run) axis of its arguments: ``jax.vmap``, or ``jax.lax.map`` (one after another)."""
    if fold_strategy == "vmap":
        return jax.vmap(f)
    if fold_strategy == "sequential":
        return lambda *args: jax.lax.map(lambda a: f(*a), args)
    raise ValueError(f"map_runs needs vmap or sequential (auto is resolved first), got {fold_strategy!r}")


def segment_layout(n_batches: int, n_segments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut an epoch's ``n_batches`` batches, in order, into ``n_segments`` segments of near-equal length.

    Returns ``rows`` (segments, length): batch numbers, padded with batch 0 where a segment is shorter;
    ``valid`` (segments, length): False at padding; ``last`` (segments,): the position of each segment's last batch.
    """
    if not 1 <= n_segments <= n_batches:
        raise ValueError(f"evals_per_epoch must be between 1 and the {n_batches} mini-batches per epoch, got {n_segments}")
    sizes = np.array([n_batches // n_segments + (i < n_batches % n_segments) for i in range(n_segments)])
    positions = np.arange(sizes.max())
    valid = positions[None, :] < sizes[:, None]
    rows = np.where(valid, np.concatenate([[0], np.cumsum(sizes)[:-1]])[:, None] + positions, 0).astype(np.int32)
    return rows, valid, (sizes - 1).astype(np.int32)


def _step(family, spec, hyper, x, y, state: RunState, idx) -> tuple[RunState, tuple[Array, Array]]:
    key, step_key = (None, None) if state.key is None else jax.random.split(state.key)
    model, metrics = family.train_step(spec, hyper, state.model, step_key, x, y, idx)
    return RunState(model, key), metrics


def _evaluate(family, spec, hyper, x, y, val_idx, val_mask, state: RunState) -> tuple[Array, Array]:
    key = None if state.key is None else jax.random.fold_in(state.key, EVALUATION_STREAM)
    return family.evaluate(spec, hyper, state.model, key, x, y, val_idx, val_mask)


def run_epoch(family: ModelFamily, spec: Hashable, plan: Plan, state: RunState, batches, x, y, val_idx, val_mask, hyper):
    """One epoch of every run: ``(state (k, ...), batches (k, b, bs), ..., hyper (k,)) -> (state, metrics, points)``.

    ``points`` maps a metric name to its (k, evals_per_epoch) values; it is empty for the plain program (one
    evaluation at the end of the epoch, no diagnostics), in which nothing else is traced.
    """
    plain = plan.evals_per_epoch == 1 and not plan.diagnostics
    epoch = _plain_epoch if plain else _monitored_epoch

    def one(run_state, run_batches, run_val_idx, run_val_mask, run_hyper):
        step = partial(_step, family, spec, run_hyper, x, y)
        evaluate = partial(_evaluate, family, spec, run_hyper, x, y, run_val_idx, run_val_mask)
        return epoch(family, spec, plan, run_hyper, x, y, step, evaluate, run_state, run_batches)

    return map_runs(plan.fold_strategy, one)(state, batches, val_idx, val_mask, hyper)


def _plain_epoch(family, spec, plan, hyper, x, y, step, evaluate, state, batches):
    state, (losses, scores) = jax.lax.scan(step, state, batches)
    return state, EpochMetrics(losses.mean(), scores.mean(), *evaluate(state)), {}


def _monitored_epoch(family, spec, plan, hyper, x, y, step, evaluate, state, batches):
    """The epoch cut into ``evals_per_epoch`` segments (an outer scan), evaluated after each.

    Segments hold the epoch's batches in order, as equal as possible; shorter ones are padded with steps that
    ``lax.cond`` skips (the predicate is the same for every run, so it stays a branch under vmap). Diagnostics
    use the segment's last training batch and the state after it.
    """
    rows, valid, last = segment_layout(batches.shape[0], plan.evals_per_epoch)
    padded = not valid.all()

    def segment_step(state, xs):
        idx, real = xs
        if not padded:
            return step(state, idx)
        skip = jnp.zeros((), jnp.float32)
        return jax.lax.cond(real, step, lambda s, _: (s, (skip, skip)), state, idx)

    def segment(state, xs):
        seg, real, end = xs
        before = state.model
        state, (losses, scores) = jax.lax.scan(segment_step, state, (seg, real))
        weight = real / real.sum()
        point = {"train_loss": (losses * weight).sum(), "train_score": (scores * weight).sum()}
        point["val_loss"], point["val_score"] = evaluate(state)
        if plan.diagnostics:
            point.update(family.diagnose(spec, hyper, state.model, before, state.key, x, y, seg[end]))
        return state, point

    state, points = jax.lax.scan(segment, state, (batches[rows], valid, last))
    share = valid.sum(1) / valid.sum()  # each segment's share of the epoch's steps
    train = [(points[name] * share).sum() for name in ("train_loss", "train_score")]
    return state, EpochMetrics(*train, points["val_loss"][-1], points["val_score"][-1]), points


class Compiled(NamedTuple):
    epoch: Any  # (RunState, batches, x, y, val_idx, val_mask, hyper) -> (RunState, EpochMetrics, points)


PROGRAMS = ProgramCache()  # the one per-process cache of compiled programs, shared by every family
SHARING = ProgramSharing()  # which programs narrower networks may train in, and what that costs (models.sharing)


def _shapes(tree: Any) -> tuple:
    """A hashable description of a pytree's structure, shapes and dtypes."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((tuple(np.shape(a)), str(jnp.result_type(a))) for a in leaves)


AUTO_REPEATS = 3  # timed epochs of each mapping, interleaved; the fastest counts
AUTO_BUDGET_SECONDS = 20.0  # no further round of timed epochs once measuring has taken this long (one at least)
AUTO_WORK_RATIO = 4  # programs whose work per step (parameters x batch size) is within this factor share a decision
# A decision is measured once its kind has trained this many compilations' worth of seconds on this machine (the
# store's count, ``ProgramCache.training``; per process without a store). It costs about one compilation and
# gains 0-25% of the kind's later training: a kind met for one program, such as the held-out retraining, or for
# a few seconds, trains with the provisional mapping and is never measured.
AUTO_PAYBACK = 10.0


def provisional_mapping() -> str:
    """The mapping of runs before (or without) a decision: the one that is never far from the faster on this
    backend. On the 2-core CPU sequential epochs were at most 15% slower than vmapped ones (MLP width 64: 50
    against 44 ms) and up to 33% faster (the 1-D CNN: 143 against 213 ms; ``results/benchmarks.md``): one run
    already keeps a small machine busy. On accelerators a batch of runs is what fills the device."""
    return "sequential" if jax.default_backend() == "cpu" else "vmap"


def time_call(strategy: str, run: Callable[[], Any]) -> float:
    """Seconds ``run()``, one whole epoch of fold strategy ``strategy``, takes until its results are ready
    (``decide_fold_strategy``'s timer; tests replace it)."""
    start = time.perf_counter()
    jax.block_until_ready(run())
    return time.perf_counter() - start


def work_bucket(family: ModelFamily, spec: Hashable, state, batches) -> int:
    """Which size class a program's work per training step falls in: ``floor(log_AUTO_WORK_RATIO(parameters x
    batch size))`` of one run. Mapping runs with vmap or one after another wins by different margins at
    different sizes (on a 2-core AVX2 CPU vmap folds are 9% faster for a 784-64-64-10 MLP, sequential ones 10%
    faster at width 256: ``results/benchmarks.md``), so one decision per network kind would be wrong somewhere; one per program shape
    would cost a compilation for every new shape of a search space."""
    n_params = family.count_params(spec, jax.tree_util.tree_map(lambda a: a[0], state))
    work = max(1, n_params) * max(1, int(batches.shape[2]))
    return int(np.floor(np.log(work) / np.log(AUTO_WORK_RATIO)))


def decide_fold_strategy(family: ModelFamily, spec: Hashable, plan: Plan, state, key, batches, data: FoldData,
                         hyper) -> tuple[Plan, float, Any]:
    """``plan`` with a concrete fold strategy, the seconds spent deciding it (0 unless measured now), and the
    chosen mapping's compiled epoch program when it was compiled to decide (else None).

    ``auto`` is decided by measurement, once per machine and *kind of program*: the first program of a kind met
    once deciding pays (below) is compiled with each mapping, exactly as it will train, and whole epochs of both
    are timed in turn from the same initial state (up to ``AUTO_REPEATS`` rounds, fewer once
    ``AUTO_BUDGET_SECONDS`` have passed); the
    mapping with the faster epoch wins, and its program is the one the trial then trains with, so deciding
    costs one extra compilation and a few epochs. Timing the real epoch, not shorter programs, matters: short
    programs mispredicted the epoch by 10-20% and chose the slower mapping for 2-D CNNs (``results/
    benchmarks.md``). A kind is the family's ``strategy_class`` of the spec (dense or convolutional networks,
    ...) with the data's rank (1-D or 2-D inputs), the number of runs, the evaluation layout and the work per
    step (``work_bucket``). The decision is kept beside the program store (``ProgramCache.decide``: per backend,
    device, CPU and source of ``models/``) and reused by every later process; without a store, by this process.
    It is made before the programs' key is formed, so stored programs are keyed by the concrete strategy.

    A decision is measured only once it pays: when programs of the kind have trained for ``AUTO_PAYBACK``
    compilations' worth of seconds on this machine (counted beside the stored decisions). Until then (and for a
    kind met once, such as the held-out retraining of a study) the runs are mapped the ``provisional_mapping``
    way, and no decision is stored: a cold study of small networks would otherwise spend more on deciding than
    the decision gains.
    """
    if plan.fold_strategy != "auto":
        return plan, 0.0, None
    device_data = (data.x, data.y, data.val_idx, data.val_mask)
    bucket = work_bucket(family, spec, state, batches)
    decision_key = fold_kind(family, spec, plan, bucket, batches, data)
    known, due = _decision_status(family, decision_key)
    if known is None and not due:
        return replace(plan, fold_strategy=provisional_mapping()), 0.0, None
    programs = {}

    def measure() -> dict:
        start = time.perf_counter()
        for strategy in MAPPINGS:
            compiling = time.perf_counter()
            programs[strategy] = _compile_epoch(family, spec, replace(plan, fold_strategy=strategy), state, key,
                                                batches, device_data, hyper)
            SHARING.record_compile(family.name, time.perf_counter() - compiling)
        timed = {strategy: [] for strategy in MAPPINGS}
        for rounds in range(1, AUTO_REPEATS + 1):
            if rounds > 1 and time.perf_counter() - start >= AUTO_BUDGET_SECONDS:
                break
            for strategy in MAPPINGS:  # the two back to back: a load that comes and goes slows both alike
                fresh = RunState(jax.device_put(state), key)  # the program donates its state: a copy per call
                run = partial(programs[strategy], fresh, batches, *device_data, hyper)
                timed[strategy].append(time_call(strategy, run))
        fastest = {strategy: min(times) for strategy, times in timed.items()}
        return {
            "strategy": min(MAPPINGS, key=fastest.get), "seconds": fastest, "rounds": len(timed[MAPPINGS[0]]),
            "epoch_steps": int(batches.shape[1]), "family": family.name, "runs": int(batches.shape[0]),
            "work_bucket": bucket, "measure_seconds": time.perf_counter() - start,
        }

    decision, measured = PROGRAMS.decide(decision_key, measure)
    chosen = decision["strategy"]
    return replace(plan, fold_strategy=chosen), decision["measure_seconds"] if measured else 0.0, programs.get(chosen)


def fold_kind(family: ModelFamily, spec: Hashable, plan: Plan, bucket: int, batches, data: FoldData) -> tuple:
    """The kind of program an ``auto`` fold decision holds for (``decide_fold_strategy``; ``bucket``: the
    program's ``work_bucket``): the decision's key."""
    return ("fold_strategy", family.name, family.strategy_class(spec), int(np.ndim(data.x)), int(batches.shape[0]),
            plan.evals_per_epoch, plan.diagnostics, ("work", bucket))


def _decision_status(family: ModelFamily, decision_key: tuple) -> tuple[dict | None, bool]:
    """The kind's decision if made already (here or stored), and whether, not made, it is due now: whether the
    kind has trained long enough on this machine that measuring its mapping is worth a compilation (this
    process's compile cost, or the one recorded with the count when this process compiled nothing)."""
    known = PROGRAMS.known_decision(decision_key)
    if known is not None:
        return known, False
    if AUTO_PAYBACK == 0:
        return None, True  # measured at once (what the objective benchmark and tests of the measurement ask for)
    trained, compile_cost = PROGRAMS.training(decision_key)  # on this machine, where the store keeps the count
    compile_cost = SHARING.compile_cost(family.name) or compile_cost
    return None, compile_cost is not None and trained >= AUTO_PAYBACK * compile_cost


def _auto_kind(family: ModelFamily, spec: Hashable, plan: Plan, state, batches, data: FoldData) -> tuple:
    """``fold_kind`` of these arguments' program under an ``auto`` plan."""
    plan = replace(plan, fold_strategy="auto")
    return fold_kind(family, spec, plan, work_bucket(family, spec, state, batches), batches, data)


def _program_key(family: ModelFamily, spec: Hashable, plan: Plan, state, key, batches, data: FoldData, hyper) -> tuple:
    """The program store's key of these arguments' epoch program (``plan``'s fold strategy concrete)."""
    device_data = (data.x, data.y, data.val_idx, data.val_mask)
    return family.name, spec, plan, _shapes((state, key, batches, device_data, hyper))


def program_exists(family: ModelFamily, spec: Hashable, plan: Plan, state, key, batches, data: FoldData, hyper) -> bool:
    """Whether these arguments' program is compiled already (in this process or in the store on disk) or being
    compiled by another thread (``hpo.objective.Objective.compiling_ahead``), found without compiling or measuring
    anything: under an ``auto`` plan not yet decided for its kind, it is not."""
    if plan.fold_strategy == "auto":
        decision, due = _decision_status(family, _auto_kind(family, spec, plan, state, batches, data))
        if due:
            return False  # measuring it compiles both mappings anyway
        plan = replace(plan, fold_strategy=provisional_mapping() if decision is None else decision["strategy"])
    return _program_key(family, spec, plan, state, key, batches, data, hyper) in PROGRAMS


def _compile_epoch(family, spec, plan: Plan, state, key, batches, device_data, hyper):
    epoch_fn = partial(run_epoch, family, spec, plan)
    return jax.jit(epoch_fn, donate_argnums=0).lower(RunState(state, key), batches, *device_data, hyper).compile()


def compiled_programs(family: ModelFamily, spec: Hashable, plan: Plan, state, key, batches, data: FoldData, hyper):
    """Ahead-of-time compiled programs for these arguments' shapes, the seconds spent compiling them (with
    those spent deciding an ``auto`` fold strategy, ``decide_fold_strategy``) and the plan they follow (its fold
    strategy concrete).

    Programs are kept in the bounded per-process cache (``models.programs``), so later trials with the same spec
    and shapes compile nothing; JAX's persistent compilation cache (configured by ``hpo``) does the same across
    processes.
    """
    plan, deciding, decided = decide_fold_strategy(family, spec, plan, state, key, batches, data, hyper)
    device_data = (data.x, data.y, data.val_idx, data.val_mask)
    cache_key = _program_key(family, spec, plan, state, key, batches, data, hyper)

    def build() -> Compiled:
        if decided is not None:  # compiled (and timed) to decide the fold strategy: not compiled again
            return Compiled(decided)
        start = time.perf_counter()
        compiled = Compiled(_compile_epoch(family, spec, plan, state, key, batches, device_data, hyper))
        SHARING.record_compile(family.name, time.perf_counter() - start)  # what not compiling would save
        return compiled

    programs, seconds = PROGRAMS.get(cache_key, build)
    return programs, seconds + deciding, plan


# ----------------------------------------------------------------------------------------------------------
# The host loop


def stack(trees: list) -> Any:
    """Stack equal-structure pytrees of host arrays along a new leading axis."""
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *trees)


def batch_orders(rngs: list[np.random.Generator], train_idx: np.ndarray, batch_size: int) -> np.ndarray:
    """One epoch's mini-batches per run: a fresh permutation of each training part (run i's from ``rngs[i]``; the
    same generator may serve several runs, one after another), cut into full batches."""
    n_batches = train_idx.shape[1] // batch_size
    if n_batches == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {train_idx.shape[1]} training examples per fold")
    orders = [rng.permutation(row)[: n_batches * batch_size] for rng, row in zip(rngs, train_idx, strict=True)]
    return np.stack(orders).reshape(len(train_idx), n_batches, batch_size).astype(np.int32)


EpochCallback = Callable[[int, EpochMetrics], None]


def cross_validate(
    config: Any,
    data: FoldData,
    out_features: int,
    seed: int,
    on_epoch: EpochCallback | None = None,
    fold_strategy: str = "sequential",
    timing: Timing | None = None,
    evals_per_epoch: int = 1,
    diagnostics: bool = False,
    keep_state: bool = False,
) -> CVResult:
    """Train one fresh network per run (fold) of ``data`` and score each run's validation part.

    ``config`` is any model family's configuration (``config.family`` says which). All randomness
    (initialisation, batch order, random keys) derives from ``seed``. ``on_epoch(epoch, metrics)`` is called
    after every epoch with per-run metrics (numpy arrays); it may raise to stop training early (the study's
    pruner does this). A non-finite training or validation loss raises ``DivergedError`` naming epoch and run.
    ``timing`` is kept up to date with the compile and training seconds as training goes (so they are known even
    when training is stopped early). ``evals_per_epoch`` evaluation points per epoch give the learning curves in
    ``CVResult.points``; ``diagnostics`` adds the family's diagnostics to them (off, the compiled program is
    exactly the one without them). Neither changes the training itself. ``keep_state`` returns the runs'
    final states (``CVResult.state``).
    """
    n_runs = data.train_idx.shape[0]
    *run_seeds, order_seed = np.random.SeedSequence(seed).spawn(n_runs + 1)
    order_rng = np.random.default_rng(order_seed)  # one generator draws every fold's batch order in turn
    return train_runs(
        config, data, out_features, run_seeds, [order_rng] * n_runs, on_epoch, fold_strategy, timing,
        evals_per_epoch, diagnostics, keep_state,
    )


def train_runs(
    config: Any,
    data: FoldData,
    out_features: int,
    run_seeds: list[np.random.SeedSequence],
    order_rngs: list[np.random.Generator],
    on_epoch: EpochCallback | None = None,
    fold_strategy: str = "sequential",
    timing: Timing | None = None,
    evals_per_epoch: int = 1,
    diagnostics: bool = False,
    keep_state: bool = False,
) -> CVResult:
    """``cross_validate`` with the randomness of every run given: run i is initialised from ``run_seeds[i]``
    (and its random key from a child of it) and its batches are drawn from ``order_rngs[i]``."""
    member = Member(config, run_seeds, order_rngs, on_epoch, timing)
    (outcome,) = train_group([member], data, out_features, fold_strategy, evals_per_epoch, diagnostics, keep_state)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@dataclass
class Member:
    """One configuration of a group trained together in one program (e.g. one trial of a trial batch)."""

    config: Any  # a model family's configuration; every member of a group has the same ``group_key``
    run_seeds: list[np.random.SeedSequence]  # one per run of the data: initialisation and random key
    order_rngs: list[np.random.Generator]  # one per run (the same generator may serve several): batch orders
    on_epoch: EpochCallback | None = None  # after every epoch with this member's metrics; raising stops it
    timing: Timing | None = None  # this member's share of the group's compile and training seconds
    on_compiled: Callable[[float], None] | None = None  # told its share of the compile seconds, before training


def group_key(config: Any, data: FoldData, out_features: int) -> Hashable:
    """Configurations with equal keys compile to the same programs and can be trained as one group."""
    family: ModelFamily = config.family
    spec = family.program_spec(config, data.x[:1], out_features)
    return family.name, spec, family.batch_size(config), family.epochs(config)


def could_host(host: Hashable, key: Hashable, family: ModelFamily) -> bool:
    """Whether the networks of group ``key`` (``group_key``) could train in the program of group ``host``'s, a
    larger network's (``models.sharing``; whether they will is decided as they train, ``ProgramSharing.choose``)."""
    return (SHARING.enabled and host != key and host[0] == key[0] and host[2:] == key[2:]
            and family.hosting(host[1], key[1]) is not None)


class _Group(NamedTuple):
    """What a group's programs are compiled for: its family, plan and spec, and its first epoch's arguments."""

    family: ModelFamily
    plan: Plan
    spec: Hashable
    data: FoldData  # prepared by the family, one run per member and fold
    state: Any  # host state of every run
    key: Any  # raw PRNG key of every run, or None
    hyper: dict  # traced hyperparameters of every run
    batches: np.ndarray  # the first epoch's mini-batches of every run


def _setup_group(members: list[Member], data: FoldData, out_features: int, fold_strategy: str, evals_per_epoch: int,
                 diagnostics: bool) -> _Group:
    first = members[0].config
    family: ModelFamily = first.family
    key_of_group = group_key(first, data, out_features)
    if any(group_key(m.config, data, out_features) != key_of_group for m in members[1:]):
        raise ValueError("members of a group must share their programs (models.train.group_key)")
    plan = Plan(fold_strategy, evals_per_epoch, diagnostics and family.has_diagnostics)
    data = family.prepare(first, data)
    n_members, k = len(members), data.train_idx.shape[0]
    if n_members > 1:  # every member runs on the same folds, in its own slots
        data = data._replace(
            train_idx=np.tile(data.train_idx, (n_members, 1)), val_idx=jnp.tile(data.val_idx, (n_members, 1)),
            val_mask=jnp.tile(data.val_mask, (n_members, 1)),
        )
    sample_x = data.x[:1]
    spec = family.program_spec(first, sample_x, out_features)
    run_seeds = [s for m in members for s in m.run_seeds]
    state = stack([family.init(m.config, spec, sample_x, np.random.default_rng(s)) for m in members for s in m.run_seeds])
    # per-run keys from a child of each run's seed (the initialisation, drawn from the seed itself, is unchanged)
    key = np.stack([s.spawn(1)[0].generate_state(2) for s in run_seeds]) if family.needs_key(spec) else None
    hyper = stack([family.hyperparameters(m.config) for m in members for _ in range(k)])  # one value per run
    batches = batch_orders([rng for m in members for rng in m.order_rngs], np.asarray(data.train_idx),
                           family.batch_size(first))
    return _Group(family, plan, spec, data, state, key, hyper, batches)


def precompile(
    config: Any, data: FoldData, out_features: int, fold_strategy: str = "sequential", evals_per_epoch: int = 1,
    diagnostics: bool = False, members: int = 1,
) -> float:
    """Compile (or load from disk) the programs a group of ``members`` configurations like ``config`` trains with,
    without training; the seconds it took (0 when they were in memory already).

    An ``auto`` fold strategy whose decision is due (``decide_fold_strategy``) is left to the trial that meets
    it: measured here, beside a training trial (the compile-ahead thread), its timings would be unfair; so
    nothing is compiled then (0 seconds). For the same reason nothing starts compiling while this process
    measures a decision."""
    PROGRAMS.wait_for_measurements()
    k = data.train_idx.shape[0]
    member = Member(config, np.random.SeedSequence(0).spawn(k), [np.random.default_rng(0)] * k)
    group = _setup_group([member] * members, data, out_features, fold_strategy, evals_per_epoch, diagnostics)
    if group.plan.fold_strategy == "auto":
        _, due = _decision_status(group.family, _auto_kind(group.family, group.spec, group.plan, group.state,
                                                            group.batches, group.data))
        if due:
            return 0.0
    _, seconds, _ = compiled_programs(
        group.family, group.spec, group.plan, group.state, group.key, group.batches, group.data, group.hyper
    )
    return seconds


def group_mapping(members: list[Member], data: FoldData, out_features: int, fold_strategy: str,
                  evals_per_epoch: int, diagnostics: bool) -> str:
    """How the runs of one program for all ``members`` would be mapped (``train_group``): the fold strategy, or
    for ``auto`` the decision for the group's kind (its number of runs included, ``fold_kind``) or, undecided,
    the provisional mapping. Found without compiling, measuring or drawing from the members' generators."""
    if fold_strategy != "auto":
        return fold_strategy
    first = members[0].config
    family: ModelFamily = first.family
    plan = Plan("auto", evals_per_epoch, diagnostics and family.has_diagnostics)
    data = family.prepare(first, data)
    spec = family.program_spec(first, data.x[:1], out_features)
    one_run = stack([family.init(first, spec, data.x[:1], np.random.default_rng(0))])
    runs = len(members) * data.train_idx.shape[0]
    layout = np.empty((runs, 0, family.batch_size(first)), np.int32)  # all a kind reads of the batches: their shape
    decision = PROGRAMS.known_decision(_auto_kind(family, spec, plan, one_run, layout, data))
    return provisional_mapping() if decision is None else decision["strategy"]


def train_group(
    members: list[Member],
    data: FoldData,
    out_features: int,
    fold_strategy: str = "sequential",
    evals_per_epoch: int = 1,
    diagnostics: bool = False,
    keep_state: bool = False,
) -> list[CVResult | Exception]:
    """Train every member's runs of ``data`` together: one program over members x runs, one epoch loop. (A study
    trains a group of trials so only where its runs are vmapped, ``group_mapping``: mapped one after another, the
    program would do the lone trials' work, compiled anew for each group size; ``hpo.objective``.)

    Each member gets its own metrics after every epoch (``Member.on_epoch``) and is stopped on its own: when its
    callback raises, or its loss is not finite (``DivergedError``), that exception becomes its outcome and its
    runs are no longer looked at (they keep their slots in the program until the group ends; the loop ends when
    no member is left). The outcome of a member that trained every epoch is its ``CVResult``. The group's compile
    seconds are shared equally by its members, each epoch's seconds equally by the members still training.
    """
    group = _setup_group(members, data, out_features, fold_strategy, evals_per_epoch, diagnostics)
    family, plan, spec, data, state, key, hyper, batches = group
    n_members, k = len(members), len(members[0].run_seeds)
    order_rngs = [rng for m in members for rng in m.order_rngs]
    train_idx = np.asarray(data.train_idx)
    batch_size, epochs = family.batch_size(members[0].config), family.epochs(members[0].config)
    _, valid, _ = segment_layout(batches.shape[1], evals_per_epoch)
    point_epochs = (np.arange(epochs)[:, None] + valid.sum(1).cumsum() / valid.sum()).ravel()
    timings = [Timing() if m.timing is None else m.timing for m in members]
    n_params = family.count_params(spec, jax.tree_util.tree_map(lambda a: a[0], state))

    # in a wider network's program when that is cheaper than compiling this one's (models.sharing)
    native_state, program_spec, placement = state, spec, None
    context = (family.name, plan, _shapes((key, batches, (data.x, data.y, data.val_idx, data.val_mask), hyper)))
    if not program_exists(family, spec, plan, state, key, batches, data, hyper):
        placement = SHARING.choose(family, context, spec, n_params, epochs)
    if placement is not None:
        program_spec, state = placement.host, pad_state(state, placement.template)
        for timing in timings:
            timing.shared_program = placement.description
    compiled, compile_seconds, plan = compiled_programs(family, program_spec, plan, state, key, batches, data, hyper)
    for member, timing in zip(members, timings):
        timing.compile_seconds += compile_seconds / n_members
        if member.on_compiled is not None:
            member.on_compiled(timing.compile_seconds)
    padding_share = 0.0 if placement is None else placement.padding_share

    outcomes: list[CVResult | Exception | None] = [None] * n_members
    slots = [slice(i * k, (i + 1) * k) for i in range(n_members)]
    run_state = RunState(jax.device_put(state), key)
    history: list[EpochMetrics] = []
    point_history: list[dict[str, np.ndarray]] = []
    epoch_seconds: list[float] = []
    for epoch in range(epochs):
        start = time.perf_counter()
        if epoch:
            batches = batch_orders(order_rngs, train_idx, batch_size)
        run_state, metrics, points = compiled.epoch(run_state, batches, data.x, data.y, data.val_idx, data.val_mask, hyper)
        metrics, points = jax.device_get((metrics, points))  # one transfer: each is a wait on a busy machine
        metrics = EpochMetrics(*(np.asarray(m) for m in metrics))
        history.append(metrics)
        point_history.append(points)
        training = [i for i in range(n_members) if outcomes[i] is None]
        epoch_seconds.append(time.perf_counter() - start)
        for i in training:
            timings[i].train_seconds += epoch_seconds[-1] / len(training)
            timings[i].padding_seconds += epoch_seconds[-1] * padding_share / len(training)
        for i in training:
            mine = EpochMetrics(*(m[slots[i]] for m in metrics))
            try:
                _check_finite(mine, epoch)
                if members[i].on_epoch is not None:
                    members[i].on_epoch(epoch, mine)
            except Exception as error:  # noqa: BLE001 -- the member's outcome; the group goes on
                outcomes[i] = error
        if all(outcome is not None for outcome in outcomes):
            break

    if fold_strategy == "auto":  # what a measured decision for this kind would be worth (AUTO_PAYBACK)
        kind = _auto_kind(family, program_spec, plan, state, batches, data)
        if PROGRAMS.known_decision(kind) is None:
            PROGRAMS.add_training(kind, sum(epoch_seconds), SHARING.compile_cost(family.name))
    program_params = n_params if placement is None else family.count_params(
        program_spec, jax.tree_util.tree_map(lambda a: a[0], state))
    SHARING.record_training(context, program_spec, state, program_params, epoch_seconds)
    if placement is not None:
        SHARING.charge(context, spec, sum(epoch_seconds) * padding_share)
    final = jax.device_get(run_state.model) if keep_state else None
    if final is not None and placement is not None:
        final = unpad_state(final, native_state)
    point_names = point_history[0] if placement is None else family.hosted_points(program_spec, spec, point_history[0])
    for i in range(n_members):
        if outcomes[i] is not None:
            continue
        curves = {name: np.stack([getattr(m, name)[slots[i]] for m in history]) for name in EpochMetrics._fields}
        if point_history[0]:  # (runs, evals) per epoch -> (epochs * evals, k)
            points = {name: np.concatenate([p[name][slots[i]] for p in point_history], axis=1).T for name in point_names}
        else:  # one plain evaluation per epoch: the points are the epoch metrics
            points = dict(curves)
        mine = None if final is None else jax.tree_util.tree_map(lambda a, s=slots[i]: a[s], final)
        timing = timings[i]
        outcomes[i] = CVResult(
            curves["val_score"][-1], curves, timing.compile_seconds, timing.train_seconds, n_params, points,
            point_epochs, mine, plan.fold_strategy, timing.shared_program, timing.padding_seconds,
        )
    return outcomes


def _check_finite(metrics: EpochMetrics, epoch: int) -> None:
    for name, values in (("training", metrics.train_loss), ("validation", metrics.val_loss)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise DivergedError(f"non-finite {name} loss ({values[bad[0]]}) in epoch {epoch + 1}, fold {bad[0] + 1}")


def split_as_runs(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, runs: int) -> FoldData:
    """A fixed train/test split as ``runs`` runs that each train on all of ``x_train`` and are scored on all of
    ``x_test`` (``fit_and_score``; ``models.saved`` scores a saved network through the same layout)."""
    n_train, n_test = len(x_train), len(x_test)
    return FoldData(
        x=jnp.asarray(np.concatenate([x_train, x_test])),
        y=jnp.asarray(np.concatenate([y_train, y_test])),
        train_idx=np.tile(np.arange(n_train, dtype=np.int32), (runs, 1)),
        val_idx=jnp.tile(jnp.arange(n_train, n_train + n_test, dtype=jnp.int32), (runs, 1)),
        val_mask=jnp.ones((runs, n_test), bool),
    )


def fit_and_score(
    config: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    out_features: int,
    seeds: int | list[int],
    fold_strategy: str = "vmap",
    keep_state: bool = False,
    evals_per_epoch: int = 1,
    diagnostics: bool = False,
) -> CVResult:
    """Train on the whole training split and score the test split, once per seed, all seeds in one program.

    The cross-validation core with one run per seed whose validation part is the test split: ``fold_scores[i]``
    is seed i's test score. Each run's randomness comes from its own seed alone (initialisation from the first
    child of ``SeedSequence(seed)``, batch order from the second), so a seed's score does not depend on the
    other seeds it is trained with. ``evals_per_epoch`` and ``diagnostics`` are those of ``cross_validate``
    (the validation curves are then test-split curves; the diagnostics use training batches as always).
    """
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    data = split_as_runs(x_train, y_train, x_test, y_test, len(seeds))
    children = [np.random.SeedSequence(seed).spawn(2) for seed in seeds]
    run_seeds = [init for init, _ in children]
    order_rngs = [np.random.default_rng(order) for _, order in children]
    return train_runs(
        config, data, out_features, run_seeds, order_rngs, fold_strategy=fold_strategy, keep_state=keep_state,
        evals_per_epoch=evals_per_epoch, diagnostics=diagnostics,
    )

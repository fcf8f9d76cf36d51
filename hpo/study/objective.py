"""The Optuna objective: sample a configuration, cross-validate it with the compiled trainer, record the result."""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import jax.numpy as jnp
import numpy as np
import optuna

from hpo.config import StudyConfig
from hpo.data import Dataset, Folds, make_folds
from hpo.errors import UsageError
from hpo.files import user_cache_dir
from hpo.parallel.devices import usable_cores
from hpo.record import HALVING_PRUNERS, encode_curves, final_diagnostics, write_trial
from hpo.space.algorithms import study_space, suggest
from hpo.study.population import mark_startup, startup_length
from hpo.study.pruners import trains_fold_major
from models.compile import Compiler
from models.train import (
    CVResult,
    DivergedError,
    EpochMetrics,
    FoldData,
    GroupKey,
    Member,
    Timing,
    could_host,
    group_key,
    group_mapping,
    precompile,
    train_group,
    train_member,
)


def check_evaluation_points(config: StudyConfig, dataset: Dataset, folds: Folds) -> None:
    """``--evals-per-epoch`` must not exceed the mini-batches of an epoch at the largest batch size the space proposes."""
    largest = study_space(config).largest_batch_size(config)
    fewest_batches = folds.train_idx.shape[1] // largest
    if config.evals_per_epoch > fewest_batches:
        raise UsageError(
            f"--evals-per-epoch must be at most {fewest_batches} (the mini-batches per epoch at batch size "
            f"{largest} on {dataset.name} with {config.folds} folds), got {config.evals_per_epoch}"
        )


# (trial number, epochs done, epochs, mean validation score, seconds since the trial started): progress display;
# epochs done 0 (score NaN) when the trial starts
EpochListener = Callable[[int, int, int, float, float], None]


def programs_directory(cache_dir: str | None) -> Path | None:
    """Where a study's compiled programs are stored (``models.compile.store``): ``<cache dir>/programs``, the cache
    dir being ``--cache-dir``, else ``$HPO_JAX_CACHE``, else ``jax`` in the user's cache directory; None for
    ``none`` (memory only). A store lets a rerun, or a study after ``python -m hpo.warmup``, load its programs
    instead of tracing and compiling them."""
    path = cache_dir or os.environ.get("HPO_JAX_CACHE") or str(user_cache_dir() / "jax")
    return None if path.lower() == "none" else Path(path).expanduser() / "programs"


def trial_seed(study_seed: int, trial_number: int) -> int:
    """Seed of one trial's networks and batch order, derived from the study seed."""
    return int(np.random.SeedSequence([study_seed, trial_number]).generate_state(1)[0])


class Objective:
    """Callable objective of one study; holds the dataset's folds on the device across trials.

    ``on_epoch`` (optional) hears about every epoch, e.g. ``hpo.study.progress.EpochProgress``. Constructing it checks
    the study against the dataset without starting JAX: the parent of ``--workers`` processes validates a study
    so, and JAX started there would take GPU memory from its workers (``hpo.parallel.devices``). The device arrays are
    made when a trial first needs them.
    """

    def __init__(self, config: StudyConfig, dataset: Dataset, on_epoch: EpochListener | None = None):
        self.config = config
        self.dataset = dataset
        self.on_epoch = on_epoch
        self.folds = make_folds(dataset, config.folds, config.seed)
        check_evaluation_points(config, dataset, self.folds)
        self.startup = startup_length(config)
        self.compiler = Compiler(directory=programs_directory(config.cache_dir))

    @functools.cached_property
    def data(self) -> FoldData:
        """The training split and its folds, on the device."""
        return FoldData(
            x=jnp.asarray(self.dataset.x_train),
            y=jnp.asarray(self.dataset.y_train),
            train_idx=self.folds.train_idx,
            val_idx=jnp.asarray(self.folds.val_idx),
            val_mask=jnp.asarray(self.folds.val_mask),
        )

    @functools.cached_property
    def compiling_in_background(self) -> bool:
        """Whether a batch's later programs compile while its earlier ones train (``compiles_ahead``)."""
        return compiles_ahead(self.config)

    def __call__(self, trial: optuna.Trial) -> float:
        """Run one trial: sample its configuration, cross-validate it, record what happened; its value."""
        (outcome,) = self.run_batch([trial])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def run_batch(
        self, trials: list[optuna.Trial], on_outcome: Callable[[int, float | BaseException], None] | None = None
    ) -> list[float | BaseException]:
        """Run several trials at once: sample each one's configuration, train those that share programs as one
        group (one compiled program vmapped over trials x folds, or trial by trial where runs are not vmapped:
        ``programs_of``), record each trial's results and timing.

        Returns each trial's value, or the exception it ended with (``optuna.TrialPruned`` for a pruned or
        diverged trial); ``on_outcome(i, outcome)`` hears of trial i as soon as its outcome is known (so a worker
        can tell the storage before the next group trains). Each trial reports after every epoch and is pruned
        on its own. A trial's seconds are its sampling, its own compiling and training (``Timing``: equal shares in
        a program of several trials) and an equal share of the rest of its program's, so a study's seconds add up
        however its trials were batched. Interrupts propagate.
        """
        outcomes: list[float | BaseException | None] = [None] * len(trials)
        walls = [0.0] * len(trials)
        timings = [Timing() for _ in trials]

        def settle(i: int, outcome: float | BaseException) -> None:
            outcomes[i] = outcome
            record_timing(trials[i], walls[i], timings[i])
            if on_outcome is not None:
                on_outcome(i, outcome)

        if trains_fold_major(self.config):  # each trial's folds in turn (hpo.study.pruners)
            for i, trial in enumerate(trials):
                start = time.perf_counter()
                try:
                    outcome: float | BaseException = self.finish(trial, self.run_folds_in_turn(trial, timings[i]))
                except Exception as error:  # noqa: BLE001 -- pruned, diverged, or failed: the trial's outcome
                    outcome = error
                walls[i] += time.perf_counter() - start
                settle(i, outcome)
            return [o for o in outcomes if o is not None]  # each trial settled
        groups: dict[GroupKey, list[tuple[int, PlannedTrial]]] = {}
        for i, trial in enumerate(trials):
            start = time.perf_counter()
            try:
                planned = self.plan(trial, timings[i])
            except Exception as error:  # noqa: BLE001 -- this trial's outcome (e.g. a CNN that cannot fit: pruned)
                walls[i] += time.perf_counter() - start
                settle(i, error)
                continue
            walls[i] += time.perf_counter() - start
            groups.setdefault(planned.key, []).append((i, planned))
        ordered, hostable = training_order(groups, self.compiler)
        parts = [part for group in ordered for part in self.programs_of(group)]
        with self.compiling_ahead(parts, timings, hostable) as compiled_ahead:
            for j, part in enumerate(parts):
                start = time.perf_counter()
                counted = [timings[i].compile_seconds + timings[i].train_seconds for i, _ in part]
                waited = compiled_ahead(j)
                for i, _ in part:
                    timings[i].compile_seconds += waited / len(part)
                results = train_group([planned.member for _, planned in part], self.data, self.dataset.out_features,
                                      plan=self.config.plan, compiler=self.compiler)
                finished: list[tuple[int, float | BaseException]] = []
                for (i, planned), result in zip(part, results):
                    try:
                        finished.append((i, self.finish(planned.trial, result)))
                    except Exception as error:  # noqa: BLE001 -- pruned, diverged, or failed: the trial's outcome
                        finished.append((i, error))
                # each trial's own compiling and training (equal shares in a program of several trials), and an
                # equal share of the rest: so its seconds add up, and the part's add up to its wall time
                own = [timings[i].compile_seconds + timings[i].train_seconds - c for (i, _), c in zip(part, counted)]
                rest = max(0.0, time.perf_counter() - start - sum(own)) / len(part)
                for (i, outcome), mine in zip(finished, own):
                    walls[i] += mine + rest
                    settle(i, outcome)
        return [o for o in outcomes if o is not None]  # each trial settled

    @contextlib.contextmanager
    def compiling_ahead(
        self, parts: list[list[tuple[int, PlannedTrial]]], timings: list[Timing],
        hostable: frozenset[GroupKey] | set[GroupKey] = frozenset(),
    ) -> Iterator[Callable[[int], float]]:
        """While a batch's parts train one after another, the programs of its groups compile in background
        threads, in the order they will train (``compile_threads`` of them), except those of ``hostable`` groups,
        which may train in a larger group's program: they decide as they train, once the larger one has trained
        and its cost is known (``models.sharing``). Yields ``compiled_ahead(j)``, which part ``j`` calls before
        it trains: it waits for the part's program if a thread is compiling it (else cancels that work: the
        part compiles for itself, as a lone trial does) and returns the seconds it waited, which are the part's
        compile seconds; the thread's own seconds are the part's trials' ``background_compile_seconds``. A
        batch of one group (every part in one program), or a study that does not compile ahead
        (``compiles_ahead``), compiles as it trains."""
        firsts: dict[GroupKey, int] = {}  # a group's first part, which meets the group's program first
        for j, part in enumerate(parts):
            if part[0][1].key not in hostable:
                firsts.setdefault(part[0][1].key, j)
        if len(firsts) < 2 or not self.compiling_in_background:
            yield lambda j: 0.0
            return
        pool = ThreadPoolExecutor(max_workers=min(len(firsts), compile_threads()), thread_name_prefix="compile")
        futures = {j: pool.submit(self._compile_part, parts[j], timings) for j in firsts.values()}

        def compiled_ahead(j: int) -> float:
            future = futures.get(j)
            if future is None or future.cancel():
                return 0.0
            start = time.perf_counter()
            future.result()
            return time.perf_counter() - start

        try:
            yield compiled_ahead
        finally:
            # compile nothing more, and wait for what is compiling: a thread killed inside XLA aborts the process
            pool.shutdown(wait=True, cancel_futures=True)

    def _compile_part(self, part: list[tuple[int, PlannedTrial]], timings: list[Timing]) -> None:
        try:
            seconds = precompile(part[0][1].member.config, self.data, self.dataset.out_features,
                                 plan=self.config.plan, members=len(part), compiler=self.compiler)
        except Exception:  # noqa: BLE001 -- an optimisation only: the part compiles for itself and meets the error
            return
        for i, _ in part:
            timings[i].background_compile_seconds += seconds / len(part)

    def programs_of(self, group: list[tuple[int, PlannedTrial]]) -> list[list[tuple[int, PlannedTrial]]]:
        """How a group of trials that share programs trains: as one program over trials x folds where its runs
        would be vmapped, else trial by trial. A program mapping the runs one after another would do the lone
        trials' work in a program compiled for this group size; trained as lone trials, in the lone program, each
        is told to the storage as soon as it ends, so the pruner and the sampler hear of it before the next."""
        members = [planned.member for _, planned in group]
        if len(group) > 1 and group_mapping(members, self.data, self.dataset.out_features, self.config.plan,
                                            self.compiler) == "sequential":
            return [[entry] for entry in group]
        return [group]

    def plan(self, trial: optuna.Trial, timing: Timing) -> PlannedTrial:
        """Sample the trial's configuration and prepare its place in a training group (``models.train.Member``):
        its runs' seeds and the per-epoch report to the trial, which prunes it when the pruner says so."""
        started = time.perf_counter()
        mark_startup(trial, self.startup)  # before sampling: the spread's population (hpo.study.population)
        config = suggest(trial, self.config, self.dataset)
        if self.on_epoch is not None:  # started: a long first epoch is shown while it runs
            self.on_epoch(trial.number, 0, self.config.epochs, float("nan"), time.perf_counter() - started)

        def on_epoch(epoch: int, metrics: EpochMetrics) -> None:
            score = float(np.mean(metrics.val_score))
            trial.report(score, epoch)
            if self.on_epoch is not None:
                self.on_epoch(trial.number, epoch + 1, self.config.epochs, score, time.perf_counter() - started)
            if trial.should_prune():
                write_trial(trial, pruned_reason=f"pruner stopped the trial after epoch {epoch + 1}")
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")

        n_runs = self.data.train_idx.shape[0]
        *run_seeds, order_seed = np.random.SeedSequence(trial_seed(self.config.seed, trial.number)).spawn(n_runs + 1)
        order_rng = np.random.default_rng(order_seed)  # as models.train.cross_validate: one generator for the folds
        # recorded before training too, so that a running trial shows it has compiled (dashboard, tests)
        member = Member(config, run_seeds, [order_rng] * n_runs, on_epoch, timing,
                        lambda seconds: write_trial(trial, compile_seconds=seconds))
        return PlannedTrial(trial, member, group_key(config, self.data, self.dataset.out_features))

    def run_folds_in_turn(self, trial: optuna.Trial, timing: Timing) -> CVResult:
        """Cross-validate the trial one fold after another (``hpo.study.pruners.trains_fold_major``), so that it
        can stop between folds as well as between epochs.

        ``--pruner halving`` hears every epoch of every fold at its *fold-epoch* step (fold f's epoch e is step
        ``f * E + e``, from 1), the folds in their fixed order, so that a step is the same measurement for every
        trial (``hpo.study.pruners``). ``--pruner wilcoxon`` hears each fold's final score with the fold's index as
        step, as Optuna's Wilcoxon pruner wants (one value per instance, paired across trials by step), the folds
        in an order shuffled per trial, as its documentation advises. Each fold's runs are drawn from its own seeds
        (``trial_seed``), so a fold's result does not depend on the folds trained before it."""
        started = time.perf_counter()
        mark_startup(trial, self.startup)
        config = suggest(trial, self.config, self.dataset)
        k, epochs = self.data.train_idx.shape[0], self.config.epochs
        per_epoch = self.config.pruner in HALVING_PRUNERS
        if self.on_epoch is not None:
            self.on_epoch(trial.number, 0, k * epochs, float("nan"), time.perf_counter() - started)
        *run_seeds, order_seed = np.random.SeedSequence(trial_seed(self.config.seed, trial.number)).spawn(k + 1)
        order_rngs = [np.random.default_rng(child) for child in order_seed.spawn(k)]
        shuffle = np.random.default_rng(order_seed.spawn(1)[0])  # a child of its own, after the k batch orders
        folds = list(range(k)) if per_epoch else [int(f) for f in shuffle.permutation(k)]
        results: dict[int, CVResult] = {}
        for done, fold in enumerate(folds):

            def on_epoch(epoch: int, metrics: EpochMetrics, done: int = done) -> None:
                score, step = float(np.mean(metrics.val_score)), done * epochs + epoch + 1
                if self.on_epoch is not None:
                    self.on_epoch(trial.number, step, k * epochs, score, time.perf_counter() - started)
                if per_epoch:
                    trial.report(score, step)
                    if step < k * epochs and trial.should_prune():
                        write_trial(trial, pruned_reason=f"pruner stopped the trial after epoch {epoch + 1} of "
                                    f"fold {done + 1} of {k}")
                        raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} of fold {done + 1}")

            data = self.data._replace(train_idx=self.data.train_idx[fold:fold + 1],
                                      val_idx=self.data.val_idx[fold:fold + 1], val_mask=self.data.val_mask[fold:fold + 1])
            member = Member(config, [run_seeds[fold]], [order_rngs[fold]], on_epoch, timing,
                            lambda seconds: write_trial(trial, compile_seconds=seconds))
            results[fold] = train_member(member, data, self.dataset.out_features, self.config.plan,
                                         compiler=self.compiler)
            if not per_epoch:
                trial.report(float(results[fold].fold_scores[0]), fold)
                if done + 1 < k and trial.should_prune():
                    write_trial(trial, pruned_reason=f"pruner stopped the trial after fold {done + 1} of {k}")
                    raise optuna.TrialPruned(f"pruned after fold {done + 1}")
        return joined_folds([results[fold] for fold in range(k)])

    def finish(self, trial: optuna.Trial, outcome: CVResult | Exception) -> float:
        """Record a trained trial's results as user attributes and return its value (or raise how it ended)."""
        if isinstance(outcome, DivergedError):
            write_trial(trial, pruned_reason=f"diverged: {outcome}")
            raise optuna.TrialPruned(f"diverged: {outcome}")
        if isinstance(outcome, Exception):
            raise outcome
        write_trial(
            trial,
            fold_scores=[float(s) for s in outcome.fold_scores],
            fold_std=float(np.std(outcome.fold_scores)),
            n_params=outcome.n_params,
            curves=encode_curves(outcome.points, outcome.point_epochs),
        )
        if self.config.diagnostics:
            write_trial(trial, diagnostics=final_diagnostics(outcome.points))
        return outcome.score


def joined_folds(results: list[CVResult]) -> CVResult:
    """One cross-validation's result from its folds trained one after another (one run each)."""
    first = results[0]
    joined = {name: np.concatenate([r.curves[name] for r in results], axis=1) for name in first.curves}
    points = {name: np.concatenate([r.points[name] for r in results], axis=1) for name in first.points}
    return CVResult(
        np.concatenate([r.fold_scores for r in results]), joined, sum(r.compile_seconds for r in results),
        sum(r.train_seconds for r in results), first.n_params, points, first.point_epochs, None, first.fold_strategy,
        first.shared_program, sum(r.padding_seconds for r in results),
    )


class PlannedTrial(NamedTuple):
    """A trial whose configuration is sampled, ready to train in a group of trials with the same ``key``."""

    trial: optuna.Trial
    member: Member
    key: GroupKey  # models.train.group_key of its configuration


def peak_memory_mb() -> float:
    """This process's peak resident memory in MB (Linux reports ``ru_maxrss`` in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def record_timing(trial: optuna.Trial, wall_seconds: float, timing: Timing) -> None:
    """Every second of a finished trial, pruned or not: compiling, training, and everything else (sampling,
    initialisation, transfers, storage writes), so a study's benchmark can account for its whole time; the worker
    process's peak memory so far (the study's peak is the largest over its trials); and, for a trial trained in a
    wider network's program, which one and about how many training seconds its padding took."""
    write_trial(
        trial,
        peak_memory_mb=round(peak_memory_mb(), 1),
        wall_seconds=wall_seconds,
        compile_seconds=timing.compile_seconds,
        train_seconds=timing.train_seconds,
        overhead_seconds=max(0.0, wall_seconds - timing.compile_seconds - timing.train_seconds),
        padding_seconds=timing.padding_seconds,  # of train_seconds (models.compile.sharing)
    )
    if timing.background_compile_seconds:
        write_trial(trial, background_compile_seconds=timing.background_compile_seconds)
    if timing.shared_program:
        write_trial(trial, shared_program=timing.shared_program)


def training_order(groups: dict[GroupKey, list], compiler: Compiler) -> tuple[list[list], set[GroupKey]]:
    """A batch's groups in the order they train, every group that could host another's networks in its program
    (``models.train.could_host``) before them, and the keys of the groups that another could host. So a
    narrower network meets its host trained, with the cost of padding into it measured (``models.sharing``)."""
    family = {key: group[0][1].member.config.family for key, group in groups.items()}
    hostable = {key for key in groups if any(could_host(host, key, family[key], compiler) for host in groups)}
    remaining, ordered = list(groups), []
    while remaining:  # hosting is a partial order (a host is larger everywhere): take a group none left can host
        key = next(k for k in remaining if not any(could_host(h, k, family[k], compiler) for h in remaining))
        remaining.remove(key)
        ordered.append(groups[key])
    return ordered, hostable


COMPILE_AHEAD_MIN_CORES = 4  # CPU cores from which compiling ahead leaves training cores of its own


def compiles_ahead(config: StudyConfig) -> bool:
    """Whether programs compile in the background while trials train (the programs of a batch's later groups,
    start-up trials asked together, and the space's, ``hpo.study.compile_ahead``): where cores are free for it (a GPU
    trains while the CPU compiles; a CPU of at least ``COMPILE_AHEAD_MIN_CORES`` cores), unless
    ``--compile-ahead``/``--no-compile-ahead`` says otherwise. On 2 cores XLA's compiler already takes about
    1.6 of them, so compiling beside training slows training as much as it hides compiling
    (``benchmarks/study.py`` measures both)."""
    if config.compile_ahead is not None:
        return config.compile_ahead
    import jax

    return jax.default_backend() != "cpu" or usable_cores() >= COMPILE_AHEAD_MIN_CORES


def compile_threads() -> int:
    """Threads that compile a batch's programs in the background: one per two cores this process may use. XLA
    compiles one program on about 1.6 cores of a CPU (measured: 2.7 CPU seconds in 1.7 s), so on 2 cores two
    programs compiled at once take as long as one after the other; the cores of a GPU host compile many."""
    return max(1, usable_cores() // 2)

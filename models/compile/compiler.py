"""How a group's programs come to exist: loaded, compiled, shared with a larger network's, or measured first.

One ``Compiler`` holds everything that outlives a single training: the store of compiled programs (in memory and,
with a directory, on disk: ``models.compile.store``), which programs narrower networks may train in
(``models.compile.sharing``) and the fold-strategy decisions measured on this machine. It is passed to the training
loop (``models.train``); the study pipeline makes one per process with the study's cache directory, and library
calls that pass none share the process's ``default_compiler()``, an in-memory one.

Fold strategy. ``auto`` is decided by measurement, once per machine and *kind of program*: the first program of a
kind met once deciding pays (below) is compiled with each mapping, exactly as it will train, and whole epochs of
both are timed in turn from the same initial state (up to ``repeats`` rounds, fewer once ``budget_seconds`` have
passed); the mapping with the faster epoch wins, and its program is the one the trial then trains with, so
deciding costs one extra compilation and a few epochs. Timing the real epoch, not shorter programs, matters:
short programs mispredicted the epoch by 10-20% and chose the slower mapping for 2-D CNNs. A kind is
``models.compile.folds.fold_kind``. The decision is kept beside the program store (per backend, device, CPU and
source of ``models/``) and reused by every later process; without a store, by this process. It is made before
the programs' key is formed, so stored programs are keyed by the concrete strategy.

A decision is measured only once it pays: when programs of the kind have trained for ``payback`` times what
measuring costs on this machine (a compilation and a timed epoch of each mapping; counted beside the stored
decisions). Until then (and for a kind met once, such
as the test-score retraining of a study) the runs are mapped the ``provisional_mapping`` way, and no decision is
stored: a cold study of small networks would otherwise spend more on deciding than the decision gains.
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from models.compile.folds import fold_kind, measuring_cost, provisional_mapping, time_call, work_bucket
from models.compile.sharing import ProgramSharing
from models.compile.store import MAX_PROGRAMS, ProgramStore
from models.train.epoch import run_epoch
from models.train.types import MAPPINGS, EpochProgram, FoldData, ModelFamily, RunState

AUTO_REPEATS = 3  # timed epochs of each mapping, interleaved; the fastest counts
AUTO_BUDGET_SECONDS = 20.0  # no further round of timed epochs once measuring has taken this long (one at least)
# A decision is measured once its kind has trained this many times what measuring costs on this machine (the
# store's count, ``ProgramStore.training``; per process without a store). Measuring costs a second compilation and
# one timed epoch of each mapping, whose work is thrown away (two epochs of a segregated-dendrites network on 2 cores
# took 15 minutes; an earlier rule that counted the compilation only measured it after one short trial), and gains
# 0-25% of the kind's later training: a kind met for one program, such as the test-score retraining, or for a few
# seconds, trains with the provisional mapping and is never measured.
AUTO_PAYBACK = 10.0


class Compiled(NamedTuple):
    """The compiled programs of one group: its epoch program."""

    epoch: Any  # (RunState, batches, x, y, val_idx, val_mask, hyper) -> (RunState, EpochMetrics, points)


def shapes(tree: Any) -> tuple:
    """A hashable description of a pytree's structure, shapes and dtypes."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((tuple(np.shape(a)), str(jax.numpy.result_type(a))) for a in leaves)


def device_arrays(data: FoldData) -> tuple:
    """The device-resident arrays of ``data`` that an epoch program takes, in its argument order."""
    return data.x, data.y, data.val_idx, data.val_mask


def compile_epoch(program: EpochProgram):
    """Trace, lower and compile the epoch program ``program`` (its fold strategy concrete)."""
    epoch_fn = partial(run_epoch, program.family, program.spec, program.plan)
    return jax.jit(epoch_fn, donate_argnums=0).lower(
        RunState(program.state, program.key), program.batches, *device_arrays(program.data), program.hyper
    ).compile()


def with_strategy(program: EpochProgram, fold_strategy: str) -> EpochProgram:
    """``program`` with ``fold_strategy`` in its plan."""
    return program._replace(plan=replace(program.plan, fold_strategy=fold_strategy))


class Compiler:
    """The program store, program sharing and fold-strategy decisions of one process (see the module docstring).

    ``directory``: where compiled programs and decisions are stored (None: memory only). ``sharing``: whether
    narrower networks may train in larger ones' programs. ``payback``, ``repeats``, ``budget_seconds``: when and
    how long ``auto`` fold decisions are measured; ``timer(strategy, run)`` times one whole epoch (tests replace it).
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        sharing: bool = True,
        max_programs: int = MAX_PROGRAMS,
        payback: float = AUTO_PAYBACK,
        repeats: int = AUTO_REPEATS,
        budget_seconds: float = AUTO_BUDGET_SECONDS,
        timer: Callable[[str, Callable[[], Any]], float] = time_call,
    ):
        self.store = ProgramStore(max_programs, directory)
        self.sharing = ProgramSharing(enabled=sharing)
        self.payback, self.repeats, self.budget_seconds, self.timer = payback, repeats, budget_seconds, timer

    @property
    def directory(self) -> Path | None:
        return self.store.directory

    # ------------------------------------------------------------------------------------------------------
    # Fold strategy

    def decision_status(self, family: ModelFamily, decision_key: tuple) -> tuple[dict | None, bool]:
        """The kind's decision if made already (here or stored), and whether, not made, it is due now: whether the
        kind has trained ``payback`` times what measuring its mapping costs on this machine: a compilation (this
        process's compile cost, or the one recorded with the count when this process compiled nothing) and two of
        the kind's epochs at their mean seconds so far."""
        known = self.store.known_decision(decision_key)
        if known is not None:
            return known, False
        if self.payback == 0:
            return None, True  # measured at once (what the objective benchmark and tests of the measurement ask for)
        trained, compile_cost, epochs = self.store.training(decision_key)  # on this machine, where the store counts
        compile_cost = self.sharing.compile_cost(family.name) or compile_cost
        if compile_cost is None or epochs == 0:
            return None, False
        return None, trained >= self.payback * measuring_cost(compile_cost, trained / epochs)

    @staticmethod
    def auto_kind(program: EpochProgram) -> tuple:
        """``fold_kind`` of ``program`` under an ``auto`` plan."""
        family, spec, plan, state, _, batches, data, _ = program
        plan = replace(plan, fold_strategy="auto")
        return fold_kind(family, spec, plan, work_bucket(family, spec, state, batches), batches, data)

    def decide_fold_strategy(self, program: EpochProgram) -> tuple[EpochProgram, float, Any]:
        """``program`` with a concrete fold strategy in its plan, the seconds spent deciding it (0 unless measured
        now), and the chosen mapping's compiled epoch program when it was compiled to decide (else None)."""
        family, spec, plan, state, key, batches, data, hyper = program
        if plan.fold_strategy != "auto":
            return program, 0.0, None
        bucket = work_bucket(family, spec, state, batches)
        decision_key = fold_kind(family, spec, plan, bucket, batches, data)
        known, due = self.decision_status(family, decision_key)
        if known is None and not due:
            return with_strategy(program, provisional_mapping()), 0.0, None
        programs = {}

        def measure() -> dict:
            start = time.perf_counter()
            for strategy in MAPPINGS:
                compiling = time.perf_counter()
                programs[strategy] = compile_epoch(with_strategy(program, strategy))
                self.sharing.record_compile(family.name, time.perf_counter() - compiling)
            timed: dict[str, list[float]] = {strategy: [] for strategy in MAPPINGS}
            for rounds in range(1, self.repeats + 1):
                if rounds > 1 and time.perf_counter() - start >= self.budget_seconds:
                    break
                for strategy in MAPPINGS:  # the two back to back: a load that comes and goes slows both alike
                    fresh = RunState(jax.device_put(state), key)  # the program donates its state: a copy per call
                    run = partial(programs[strategy], fresh, batches, *device_arrays(data), hyper)
                    timed[strategy].append(self.timer(strategy, run))
            fastest = {strategy: min(times) for strategy, times in timed.items()}
            return {
                "strategy": min(MAPPINGS, key=lambda strategy: fastest[strategy]), "seconds": fastest, "rounds": len(timed[MAPPINGS[0]]),
                "epoch_steps": int(batches.shape[1]), "family": family.name, "runs": int(batches.shape[0]),
                "work_bucket": bucket, "measure_seconds": time.perf_counter() - start,
            }

        decision, measured = self.store.decide(decision_key, measure)
        chosen = decision["strategy"]
        return with_strategy(program, chosen), decision["measure_seconds"] if measured else 0.0, programs.get(chosen)

    def mapping_of(self, program: EpochProgram) -> str:
        """How the runs of ``program`` would be mapped now, found without compiling or measuring (its keys and
        hyperparameters are not read): the fold strategy, or for ``auto`` the kind's decision or, undecided, the
        provisional mapping."""
        if program.plan.fold_strategy != "auto":
            return program.plan.fold_strategy
        decision = self.store.known_decision(self.auto_kind(program))
        return provisional_mapping() if decision is None else decision["strategy"]

    def count_training(self, program: EpochProgram, seconds: float, epochs: int) -> None:
        """Programs of ``program``'s kind trained ``epochs`` more epochs in ``seconds``: what a measured decision
        would be worth and what measuring it would cost (``payback``)."""
        kind = self.auto_kind(program)
        if self.store.known_decision(kind) is None:
            self.store.add_training(kind, seconds, self.sharing.compile_cost(program.family.name), epochs)

    # ------------------------------------------------------------------------------------------------------
    # Programs

    @staticmethod
    def program_key(program: EpochProgram) -> tuple:
        """The program store's key of ``program`` (its plan's fold strategy concrete)."""
        family, spec, plan, state, key, batches, data, hyper = program
        return family.name, spec, plan, shapes((state, key, batches, device_arrays(data), hyper))

    def program_exists(self, program: EpochProgram) -> bool:
        """Whether ``program`` is compiled already (in this process or in the store on disk) or being compiled by
        another thread, found without compiling or measuring anything: under an ``auto`` plan not yet decided for
        its kind and due for measuring, it is not."""
        if program.plan.fold_strategy == "auto":
            decision, due = self.decision_status(program.family, self.auto_kind(program))
            if due:
                return False  # measuring it compiles both mappings anyway
            program = with_strategy(program, provisional_mapping() if decision is None else decision["strategy"])
        return self.program_key(program) in self.store

    def compiled_programs(self, program: EpochProgram) -> tuple[Compiled, float, EpochProgram]:
        """Compiled programs for ``program``'s shapes, the seconds spent compiling (or loading) them, with those
        spent deciding an ``auto`` fold strategy, and the program they run (its plan's fold strategy concrete)."""
        program, deciding, decided = self.decide_fold_strategy(program)

        def build() -> Compiled:
            if decided is not None:  # compiled (and timed) to decide the fold strategy: not compiled again
                return Compiled(decided)
            start = time.perf_counter()
            compiled = Compiled(compile_epoch(program))
            self.sharing.record_compile(program.family.name, time.perf_counter() - start)  # what not compiling saves
            return compiled

        programs, seconds = self.store.get(self.program_key(program), build)
        return programs, seconds + deciding, program


_DEFAULT: Compiler | None = None


def default_compiler() -> Compiler:
    """The process's compiler for library calls that pass none: in memory, with program sharing."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Compiler()
    return _DEFAULT

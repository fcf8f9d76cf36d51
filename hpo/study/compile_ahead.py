"""Programs compiled before a trial needs them: the distinct programs of a study's search space, found by
proposing configurations at random, and a background thread that compiles them while trials train."""

from __future__ import annotations

import threading
from typing import Callable

import optuna

from hpo.config import StudyConfig
from hpo.space.algorithms import suggest
from hpo.study.objective import Objective
from models.train import group_key, precompile

SAMPLES = 400  # proposals drawn from the space at most
PATIENCE = 150  # stop after this many proposals in a row that needed no new program


def distinct_programs(
    config: StudyConfig, objective: Objective, samples: int = SAMPLES, patience: int = PATIENCE
) -> tuple[list, bool]:
    """Configurations of the study's space, one per distinct program, in the order random proposals found them,
    and whether that is all of them (``patience`` proposals in a row needed no new program)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=config.seed))
    found: dict = {}
    since_new = 0
    for _ in range(samples):
        trial = study.ask()
        try:
            proposed = suggest(trial, config, objective.dataset)
        except optuna.TrialPruned:  # a proposal the space itself refuses (a CNN that does not fit)
            continue
        finally:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        key = group_key(proposed, objective.data, objective.dataset.out_features)
        if key in found:
            since_new += 1
            if since_new >= patience:
                return list(found.values()), True
            continue
        found[key] = proposed
        since_new = 0
    return list(found.values()), False


class CompileAhead:
    """The background compilation of a study's programs (``compile_ahead``); ``stop()`` ends it."""

    def __init__(self, work: Callable[[threading.Event], None]):
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=work, args=(self._stopping,), name="compile-ahead", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Compile nothing more and wait for the program being compiled: a thread killed inside XLA when the
        process exits aborts the process (``terminate called ...``) after the study has finished."""
        self._stopping.set()
        self._thread.join()


def compile_ahead(config: StudyConfig, objective: Objective) -> CompileAhead | None:
    """Compile the space's programs in a background thread while trials train, so that a trial that needs a new
    program finds it compiled (or being compiled: it waits rather than compiling it twice).

    Only for a space with few programs (an MLP's few dozen: a CNN space's architectures are too many to compile
    ahead) and with a program store on disk (``--cache-dir``): the bounded in-memory cache alone would drop
    programs compiled ahead. XLA compiles on one thread beside training: free where a core is idle (a GPU
    trains, the CPU compiles), a competitor for the cores on a small CPU (``hpo.study.objective.compiles_ahead``). The
    caller stops it (``CompileAhead.stop``) when its trials are done.
    """
    if objective.compiler.directory is None:
        return None

    def work(stopping: threading.Event) -> None:
        try:
            proposals, complete = distinct_programs(config, objective)
            if not complete:
                return
            for proposed in proposals:
                if stopping.is_set():
                    return
                precompile(proposed, objective.data, objective.dataset.out_features, plan=config.plan,
                           compiler=objective.compiler)
        except Exception:  # noqa: BLE001 -- compiling ahead is an optimisation: a trial compiles what it needs
            return

    return CompileAhead(work)

"""Compile a study's programs ahead of it, once per machine: a study afterwards loads them instead of compiling.

    python -m hpo.warmup --algo fa [--dataset mnist-5k] [--model mlp] [--config studies/bundled.toml] [...]

Takes the flags of ``python -m hpo.run`` (only those that shape programs matter: dataset, model, algorithm, folds,
evaluation points, diagnostics, fold strategy, trial batch, cache directory). The programs a space can need are
found by proposing configurations from it at random (an in-memory study, nothing is stored) and keeping one per
distinct program; each is compiled into the program store of ``models.programs`` (``--cache-dir``). An MLP space
has a few dozen programs; a CNN space has thousands of architectures, so for it only the first ``--samples``
proposals are compiled, which is rarely worth it.
"""

from __future__ import annotations

import sys
import threading
import time

import optuna

from hpo.algorithms import suggest
from hpo.config import StudyConfig
from hpo.data import load_dataset
from hpo.errors import UsageError
from hpo.objective import Objective
from hpo.study import configure_jax
from models.train import PROGRAMS, group_key, precompile

SAMPLES = 400  # proposals drawn from the space at most
PATIENCE = 150  # stop after this many proposals in a row that needed no new program


def distinct_programs(config: StudyConfig, objective: Objective, samples: int = SAMPLES, patience: int = PATIENCE):
    """Configurations of the study's space, one per distinct program, in the order random proposals found them."""
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
                break
            continue
        found[key] = proposed
        since_new = 0
    return list(found.values())


def warm_up(config: StudyConfig, out=print) -> int:
    """Compile every program the study's space can need into the program store; the number of programs."""
    configure_jax(config.cache_dir)
    if config.cache_dir is not None and config.cache_dir.lower() == "none":
        raise UsageError("--cache-dir none keeps no program store: warming up would compile for nothing")
    dataset = load_dataset(config.dataset, config.data_dir)
    objective = Objective(config, dataset)
    proposals = distinct_programs(config, objective)
    start = time.perf_counter()
    for i, proposed in enumerate(proposals, 1):
        seconds = precompile(
            proposed, objective.data, dataset.out_features, config.fold_strategy, config.evals_per_epoch,
            config.diagnostics,
        )
        out(f"[{config.name}] program {i}/{len(proposals)}: {seconds:.1f}s")
    out(f"[{config.name}] {len(proposals)} programs ready in {time.perf_counter() - start:.0f}s")
    return len(proposals)


def compile_ahead(config: StudyConfig, objective: Objective) -> threading.Thread | None:
    """Compile the space's programs in a background thread while trials train, so that a trial that needs a new
    program finds it compiled (or being compiled: it waits rather than compiling it twice).

    Only with a program store on disk (``--cache-dir``): the in-memory cache alone is bounded and would drop
    programs compiled ahead. Compilation runs on a CPU core beside training (XLA compiles on one thread); on a
    GPU machine it is free, on a 2-core CPU it competes with training (``benchmarks/study.py`` measures both).
    """
    if PROGRAMS.directory is None:
        return None

    def work() -> None:
        try:
            for proposed in distinct_programs(config, objective):
                if group_key(proposed, objective.data, objective.dataset.out_features) is None:
                    continue
                precompile(
                    proposed, objective.data, objective.dataset.out_features, config.fold_strategy,
                    config.evals_per_epoch, config.diagnostics,
                )
        except Exception:  # noqa: BLE001 -- compiling ahead is an optimisation: a trial compiles what it needs
            return

    thread = threading.Thread(target=work, name="compile-ahead", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    from hpo.run import configs_from_args, parse_args

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        for config in configs_from_args(parse_args(argv)):
            warm_up(config)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the programs compiled so far are stored", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

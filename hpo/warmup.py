"""Compile a study's programs ahead of it, once per machine: a study afterwards loads them instead of compiling.

    python -m hpo.warmup --algo fa [--dataset mnist-5k] [--model mlp] [--config studies/bundled.toml] [...]

Takes the flags of ``python -m hpo.run`` (only those that shape programs matter: dataset, model, algorithm, space,
folds, evaluation points, diagnostics, fold strategy, cache directory). The programs a space can need are found by
proposing configurations from it at random (an in-memory study, nothing is stored; ``hpo.study.compile_ahead``) and keeping
one per distinct program; each is compiled into the program store of ``models.compile`` (``--cache-dir``). An MLP
space has a few dozen programs (36 by default); a CNN space has thousands of architectures, so for it only those
the first few hundred proposals found are compiled, which is rarely worth it. Trial batches (``--trial-batch``)
train groups of trials in programs of their own, which are compiled when a group first needs them.
"""

from __future__ import annotations

import sys
import time

import optuna

from hpo.cli import add_study_flags, command_parser, run_command, study_configs
from hpo.config import StudyConfig
from hpo.data import load_dataset
from hpo.errors import UsageError
from hpo.study.compile_ahead import distinct_programs
from hpo.study.objective import Objective
from hpo.study.runner import configure_jax
from models.train import precompile


def warm_up(config: StudyConfig, out=print) -> int:
    """Compile every program the study's space can need into the program store; the number of programs."""
    configure_jax()
    if config.cache_dir is not None and config.cache_dir.lower() == "none":
        raise UsageError("--cache-dir none keeps no program store: warming up would compile for nothing")
    dataset = load_dataset(config.dataset, config.data_dir)
    objective = Objective(config, dataset)
    proposals, complete = distinct_programs(config, objective)
    if not complete:
        out(f"[{config.name}] the space has more programs than {len(proposals)} proposals found; compiling those")
    start = time.perf_counter()
    for i, proposed in enumerate(proposals, 1):
        seconds = precompile(proposed, objective.data, dataset.out_features, plan=config.plan,
                             compiler=objective.compiler)
        out(f"[{config.name}] program {i}/{len(proposals)}: {seconds:.1f}s")
    out(f"[{config.name}] {len(proposals)} programs ready in {time.perf_counter() - start:.0f}s")
    return len(proposals)


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("python -m hpo.warmup", __doc__)
    add_study_flags(parser)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def body() -> None:
        for config in study_configs(args):
            warm_up(config)

    return run_command(body, interrupted="interrupted: the programs compiled so far are stored")


if __name__ == "__main__":
    sys.exit(main())

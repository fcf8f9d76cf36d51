"""Run a hyperparameter study of one learning rule, or a grid of studies from a TOML file.

    python -m hpo.run --algo fa --trials 50
    python -m hpo.run --config studies/bundled.toml
    python -m hpo.run --show-space --algo kp [--model cnn] [--config FILE | --space FILE]

Kept short on purpose: parsing only; the work is in ``hpo.study.runner`` and ``hpo.report.summary``.
"""

from __future__ import annotations

import argparse
import sys

from hpo.config import (
    ALGORITHMS,
    DEFAULT_STORAGE,
    FOLD_STRATEGIES,
    MODELS,
    PRUNERS,
    SAMPLERS,
    TRACKERS,
    StudyConfig,
    load_grid,
)
from hpo.data import DATASETS
from hpo.errors import ReportedError, StorageError, UsageError
from hpo.parallel.interrupts import exit_code_of, exit_now, handle_interrupts
from hpo.space.overrides import apply_spaces, read_space_file, show_spaces


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hpo.run", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--config", help="TOML study grid (e.g. studies/bundled.toml); other flags override its values")
    add("--space", help="TOML file holding a [space] table of search-space overrides (README: Search spaces); "
        "it overrides the grid's [space] tables")
    add("--show-space", action="store_true",
        help="print the effective search space of each study (with --config: its studies of --algo/--model) and "
        "exit, touching no storage")
    add("--algo", help=f"learning rule: {', '.join(ALGORITHMS)} (sd: segregated dendrites, mlp only; default fa)")
    add("--dataset", help=f"dataset: {', '.join(DATASETS)} (default mnist-5k)")
    add("--model", help=f"network family: {', '.join(MODELS)} (default mlp)")
    add("--trials", type=int, help="total finished trials the study should reach (default 50)")
    add("--folds", type=int, help="k of k-fold cross-validation (default 3)")
    add("--epochs", type=int, help="training epochs per fold (default 10)")
    add("--storage", help=f"storage URL or journal file path (default {DEFAULT_STORAGE})")
    add("--study-name", help="study name (default <dataset>-<model>-<algo>)")
    add("--sampler", help=f"{', '.join(SAMPLERS)} (default tpe)")
    add("--pruner", help=f"{', '.join(PRUNERS)} (default median)")
    add("--seed", type=int, help="study seed: sampler, folds, networks (default 0)")
    add("--results-dir", help="where summaries and charts are written (default results/<storage name>: "
        "results/studies for the default storage)")
    add("--fold-strategy", help=f"{'|'.join(FOLD_STRATEGIES)}: folds vmapped in one program, one after another, "
        "or auto (default): the faster, measured once per program shape on this machine and stored with the programs")
    add("--evals-per-epoch", type=int, help="evaluation points per epoch for learning curves and diagnostics (default 1)")
    add("--diagnostics", action=argparse.BooleanOptionalAction, default=None,
        help="record alignment with backprop, W-B angles and weight change per trial (default on)")
    add("--workers", type=int, help="local worker processes running each study together (default 1); "
        "workers on other machines just run the same command with the same --storage")
    add("--test-seeds", type=int, help="seeds the best configuration is retrained with on the whole training split "
        "and scored on the test split: mean, std and 95%% CI over them (default 5)")
    add("--compile-ahead", action=argparse.BooleanOptionalAction, default=None,
        help="compile while trials train: start-up trials asked together, a batch's later programs and the search "
        "space's compiled in background threads (default: on a GPU, or a CPU with 4 or more cores)")
    add("--trial-batch", type=int, help="trials each worker runs at once: those that share programs train as one "
        "group (one compiled program over trials x folds where runs are vmapped, else lone trials in turn), each "
        "reported and pruned on its own (default 1)")
    add("--cache-dir", help="directory of the store of compiled programs (in <dir>/programs), or 'none' "
        "(default $HPO_JAX_CACHE or ~/.cache/bioplausible-hpo/jax)")
    add(
        "--data-dir",
        help="directory of the mnist, fashion-mnist and cifar10 files, downloaded there when missing "
        "(default $HPO_DATA_DIR or ~/.cache/bioplausible-hpo/data)",
    )
    add("--tracker", help=f"also log every trial to an experiment tracker: {', '.join(TRACKERS)} (default none; "
        "mlflow and wandb need the extras .[mlflow] and .[wandb])")
    return parser.parse_args(argv)


def configs_from_args(args: argparse.Namespace) -> list[StudyConfig]:
    # --show-space with a grid picks the grid's studies of --algo/--model instead of setting them on every study
    picked = ("algo", "model") if args.show_space and args.config else ()
    skipped = {"config", "space", "show_space", *picked}
    overrides = {k: v for k, v in vars(args).items() if k not in skipped and v is not None}
    layers = [read_space_file(args.space)] if args.space else []
    if not args.config:
        return apply_spaces([(StudyConfig(**overrides), layers)])
    configs = load_grid(args.config, overrides, layers)
    chosen = [c for c in configs if all(getattr(args, k) in (None, getattr(c, k)) for k in picked)]
    if not chosen:
        wanted = " ".join(f"--{k} {getattr(args, k)}" for k in picked if getattr(args, k) is not None)
        raise UsageError(f"config file {args.config!r} has no study of {wanted}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Run the command; the exit code: 0, 2 bad input, 3 the storage failed mid-study, 130 Ctrl-C, 143 SIGTERM."""
    args = parse_args(argv)
    try:
        with handle_interrupts():
            configs = configs_from_args(args)
            if args.show_space:
                print(show_spaces(configs), end="")
                return 0
            from hpo.study.pipeline import run_all

            run_all(configs)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except StorageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except ReportedError as error:
        return error.exit_code
    except KeyboardInterrupt as error:
        print("interrupted: finished trials are stored; rerun the same command to resume", file=sys.stderr)
        return exit_code_of(error)
    return 0


if __name__ == "__main__":
    code = main()
    if code >= 128:  # interrupted: XLA may still be running a dispatched program; see hpo.parallel.interrupts.exit_now
        exit_now(code)
    sys.exit(code)

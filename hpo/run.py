"""Run a hyperparameter study of one learning rule, or a grid of studies from a TOML file.

    python -m hpo.run --algo fa --trials 50
    python -m hpo.run --config studies/bundled.toml
    python -m hpo.run --show-space --algo kp [--model cnn] [--config FILE | --space FILE]

Kept short on purpose: the flags come from ``hpo.config.StudyConfig`` (``hpo.cli``), the work is in
``hpo.study`` and ``hpo.report``.
"""

from __future__ import annotations

import argparse
import sys

from hpo.cli import add_study_flags, command_parser, run_command, study_configs
from hpo.parallel.interrupts import exit_now
from hpo.space.overrides import show_spaces


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("python -m hpo.run", __doc__)
    parser.add_argument("--show-space", action="store_true", help="print the effective search space of each study "
                        "(with --config: its studies of --algo/--model) and exit, touching no storage")
    parser.add_argument("--no-finish", dest="finish", action="store_false",
                        help="run trials only, leaving the test scores and the reports to a later run of the same "
                        "command (the tasks of a Slurm job array: python -m hpo.slurm)")
    add_study_flags(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the command; the exit code (``hpo.cli.run_command``)."""
    args = parse_args(argv)

    def body() -> None:
        # --show-space with a grid picks the grid's studies of --algo/--model instead of setting them on every one
        configs = study_configs(args, picked=("algo", "model") if args.show_space else ())
        if args.show_space:
            print(show_spaces(configs), end="")
            return
        from hpo.study.pipeline import run_all

        run_all(configs, finish=args.finish)

    return run_command(body)


if __name__ == "__main__":
    code = main()
    if code >= 128:  # interrupted: XLA may still be running a dispatched program; see hpo.parallel.interrupts
        exit_now(code)
    sys.exit(code)

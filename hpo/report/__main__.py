"""Regenerate every summary and chart of a storage, from the storage alone (no training).

    python -m hpo.report [--storage URL] [--results-dir DIR] [--study PATTERN]

The command line of ``hpo.report.summary`` (what is written, and where, is said there). An entry point: like
``hpo.run``, it may import ``hpo.cli``; nothing in the package imports it.
"""

from __future__ import annotations

import sys

import optuna

from hpo.cli import command_parser, run_command
from hpo.config import DEFAULT_STORAGE
from hpo.errors import UsageError
from hpo.report.summary import missing_storage_hint, print_summary, write_reports


def main(argv: list[str] | None = None) -> int:
    """``python -m hpo.report``; the exit code (``hpo.cli.run_command``)."""
    arguments = command_parser("python -m hpo.report", __doc__)
    arguments.add_argument("--storage", default=DEFAULT_STORAGE, help="study storage URL or journal file")
    arguments.add_argument(
        "--results-dir", help="where to write (default: results/<storage name>, e.g. results/bundled for "
        "studies/bundled.journal)"
    )
    arguments.add_argument("--study", default="*", help="only studies whose name matches this glob pattern")
    args = arguments.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def body() -> None:
        try:
            frame = write_reports(args.storage, args.results_dir, args.study)
        except UsageError as error:
            raise UsageError(f"{error}{missing_storage_hint(args.storage)}") from None
        print_summary(frame)

    return run_command(body, interrupted="interrupted: the previous reports are kept as they were")


if __name__ == "__main__":
    sys.exit(main())

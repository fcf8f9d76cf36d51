"""The command-line core of every entry point (``hpo.run``, ``hpo.warmup``, ``hpo.slurm``, ``hpo.report``,
``hpo.dashboard``): study flags made from ``StudyConfig``'s fields, and one mapping of errors to exit codes.

Flags. Each field of ``hpo.config.StudyConfig`` declares its help text and group (``hpo.config.setting``); the
flags, their types, choices, defaults and help are made from those declarations, so there is one place to change.
``--config FILE`` reads a TOML grid whose values the flags override; ``--space FILE`` adds a ``[space]`` table.

Exit codes (``run_command``; each error class of ``hpo.errors`` carries its own): 0 done, 2 bad input
(``UsageError``, or a flag argparse refuses: one line naming the value), 3 a storage failed (``StorageError``, or a
database error that escaped a study), 4 a local worker died before its study was complete (``WorkerError``), a
``ReportedError``'s own code (a worker already printed why), 130 Ctrl-C and 143 SIGTERM (one ``interrupted``
line). Never a traceback for any of these.

This module is the top of the package: entry points (``hpo.run``, ``hpo.report.__main__``, ...) import it, and
nothing below them does; what a long command prints lives in ``hpo.console``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import types
import typing
from dataclasses import MISSING, fields
from typing import Any, Callable

from hpo.config import GROUPS, PRUNERS, SAMPLERS, TRACKERS, StudyConfig, load_grid
from hpo.data import DATASETS
from hpo.errors import ReportedError, StorageError, UsageError, WorkerError
from hpo.parallel.interrupts import exit_code_of, handle_interrupts
from hpo.space.algorithms import ALGORITHMS, MODELS
from hpo.space.overrides import apply_spaces, read_space_file
from models.train import FOLD_STRATEGIES

Printer = Callable[[str], None]

CHOICES = {  # the allowed values of the text fields that have a fixed set
    "algo": tuple(ALGORITHMS), "dataset": tuple(DATASETS), "model": MODELS, "sampler": SAMPLERS, "pruner": PRUNERS,
    "fold_strategy": FOLD_STRATEGIES, "tracker": TRACKERS,
}
FLAG_NAMES = {"fold_strategy": "fold-strategy"}  # where a flag is not the field's name with dashes (none now)


def flag_of(name: str) -> str:
    """``--test-seeds`` for ``test_seeds``."""
    return "--" + FLAG_NAMES.get(name, name.replace("_", "-"))


def _base_type(annotation: Any) -> type:
    """``int`` for ``int``, ``str`` for ``str | None``, ``bool`` for ``bool | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def add_study_flags(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--space`` and one flag per ``StudyConfig`` field, in the config's groups. Every flag's
    default is None (not given), so a grid file's value stands unless the flag is given."""
    parser.add_argument("--config", help="TOML study grid (e.g. studies/bundled.toml); other flags override its "
                        "values")
    parser.add_argument("--space", help="TOML file holding a [space] table of search-space overrides; it overrides "
                        "the grid's [space] tables")
    hints = typing.get_type_hints(StudyConfig)
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for f in fields(StudyConfig):
        if not f.metadata.get("flag", True):
            continue
        kind = f.metadata.get("parse") or _base_type(hints[f.name])
        help_text = f.metadata["help"].format(choices=", ".join(CHOICES.get(f.name, ())))
        default = f.default if f.default is not MISSING else None
        if default is not None and kind is not bool:
            help_text += f" (default {default})"
        group = groups[f.metadata["group"]]
        if kind is bool:
            group.add_argument(flag_of(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            group.add_argument(flag_of(f.name), dest=f.name, type=kind, default=None, help=help_text,
                               metavar=f.name.upper())


def study_overrides(args: argparse.Namespace, skipped: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``StudyConfig`` fields the command line set (flags given), minus ``skipped``."""
    names = {f.name for f in fields(StudyConfig) if f.metadata.get("flag", True)}  # not --space: a file's path
    return {k: v for k, v in vars(args).items() if k in names and k not in skipped and v is not None}


def study_configs(args: argparse.Namespace, picked: tuple[str, ...] = ()) -> list[StudyConfig]:
    """The studies the flags describe: one, or a grid's (``--config``), each with its ``--space`` overrides.

    ``picked`` fields select among a grid's studies rather than set them (``--show-space --algo kp``)."""
    overrides = study_overrides(args, picked if args.config else ())
    layers = [read_space_file(args.space)] if args.space else []
    if not args.config:
        return apply_spaces([(StudyConfig(**overrides), layers)])
    configs = load_grid(args.config, overrides, layers)
    chosen = [c for c in configs if all(getattr(args, k) in (None, getattr(c, k)) for k in picked)]
    if not chosen:
        wanted = " ".join(f"{flag_of(k)} {getattr(args, k)}" for k in picked if getattr(args, k) is not None)
        raise UsageError(f"config file {args.config!r} has no study of {wanted}")
    return chosen


INTERRUPTED = "interrupted: finished trials are stored; rerun the same command to resume"


def run_command(body: Callable[[], int | None], interrupted: str = INTERRUPTED) -> int:
    """Run an entry point's ``body`` with Ctrl-C and SIGTERM handled, and map how it ended to an exit code
    (module docstring; each error class carries its own), printing one line on stderr for every failure."""
    from hpo.storage import STORAGE_FAILURES

    try:
        with handle_interrupts():
            return body() or 0
    except (UsageError, StorageError, WorkerError) as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except STORAGE_FAILURES as error:  # a database error no study caught: name it, without a password
        from hpo.storage import first_line

        print(f"error: the storage failed: {first_line(error)}", file=sys.stderr)
        return StorageError.exit_code
    except BrokenPipeError:  # the output's reader went away (``| head``): nothing more to say to it
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- so the interpreter's final flush is quiet too
        return 0
    except ReportedError as error:
        return error.exit_code
    except KeyboardInterrupt as error:
        print(interrupted, file=sys.stderr)
        return exit_code_of(error)


class Parser(argparse.ArgumentParser):
    """argparse, with bad input in one line (as every other error of the command line): the bad flag or value, the
    closest known flag for an unknown one, and where the flags are listed; exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        unknown = message.removeprefix("unrecognized arguments: ")
        if unknown != message:
            flag = unknown.split()[0]
            known = [option for option in self._option_string_actions if option.startswith("--")]
            close = difflib.get_close_matches(flag.split("=")[0], known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            message = f"unknown argument {flag}{hint} ({self.prog} --help lists them)"
        self.exit(UsageError.exit_code, f"error: {message}\n")


def command_parser(prog: str, doc: str | None) -> Parser:
    """The parser of an entry point: its description is the first paragraph of the module's docstring, whole."""
    first = (doc or "").strip().split("\n\n")[0]
    return Parser(prog=prog, description=" ".join(first.split()))

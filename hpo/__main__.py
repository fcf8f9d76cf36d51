"""One command for every entry point: ``hpo run``, ``hpo report``, ``hpo dashboard``, ``hpo slurm``, ``hpo warmup``.

    hpo run --algo fa --trials 50          # the same as: python -m hpo.run --algo fa --trials 50
    hpo report --storage studies/fashion-mnist.journal
    python -m hpo run ...                  # where the console script is not on PATH

Each subcommand is its module's ``main``, with the same flags, output and exit codes.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {  # subcommand -> the module whose main() it runs, and what it does
    "run": ("hpo.run", "run a study, or a grid of studies from a TOML file"),
    "report": ("hpo.report.__main__", "regenerate the summaries and charts of a storage"),
    "dashboard": ("hpo.dashboard", "browse the studies of a storage in optuna-dashboard"),
    "slurm": ("hpo.slurm", "write (and submit) a grid's Slurm job array"),
    "warmup": ("hpo.warmup", "compile a study's programs ahead of it, once per machine"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: hpo COMMAND [FLAGS]   (hpo COMMAND --help lists a command's flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, *rest = argv
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    sys.argv[0] = f"hpo {command}"
    return module.main(rest)


def console() -> None:
    """The ``hpo`` console script: ``main``, ended as ``python -m hpo.run`` ends (an interrupted run exits at once,
    ``hpo.parallel.interrupts.exit_now``)."""
    code = main()
    if code >= 128:
        from hpo.parallel.interrupts import exit_now

        exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    console()

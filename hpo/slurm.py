"""A study grid on a Slurm cluster: a job array whose tasks are workers of the same studies on one storage, and a
job, started once every task has ended, that finishes them (any trial still missing, the test scores, the report).

Writing the scripts needs no database (only ``--submit`` checks the storage); every value that enters a script is
refused if it holds a control character, and, in an ``#SBATCH`` line, a space.

    export HPO_STORAGE=postgresql://hpo@db.lab:5432/hpo PGPASSWORD=...
    python -m hpo.slurm --config studies/fashion-mnist.toml --array 8 --storage "$HPO_STORAGE" --submit \\
        [--partition gpu --gpus-per-task 1 --time 12:00:00 --cpus-per-task 4 --mem 16G --sbatch=--qos=long]

Writes two sbatch scripts under ``slurm/<grid>/`` (``--script-dir``) and, with ``--submit``, submits them:
``workers.sbatch`` (``#SBATCH --array=0-<N-1>``; each task runs ``python -m hpo.run --config GRID --no-finish``,
one worker, through every study of the grid in turn) and ``finish.sbatch`` (``--dependency=afterany:<array>``;
``python -m hpo.run --config GRID``, which runs whatever trials a cancelled task left and then scores and
reports). The tasks share the storage, so the studies' exact totals hold as with any workers; a task that is
cancelled (``scancel``: SIGTERM) fails and re-queues its running trial; one killed without warning leaves a trial
whose heartbeat goes stale, which another task or the finishing job fails and retries with the same parameters;
``--requeue`` lets Slurm restart a preempted task, which resumes.

The storage URL never enters the scripts (they read ``$HPO_STORAGE``, exported to the jobs by ``--submit``; keep
the password in ``PGPASSWORD`` or ``~/.pgpass``). Tasks may run on several nodes, so the storage must be a database
server; ``--local-storage`` accepts a SQLite file or journal for a cluster whose tasks all run on one host.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from hpo.cli import add_study_flags, command_parser, flag_of, run_command, study_configs, study_overrides
from hpo.config import StudyConfig
from hpo.errors import UsageError
from hpo.files import path_component, write_text
from hpo.storage import check_storage, is_server_url, redact

STORAGE_ENV = "HPO_STORAGE"  # the jobs read the storage URL from here: it is never written into a script


@dataclass(frozen=True)
class Jobs:
    """The two scripts of a grid on Slurm."""

    workers: Path  # the job array: one worker per task
    finish: Path  # after every task: missing trials, test scores, reports


def script_value(what: str, value: str, spaces: bool = True) -> str:
    """``value`` as it may enter a script: no control character (a newline would end the ``#SBATCH`` block or start
    a shell line of its own) and, where it stands in an ``#SBATCH`` line (``spaces=False``), no whitespace, which
    would split it into two options; else a UsageError naming it."""
    bad = sorted({c for c in value if unicodedata.category(c).startswith("C") or (not spaces and c.isspace())})
    if bad:
        kinds = "control characters or spaces" if not spaces else "control characters"
        raise UsageError(f"{what} must not contain {kinds} ({', '.join(repr(c) for c in bad)}), got {value!r}")
    return value


def sbatch_lines(args: argparse.Namespace, name: str, logs: Path, log_name: str) -> list[str]:
    """The ``#SBATCH`` lines of a job (resources, logs, requeue); every value checked (``script_value``)."""
    lines = [f"--job-name={name}", f"--output={script_value('--script-dir', str(logs), spaces=False)}/{log_name}",
             "--requeue", "--open-mode=append", f"--cpus-per-task={args.cpus_per_task}", "--export=ALL"]
    for option, value in (("partition", args.partition), ("time", args.time), ("mem", args.mem),
                          ("gpus-per-task", args.gpus_per_task)):
        if value is not None:
            lines.append(f"--{option}={script_value(f'--{option}', str(value), spaces=False)}")
    lines += [script_value("--sbatch", option, spaces=False) for option in args.sbatch]
    return [f"#SBATCH {line}" for line in lines]


ARRAY_LOG = "%x-%A_%a.out"  # job name, array job id, task index
JOB_LOG = "%x-%j.out"  # job name, job id (the finishing job is not an array: %a would be 4294967294)


def hpo_run_command(args: argparse.Namespace, finish: bool) -> str:
    """``python -m hpo.run`` with the grid, the study flags given here, one worker, and the storage from
    ``$HPO_STORAGE``; every word checked (``script_value``) and quoted for bash."""
    words = [sys.executable, "-m", "hpo.run"]
    if args.config:
        words += ["--config", str(Path(args.config).resolve())]
    if args.space:
        words += ["--space", str(Path(args.space).resolve())]
    for name, value in study_overrides(args, ("storage", "workers")).items():
        words += [flag_of(name), str(value).lower() if isinstance(value, bool) else str(value)]
    words += ["--workers", "1"]
    command = shlex.join(script_value("a word of the command", word) for word in words)
    command += f' --storage "${STORAGE_ENV}"'
    return command if finish else command + " --no-finish"


def script(header: list[str], summary: str, command: str) -> str:
    return "\n".join([
        "#!/bin/bash",
        f"# Written by python -m hpo.slurm: {script_value('a study name', summary)}.",
        f"# The storage URL comes from ${STORAGE_ENV} (exported to the job), never from this file.",
        *header,
        "set -euo pipefail",
        f"cd {shlex.quote(script_value('the working directory', str(Path.cwd())))}",
        f': "${{{STORAGE_ENV}:?set {STORAGE_ENV} to the study storage URL}}"',
        f"exec {command}",
        "",
    ])


def write_jobs(args: argparse.Namespace, configs: list[StudyConfig]) -> Jobs:
    # the grid file's name becomes the job's name and folder: a component of our own making, whatever it holds
    grid = path_component(Path(args.config).stem if args.config else configs[0].name)
    folder = Path(args.script_dir or Path("slurm") / grid)
    logs = (folder / "logs").resolve()
    names = ", ".join(c.name for c in configs)
    texts = {  # every value is checked before anything is written
        "workers.sbatch": script([*sbatch_lines(args, f"hpo-{grid}", logs, ARRAY_LOG),
                                  f"#SBATCH --array=0-{args.array - 1}"],
                                 f"{args.array} workers of {names}", hpo_run_command(args, finish=False)),
        "finish.sbatch": script(sbatch_lines(args, f"hpo-{grid}", logs, JOB_LOG),
                                f"finish {names} once every worker has ended (run with --dependency=afterany:<array "
                                "job>)", hpo_run_command(args, finish=True)),
    }
    logs.mkdir(parents=True, exist_ok=True)
    jobs = Jobs(folder / "workers.sbatch", folder / "finish.sbatch")
    for path in (jobs.workers, jobs.finish):
        write_text(path, texts[path.name])
        path.chmod(0o755)
    return jobs


def submit(jobs: Jobs, storage: str, sbatch: str = "sbatch") -> tuple[str, str]:
    """Submit the array, then the finishing job after it; their job ids."""
    env = {**os.environ, STORAGE_ENV: storage}

    def run(*words: str) -> str:
        try:
            done = subprocess.run([sbatch, "--parsable", *words], env=env, capture_output=True, text=True,
                                  timeout=120)
        except FileNotFoundError:
            raise UsageError(f"{sbatch!r} not found: --submit needs Slurm's sbatch on this machine's PATH") from None
        if done.returncode != 0:
            reason = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()[-1]
            raise UsageError(f"sbatch refused the job: {reason}")
        return done.stdout.strip().split(";")[0]

    array = run(str(jobs.workers))
    finish = run(f"--dependency=afterany:{array}", str(jobs.finish))
    return array, finish


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("python -m hpo.slurm", __doc__)
    parser.add_argument("--array", type=int, required=True, help="tasks of the job array: workers of the studies")
    parser.add_argument("--submit", action="store_true", help="submit both jobs with sbatch (else write them)")
    parser.add_argument("--script-dir", help="where the scripts and the jobs' logs go (default slurm/<grid>)")
    parser.add_argument("--local-storage", action="store_true",
                        help="accept a SQLite file or journal: every task must then run on this host")
    slurm = parser.add_argument_group("resources of every task")
    slurm.add_argument("--cpus-per-task", type=int, default=2, help="CPU cores per task (default 2)")
    slurm.add_argument("--gpus-per-task", type=int, help="GPUs per task (each worker sees its own)")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--time", help="time limit per task, e.g. 12:00:00")
    slurm.add_argument("--mem", help="memory per node, e.g. 16G")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                       help="any other sbatch option, as --sbatch=--qos=long (repeatable)")
    add_study_flags(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> None:
        if args.array < 1:
            raise UsageError(f"--array must be at least 1, got {args.array}")
        if args.cpus_per_task < 1 or (args.gpus_per_task is not None and args.gpus_per_task < 1):
            raise UsageError("--cpus-per-task and --gpus-per-task must be at least 1")
        configs = study_configs(args)
        storage = args.storage or os.environ.get(STORAGE_ENV) or ""
        if not storage:
            raise UsageError(f"give --storage URL (or set {STORAGE_ENV}): the tasks must share a storage")
        if not is_server_url(storage) and not args.local_storage:
            raise UsageError(
                f"storage {redact(storage)!r} is a file, but a job array's tasks may run on several nodes: give a "
                "database server URL (postgresql://...), or --local-storage if every task runs on this host"
            )
        if args.submit:  # writing the scripts needs no database: it may not be reachable from here
            check_storage(storage)
        jobs = write_jobs(args, configs)
        print(f"wrote {jobs.workers} ({args.array} workers) and {jobs.finish} (test scores and report, after them)")
        if args.submit:
            array, finish = submit(jobs, storage)
            print(f"submitted job array {array} ({args.array} tasks) and job {finish} after it, on "
                  f"{redact(storage)}; watch with: squeue -j {array},{finish}")
        else:
            print(f"submit with: {STORAGE_ENV}=URL sbatch {jobs.workers}, then "
                  f"sbatch --dependency=afterany:<its job id> {jobs.finish}")

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())

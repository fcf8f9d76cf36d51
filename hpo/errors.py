"""The exceptions that the command line turns into a single clear line and a non-zero exit code: each class carries
its code (``exit_code``), which ``hpo.cli.run_command`` and a worker process exit with."""


class UsageError(Exception):
    """Bad input from the user: the message names the bad value and what is allowed. Exit code 2."""

    exit_code = 2


class StorageError(Exception):
    """The study storage failed while a study ran (database lost or frozen, disk full): exit code 3.

    The message names the storage (password hidden) and says what happened; finished trials are stored and
    the running trial is left as it was, for the recovery of ``hpo.parallel.workers``.
    """

    exit_code = 3


class WorkerError(Exception):
    """A local worker process died before its study was complete (killed, out of memory, a crash): exit code 4.

    Its running trial is recovered (failed and retried with the same parameters) when the study runs again.
    """

    exit_code = 4


class ReportedError(Exception):
    """A failure already reported in one line (by a worker process): exit with ``exit_code``, print nothing more."""

    def __init__(self, exit_code: int):
        super().__init__(f"exit code {exit_code}")
        self.exit_code = exit_code

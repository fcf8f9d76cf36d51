"""Optuna's journal file, made whole after a crash, and checked to be a journal before anything touches it."""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file

from hpo.errors import StorageError, UsageError
from hpo.parallel import interrupts

SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")  # a new path named so is surely meant as SQLite, not a journal
JOURNAL_PROBE = 1 << 16  # bytes read to recognise a journal: its first record, far shorter
RECORD_START = b'{"op_code":'  # how every record Optuna's journal writes begins


def check_journal(path: Path) -> None:
    """Refuse a path that is not a journal before anything reads, appends to or repairs it: one line naming what
    it is instead and what to give, the file left byte for byte as it was. A new path or an empty file is a new
    journal; a file whose first line is a journal record (or the unfinished first record of a crashed writer)
    is one."""
    if path.is_dir():
        raise UsageError(f"journal storage {str(path)!r} is a directory; give a file path")
    if not path.exists():
        if path.suffix.lower() in SQLITE_SUFFIXES:
            raise UsageError(
                f"storage {str(path)!r} is not a URL, so it would be a new journal file, but its name says SQLite; "
                f"for a SQLite database write sqlite:///{path}"
            )
        return
    try:
        with open(path, "rb") as handle:
            head = handle.read(JOURNAL_PROBE)
    except OSError as error:
        raise UsageError(f"cannot read storage {str(path)!r}: {error.strerror or error}") from None
    if not head:
        return
    if head.startswith(SQLITE_MAGIC):
        raise UsageError(
            f"storage {str(path)!r} is a SQLite database, which a plain path would read as a journal file; "
            f"write sqlite:///{path}"
        )
    first, newline, _ = head.partition(b"\n")
    if not (newline and _is_record(first)) and not (not newline and first.startswith(RECORD_START)):
        raise UsageError(
            f"storage {str(path)!r} is not an Optuna journal (its first line is not a journal record) and is left as "
            "it is; give a journal file, a new path, sqlite:///FILE or a postgresql:// URL"
        )


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:  # json.JSONDecodeError and UnicodeDecodeError both are
        return False
    return isinstance(record, dict) and "op_code" in record


class WholeJournalStorage(JournalStorage):
    """Optuna's journal storage, whose every append and every replay of the file runs whole: an interrupt
    (``hpo.parallel.interrupts``) that arrives inside one is raised when it ends.

    Optuna's replay counts a record as read before applying it: an interrupt raised between the two left the
    record out of this process's view for good (a trial another worker created, and every trial number after
    it, shifted), and the interrupted worker's re-queue then wrote to the wrong trials. Each is a few
    milliseconds, so holding a signal for its length costs nothing."""

    def _write_log(self, op_code: int, extra_fields: dict[str, Any]) -> None:
        with interrupts.deferred():
            super()._write_log(op_code, extra_fields)

    def _sync_with_backend(self) -> None:
        with interrupts.deferred():
            super()._sync_with_backend()


def open_journal(path: Path, repair: bool) -> BaseStorage:
    check_journal(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = RepairingJournalBackend(str(path))
    if repair:  # a writer: make the file whole now, so the first append of this process lands on a clean line
        backend.repair()
    try:
        return WholeJournalStorage(backend)
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        raise UsageError(
            f"journal {str(path)!r} has a damaged record inside ({type(error).__name__}: {error}); restore it from a "
            "copy, or delete the damaged line (a crashed writer of an older version may have left one)"
        ) from None


TORN_SUFFIX = ".torn"  # copies of the unfinished last records cut off a journal: <journal>.torn-<time>-<pid>


class RepairingJournalBackend(JournalFileBackend):
    """Optuna's journal file, made whole again after a writer died in the middle of an append.

    A worker that dies while appending (SIGKILL, power loss, a full disk) leaves an unfinished last line.
    Optuna skips such a line when reading, but its next append would be glued onto it and turn it into a
    damaged line in the middle of the file, which then fails to load everywhere. So, under the journal's own
    lock (the one every append holds, so no live writer is mid-append), each append first cuts the file back to
    its last complete line, keeping what it cut in a ``.torn-*`` file beside it and saying so in one line.
    """

    def repair(self) -> str | None:
        with get_lock_file(self._lock):
            return self._cut_torn_tail()

    def append_logs(self, logs: list[dict]) -> None:
        try:
            with get_lock_file(self._lock):
                self._cut_torn_tail()
                text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
                with open(self._file_path, "ab") as f:  # as JournalFileBackend.append_logs
                    f.write(text.encode("utf-8"))
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as error:  # a full disk, a lost network filesystem: one line, not a traceback
            raise StorageError(f"cannot append to the journal: {error.strerror or error}") from None

    def read_logs(self, log_number_from: int):
        try:
            yield from super().read_logs(log_number_from)
        except OSError as error:
            raise StorageError(f"cannot read the journal: {error.strerror or error}") from None

    def _cut_torn_tail(self) -> str | None:
        """Cut an unfinished last line (call with the lock held); return the line said about it, or None."""
        path = Path(self._file_path)
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return None
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return None
            keep = _after_last_newline(f, size)
            f.seek(keep)
            torn = f.read()
            name = f"{path.name}{TORN_SUFFIX}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            copy, saved = _new_file(path.with_name(name))
            with saved:
                saved.write(torn)
                saved.flush()
                os.fsync(saved.fileno())
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        # The log-number cache of the base class points into the old tail; an offset past the cut is stale.
        self._log_number_offset = {n: o for n, o in self._log_number_offset.items() if o <= keep}
        message = (
            f"journal {str(path)!r}: cut off {len(torn)} bytes of an unfinished last record (a writer died while "
            f"appending it); they are kept in {str(copy)!r}"
        )
        print(message, file=sys.stderr, flush=True)
        return message


def _new_file(path: Path):
    """``path``, or ``path-2``, ``path-3``, ... whichever does not exist yet, created and open for writing: two cuts in
    one second by one process must not collide (the second would fail and lose the storage mid-study)."""
    candidate = path
    for n in itertools.count(2):
        try:
            return candidate, open(candidate, "xb")
        except FileExistsError:
            candidate = path.with_name(f"{path.name}-{n}")
    raise AssertionError("itertools.count never ends")


def _after_last_newline(f, size: int, block: int = 1 << 16) -> int:
    """Offset just after the last b"\\n" of the open file ``f`` of ``size`` bytes (0 if it has none)."""
    end = size
    while end > 0:
        start = max(0, end - block)
        f.seek(start)
        chunk = f.read(end - start)
        found = chunk.rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0

"""What the program store trusts on disk: only what this user wrote there, checked before it is read.

A stored program is a serialised XLA executable: loading one runs its code, so a store must be trusted like the
code itself (JAX's own ``deserialize_and_load`` says as much). The store therefore trusts nothing it cannot tell
apart from its own writes:

* the store's folder is created ``0700`` and must be owned by this user and writable by nobody else; otherwise it is
  not used at all (one warning line; programs are compiled and kept in memory, as with ``--cache-dir none``);
* every file is written ``0600`` through a temporary file (removed again when the write fails) and renamed, and is
  read only if it is a regular file (not a link) owned by this user and writable by nobody else;
* every program entry is sealed with an HMAC-SHA256 under a per-user secret key (``.key``, 32 random bytes,
  ``0600``, created with the folder) over its name and its bytes, and the seal is checked before anything is
  unpickled or deserialised. A planted file, a file from another user's store or a flipped bit fails the check:
  the entry is a miss, compiled again and rewritten, never a crash.

Sharing a store between users is therefore not possible by design: each user's store has its own key, and a
folder others can write to is refused. Users who want programs compiled once per machine each run
``python -m hpo.warmup`` into their own store.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import sys
import threading
from pathlib import Path

KEY_FILE = ".key"
KEY_BYTES = 32
MAGIC = b"HPO-PROGRAM-1\n"  # the start of every sealed entry (a file without it is not one of ours)
SEAL_BYTES = hashlib.sha256().digest_size


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _safe(info: os.stat_result) -> bool:
    """Owned by this user, writable by nobody else."""
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def read_private(path: Path) -> bytes | None:
    """The content of ``path`` if it is a regular file (not a link) that only this user can have written, else
    None (absent, or not to be trusted)."""
    try:  # O_NONBLOCK: a FIFO planted where a file should be is never waited on
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode) or not _safe(info):  # a folder, a FIFO, another user's file
            return None
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            return handle.read()
    except OSError:
        return None
    finally:
        os.close(descriptor)


def _temporary(path: Path, data: bytes) -> Path:
    """``data`` in a new file (mode 0600) beside ``path``, to be renamed or linked into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_private(path: Path, data: bytes) -> bool:
    """Write ``path`` (mode 0600) through a temporary file beside it and a rename; False (and no temporary file
    left behind) when the write fails, for example on a full disk."""
    try:
        tmp = _temporary(path, data)
    except OSError:
        return False
    try:
        os.replace(tmp, path)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False


def create_private_once(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600) holding ``data`` unless it exists: written to a temporary file, then linked into
    place, which fails if another process created it first; so every process that opens a new store at once ends
    up reading the same key (a rename would let the last writer replace the key others already hold)."""
    try:
        tmp = _temporary(path, data)
    except OSError:
        return  # a full disk: the key is missing, which open_store says
    try:
        os.link(tmp, path)
    except OSError:
        pass  # another process's key is in place
    finally:
        tmp.unlink(missing_ok=True)


def open_store(directory: Path) -> bytes | None:
    """Make ``directory`` a private store (created ``0700``) and return its secret key, or None (after one warning
    line) when the folder cannot be trusted or used: owned by another user, writable by others, not a folder, or
    a key file that is not this user's alone."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.stat(directory, follow_symlinks=False)
    except OSError as error:
        _warn(f"program store {directory} cannot be used ({error.strerror or error}); programs are compiled and "
              "kept in memory")
        return None
    if not stat.S_ISDIR(info.st_mode) or not _safe(info):
        _warn(f"program store {directory} is not this user's alone (owner uid {info.st_uid}, mode "
              f"{stat.S_IMODE(info.st_mode):o}): not used, programs are compiled and kept in memory; a store must "
              "be a folder only its user can write to (docs: Security)")
        return None
    key_path = directory / KEY_FILE
    if not os.path.lexists(key_path):
        create_private_once(key_path, secrets.token_bytes(KEY_BYTES))
    key = read_private(key_path)
    if key is not None:
        mode = stat.S_IMODE(os.stat(key_path, follow_symlinks=False).st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            key = None
    if key is None or len(key) != KEY_BYTES:
        _warn(f"program store {directory}: its key {key_path} is missing, unreadable or not this user's alone: not "
              "used, programs are compiled and kept in memory; delete the folder to start a new store")
        return None
    return key


def seal(key: bytes, name: str, payload: bytes) -> bytes:
    """``payload`` as a stored entry: ``MAGIC``, the HMAC of its name and bytes, the bytes."""
    return MAGIC + hmac.new(key, name.encode() + b"\0" + payload, hashlib.sha256).digest() + payload


def unseal(key: bytes, name: str, data: bytes) -> bytes | None:
    """The payload of a stored entry if its seal is this key's over this name and these bytes, else None."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + SEAL_BYTES:
        return None
    seal_, payload = data[len(MAGIC):len(MAGIC) + SEAL_BYTES], data[len(MAGIC) + SEAL_BYTES:]
    expected = hmac.new(key, name.encode() + b"\0" + payload, hashlib.sha256).digest()
    return payload if hmac.compare_digest(seal_, expected) else None

"""IDX files, the format of MNIST and Fashion-MNIST, read with NumPy: gzipped (as distributed) or not.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one big-endian
32-bit size per dimension, then the values in C order. MNIST's images are ``0x00000803`` (unsigned bytes, 3
dimensions: 2051), its labels ``0x00000801`` (2049). The header is checked against the data's length, so a
truncated or padded file is an error naming it, never a silently shorter dataset; gzip's own CRC and length catch
a damaged ``.gz``. Whether a file is gzipped is read from its first bytes, not from its name. Only regular files are
opened, and no more is read or allocated than the header announces and the machine's memory allows (``read_idx``).
"""

from __future__ import annotations

import gzip
import math
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np

from hpo.errors import UsageError
from hpo.files import file_kind
from models.machine import gib, memory_budget

UNSIGNED_BYTE = 0x08  # the only IDX type MNIST-style files use
MAGIC = {"images": 0x0803, "labels": 0x0801}  # unsigned bytes with 3 and 1 dimensions: 2051 and 2049
GZIP_MAGIC = b"\x1f\x8b"


MEMORY_FACTOR = 5  # bytes of memory per image byte once loaded: the uint8 array and its float32 standardised copy


def open_regular(path: Path):
    """``path`` opened for reading in binary, if it is a regular file (a FIFO would block, ``/dev/zero`` never
    ends: refused, as is anything else that is not a file), else a UsageError naming it."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise UsageError(f"{path} is not a regular file (it is a {file_kind(mode)}); replace it with the data file")
        return open(path, "rb")  # noqa: SIM115 -- the caller closes it
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None


def read_idx(path: Path, kind: str, budget: int | None = None) -> np.ndarray:
    """One IDX file (gzipped or not) as a read-only uint8 array: ``(n, rows, columns)`` images or ``(n,)`` labels.

    Read by its header: the size it announces is checked against the memory this process may allocate (``budget``,
    default ``models.machine.memory_budget``; an image byte takes ``MEMORY_FACTOR`` once loaded) before anything is
    allocated, then exactly that many bytes are read and the file must end there. So a gzip bomb, a header that
    announces gigabytes or a file longer than its header says is one line naming the file, never a MemoryError."""
    with open_regular(path) as raw:
        gzipped = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        handle = gzip.GzipFile(fileobj=raw) if gzipped else raw
        try:
            return _read_idx(handle, kind, path, memory_budget() if budget is None else budget)
        except (OSError, EOFError, zlib.error) as error:
            raise UsageError(f"{path} is truncated or corrupt ({error}); replace it") from None


def _read_idx(handle, kind: str, path: Path, budget: int | None) -> np.ndarray:
    ndim = MAGIC[kind] & 0xFF
    header = handle.read(4 + 4 * ndim)
    magic = int.from_bytes(header[:4], "big") if len(header) >= 4 else None
    if len(header) < 4 + 4 * ndim or magic != MAGIC[kind]:
        raise UsageError(f"{path} is not an IDX {kind} file (magic number {magic}, expected {MAGIC[kind]}); replace it")
    shape = struct.unpack(f">{ndim}I", header[4:])
    size = math.prod(shape)
    if budget is not None and size * MEMORY_FACTOR > budget:
        raise UsageError(
            f"{path} announces {kind} of shape {shape} ({gib(size)}), which needs about {gib(size * MEMORY_FACTOR)} "
            f"once loaded; this process may allocate {gib(budget)}; replace it, or run where memory allows it"
        )
    data = np.empty(size, np.uint8)
    view, done = memoryview(data.data), 0
    while done < size:
        got = handle.readinto(view[done:done + CHUNK])
        if not got:
            break
        done += got
    if done < size or handle.read(1):
        held = f"{len(header) + done} bytes" if done < size else "more bytes than that"
        raise UsageError(
            f"{path} is truncated or corrupt: its header announces {kind} of shape {shape} "
            f"({len(header) + size} bytes), the file holds {held}; replace it"
        )
    data.flags.writeable = False
    return data.reshape(shape)


CHUNK = 1 << 24  # bytes read at a time

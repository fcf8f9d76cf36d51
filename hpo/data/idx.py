"""IDX files, the format of MNIST and Fashion-MNIST, read with NumPy: gzipped (as distributed) or not.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one big-endian
32-bit size per dimension, then the values in C order. MNIST's images are ``0x00000803`` (unsigned bytes, 3
dimensions: 2051), its labels ``0x00000801`` (2049). The header is checked against the data's length, so a
truncated or padded file is an error naming it, never a silently shorter dataset; gzip's own CRC and length catch
a damaged ``.gz``. Whether a file is gzipped is read from its first bytes, not from its name.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from hpo.errors import UsageError

UNSIGNED_BYTE = 0x08  # the only IDX type MNIST-style files use
MAGIC = {"images": 0x0803, "labels": 0x0801}  # unsigned bytes with 3 and 1 dimensions: 2051 and 2049
GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzipped (a damaged ``.gz`` is a UsageError naming it)."""
    try:
        with open(path, "rb") as handle:
            content = handle.read()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None
    if not content.startswith(GZIP_MAGIC):
        return content
    try:
        return gzip.decompress(content)
    except (OSError, EOFError, zlib.error) as error:
        raise UsageError(f"{path} is truncated or corrupt ({error}); replace it") from None


def parse_idx(content: bytes, kind: str, path: Path) -> np.ndarray:
    """The array of an IDX file's ``content``; ``kind`` is "images" or "labels"; ``path`` names it in errors."""
    ndim = MAGIC[kind] & 0xFF
    header_size = 4 + 4 * ndim
    magic = int.from_bytes(content[:4], "big") if len(content) >= 4 else None
    if len(content) < header_size or magic != MAGIC[kind]:
        raise UsageError(f"{path} is not an IDX {kind} file (magic number {magic}, expected {MAGIC[kind]}); replace it")
    shape = struct.unpack(f">{ndim}I", content[4:header_size])
    expected = header_size + math.prod(shape)
    if len(content) != expected:
        raise UsageError(
            f"{path} is truncated or corrupt: its header announces {kind} of shape {shape} ({expected} bytes), "
            f"the file holds {len(content)} bytes; replace it"
        )
    return np.frombuffer(content, np.uint8, offset=header_size).reshape(shape)


def read_idx(path: Path, kind: str) -> np.ndarray:
    """One IDX file (gzipped or not) as a read-only uint8 array: ``(n, rows, columns)`` images or ``(n,)`` labels."""
    return parse_idx(read_bytes(path), kind, path)

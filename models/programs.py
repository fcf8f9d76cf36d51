"""A bounded, least-recently-used cache of compiled programs, shared by the trainers.

Trials with the same shapes reuse compiled programs for the life of the process. The cache must be bounded:
every XLA:CPU executable keeps hundreds of memory mappings alive, and a worker that compiled a few hundred
programs hits the kernel's ``vm.max_map_count`` (65530 by default) and dies with "LLVM compilation error:
Cannot allocate memory". Evicted programs are freed; recompiling one is cheap with JAX's persistent cache.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable

MAX_PROGRAMS = 24  # compiled program sets kept per process (each set: one epoch program and its helpers)


class ProgramCache:
    """``get(key, build)`` returns ``(programs, seconds spent building)``; 0.0 seconds on a hit."""

    def __init__(self, max_entries: int = MAX_PROGRAMS):
        self.max_entries = max_entries
        self._entries: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, build: Callable[[], Any]) -> tuple[Any, float]:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key], 0.0
        start = time.perf_counter()
        value = build()
        seconds = time.perf_counter() - start
        self._entries[key] = value
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value, seconds

    def __len__(self) -> int:
        return len(self._entries)

"""Compiled programs, kept so that no process traces or compiles the same program twice.

Two layers, one ``get``:

* in memory, a bounded least-recently-used cache: trials with the same program key reuse compiled programs for
  the life of the process. It must be bounded: every XLA:CPU executable keeps hundreds of memory mappings alive,
  and a worker that compiled a few hundred programs hits the kernel's ``vm.max_map_count`` (65530 by default)
  and dies with "LLVM compilation error: Cannot allocate memory". Evicted programs are freed.
* on disk (when a directory is set, ``hpo`` does): the serialised executables, keyed by the program key and a
  fingerprint of everything else that shapes the program (JAX, jaxlib, Flax and Optax versions, backend and
  devices, the CPU model and its flags, ``XLA_FLAGS``, and the source of ``models/``). A later process, or
  ``python -m hpo.warmup`` ahead of a study, then loads a program in milliseconds: no tracing, no lowering,
  no compilation (JAX's own persistent cache still has to trace and lower before it can look a program up).
  The folder is private to its user and every entry is sealed under the user's key and checked before it is
  loaded (``models.compile.trust``): the store runs nothing it did not write itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from models.compile.trust import open_store, read_private, seal, unseal, write_private

MAX_PROGRAMS = 24  # compiled program sets kept per process (each set: one epoch program and its helpers)


def _versions() -> list[str]:
    import flax
    import jax
    import jaxlib
    import optax

    return [jax.__version__, jaxlib.__version__, flax.__version__, optax.__version__]


def _cpu() -> str:
    """The CPU model and its feature flags (an executable built for AVX-512 must not run where there is none)."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        import platform

        return platform.processor()
    wanted = [line for line in info if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(wanted))


def _sources() -> str:
    """A digest of the ``models`` package's source: any change to the science invalidates every stored program."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


_FINGERPRINT: str | None = None


def fingerprint() -> str:
    """Everything besides the program key that decides what a compiled program is."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        import jax

        devices = sorted({f"{d.platform}:{d.device_kind}" for d in jax.devices()})
        parts = [*_versions(), jax.default_backend(), *devices, _cpu(), os.environ.get("XLA_FLAGS", ""), _sources()]
        _FINGERPRINT = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return _FINGERPRINT


def _serialise(value: tuple) -> bytes:
    """A NamedTuple of compiled JAX executables as bytes."""
    from jax.experimental import serialize_executable

    return pickle.dumps((type(value), [serialize_executable.serialize(program) for program in value]))


def _deserialise(data: bytes) -> tuple:
    from jax.experimental import serialize_executable

    kind, programs = pickle.loads(data)
    return kind(*(serialize_executable.deserialize_and_load(*program) for program in programs))


class ProgramStore:
    """``get(key, build)`` returns ``(programs, seconds spent building, loading or waiting for them)``; 0.0 on a
    memory hit.

    ``key`` must be hashable and its ``repr`` stable across processes (it names the file on disk). Values are
    NamedTuples of compiled executables (``jax.stages.Compiled``). Safe to use from several threads: a key being
    built by one thread is waited for, not built again.
    """

    def __init__(self, max_entries: int = MAX_PROGRAMS, directory: str | Path | None = None):
        self.max_entries = max_entries
        self.directory = None if directory is None else Path(directory).expanduser()
        self._key: bytes | None = None  # the store's secret (models.compile.trust), read at first use
        self._rejected: set[str] = set()  # entries that failed their check (said once each)
        self._entries: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[Any, threading.Event] = {}
        self.loaded_from_disk = 0  # programs this process loaded instead of compiling
        self.built = 0  # programs this process compiled
        self._decisions: dict[str, dict] = {}  # name -> decision, this process's (see ``decide``)
        self._training: dict[str, tuple] = {}  # name -> (seconds trained, compile seconds, epochs): ``add_training``
        self._deciding: dict[str, threading.Event] = {}

    def _disk(self) -> bytes | None:
        """The store's key once its folder is known to be this user's alone (``open_store``); None, and the store
        kept in memory from then on, where there is no folder or it cannot be trusted."""
        if self.directory is not None and self._key is None:
            self._key = open_store(self.directory)
            if self._key is None:
                self.directory = None
        return self._key

    def _place(self) -> tuple[Path, bytes] | None:
        """The store's folder and key, or None where programs are kept in memory only (``_disk``)."""
        key = self._disk()
        return None if key is None or self.directory is None else (self.directory, key)

    def _path(self, key: Any) -> Path | None:
        place = self._place()
        if place is None:
            return None
        name = hashlib.sha256(f"{fingerprint()}\0{key!r}".encode()).hexdigest()
        return place[0] / f"{name}.programs"

    def __contains__(self, key: Any) -> bool:
        """Whether ``key``'s programs are in memory, on disk or being built now (by another thread: ``get`` waits
        for them rather than building them again)."""
        with self._lock:
            if key in self._entries or key in self._building:
                return True
        path = self._path(key)
        return path is not None and path.is_file()

    def get(self, key: Any, build: Callable[[], Any]) -> tuple[Any, float]:
        asked, waited = time.perf_counter(), False
        while True:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    # built by another thread while this one waited: seconds the caller spent on compiling all the same
                    return self._entries[key], time.perf_counter() - asked if waited else 0.0
                pending = self._building.get(key)
                if pending is None:
                    self._building[key] = threading.Event()
                    break
            pending.wait()  # another thread builds it; then it is in memory (or its build failed: try again)
            waited = True
        try:
            value = self._load(key)
            if value is None:
                value = build()
                self.built += 1
                self._store(key, value)
            else:
                self.loaded_from_disk += 1
            seconds = time.perf_counter() - asked
            with self._lock:
                self._entries[key] = value
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            return value, seconds
        finally:
            with self._lock:
                self._building.pop(key).set()

    def _load(self, key: Any) -> Any | None:
        """The entry's programs if its file is this user's and its seal checks, else None (then compiled again)."""
        path, place = self._path(key), self._place()
        if path is None or place is None or not path.exists():
            return None
        payload = unseal(place[1], path.name, read_private(path) or b"")
        if payload is None:
            if path.name not in self._rejected:
                self._rejected.add(path.name)
                print(f"warning: program store entry {path} failed its check (damaged, or not written by this "
                      "store): compiling it again", file=sys.stderr, flush=True)
            return None
        try:
            return _deserialise(payload)
        except Exception:  # noqa: BLE001 -- sealed by us but not loadable (another jaxlib build): compiled again
            return None

    def _store(self, key: Any, value: Any) -> None:
        path, place = self._path(key), self._place()
        if path is None or place is None:
            return
        try:
            data = _serialise(value)
        except Exception:  # noqa: BLE001 -- a program that cannot be serialised is kept in memory only
            return
        write_private(path, seal(place[1], path.name, data))  # a failed write only costs a later recompile

    def __len__(self) -> int:
        return len(self._entries)

    # Decisions made by measurement (``models.train.decide_fold_strategy``): one JSON file beside the programs

    DECISIONS_FILE = "decisions.json"

    def _decision_name(self, key: Any) -> str:
        return hashlib.sha256(f"{fingerprint()}\0{key!r}".encode()).hexdigest()

    def _stored_decisions(self) -> dict[str, dict]:
        """The stored decisions that are well formed; a damaged file or value is measured again, never a crash."""
        stored = self._read_json(self.DECISIONS_FILE)
        return {name: value for name, value in stored.items() if _valid_decision(value)}

    def decide(self, key: Any, measure: Callable[[], dict]) -> tuple[dict, bool]:
        """The decision stored for ``key`` on this machine (``fingerprint``), or ``measure()``'s, then stored.

        A decision is a JSON-able dict. Returns it and whether it was measured now. With a directory, decisions
        live in ``<directory>/decisions.json`` (rewritten by atomic replace, merged with what other processes
        wrote; two processes measuring at once at worst both measure); without one, in this process only. A key
        being measured by one thread is waited for, not measured twice.
        """
        name = self._decision_name(key)
        while True:
            with self._lock:
                known = self._known(name)
                if known is not None:
                    return known, False
                pending = self._deciding.get(name)
                if pending is None:
                    self._deciding[name] = threading.Event()
                    break
            pending.wait()
        try:
            decision = measure()
            with self._lock:
                self._decisions[name] = decision
                self._store_decision(name, decision)
            return decision, True
        finally:
            with self._lock:
                self._deciding.pop(name).set()

    def wait_for_measurements(self) -> None:
        """Return once no decision is being measured in this process: a compilation started beside timed epochs
        would slow them, and the decision with them (``precompile`` waits here before compiling)."""
        while True:
            with self._lock:
                pending = list(self._deciding.values())
            if not pending:
                return
            for event in pending:
                event.wait()

    # What a decision not made yet would be worth: the seconds programs of its kind trained, and what compiling
    # one cost, counted by every process with this store (``<directory>/training.json``, merged as decisions are)
    # so that many short studies on a machine decide too; without a directory, by this process.

    TRAINING_FILE = "training.json"

    def add_training(self, key: Any, seconds: float, compile_seconds: float | None, epochs: int) -> None:
        """Programs of decision ``key``'s kind trained ``epochs`` more epochs in ``seconds``; ``compile_seconds``: the
        mean seconds of this process's compilations of the family, if it compiled any."""
        name = self._decision_name(key)

        def add(counts: dict) -> dict:
            trained, cost, done = counts.get(name, (0.0, None, 0))
            counts[name] = (trained + seconds, cost if compile_seconds is None else compile_seconds, done + epochs)
            return counts

        with self._lock:
            add(self._training)
            if self._disk() is not None:
                self._write_json(self.TRAINING_FILE, add(self._stored_training()))

    def training(self, key: Any) -> tuple[float, float | None, int]:
        """``(seconds programs of decision key's kind trained, the compile seconds last recorded with them, the
        epochs they trained)``: this machine's (every process with the store) where the store has a count, else
        this process's."""
        name = self._decision_name(key)
        with self._lock:
            mine = self._training.get(name, (0.0, None, 0))
            stored = self._stored_training().get(name)
            return mine if stored is None or stored[0] < mine[0] else stored

    def _stored_training(self) -> dict[str, tuple[float, float | None, int]]:
        """The stored counts that are well formed (``[seconds, compile seconds or null, epochs]``); others (and an
        earlier version's pairs, which lack the epochs) count again."""
        counts = {}
        for name, value in self._read_json(self.TRAINING_FILE).items():
            if (isinstance(value, list) and len(value) == 3 and _number(value[0]) and (value[1] is None or _number(value[1]))
                    and _number(value[2]) and float(value[2]).is_integer()):
                counts[name] = (float(value[0]), None if value[1] is None else float(value[1]), int(value[2]))
        return counts

    def _read_json(self, file_name: str) -> dict[str, Any]:
        """A JSON object file of the store, or {} when there is none or it is damaged or not to be trusted."""
        place = self._place()
        if place is None:
            return {}
        try:
            stored = json.loads(read_private(place[0] / file_name) or b"{}")
        except ValueError:
            return {}
        return stored if isinstance(stored, dict) else {}

    def known_decision(self, key: Any) -> dict | None:
        """The decision for ``key`` made or stored already, or None; never measures."""
        with self._lock:
            return self._known(self._decision_name(key))

    def _known(self, name: str) -> dict | None:
        """This process's decision ``name``, or the stored one, then kept in memory (the caller holds the lock)."""
        if name not in self._decisions:
            stored = self._stored_decisions().get(name)
            if stored is None:
                return None
            self._decisions[name] = stored
        return self._decisions[name]

    def decisions(self) -> dict[str, dict]:
        """The decisions this process made or read, by name."""
        with self._lock:
            return dict(self._decisions)

    def _store_decision(self, name: str, decision: dict) -> None:
        if self._disk() is not None:
            self._write_json(self.DECISIONS_FILE, {**self._stored_decisions(), name: decision})

    def _write_json(self, file_name: str, value: dict) -> None:
        """``value`` as ``<directory>/<file_name>``, by atomic replace (read, merged and written by the caller); a
        failed write only costs a later measurement."""
        place = self._place()
        if place is not None:
            write_private(place[0] / file_name, json.dumps(value, indent=1, sort_keys=True).encode())


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _valid_decision(value: Any) -> bool:
    """A stored fold-strategy decision has what ``models.compile.compiler`` reads of it."""
    return (isinstance(value, dict) and value.get("strategy") in ("vmap", "sequential")
            and _number(value.get("measure_seconds")))

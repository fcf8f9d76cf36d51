"""Narrower and shallower networks trained inside a larger network's compiled program, when that costs less than
compiling.

A search space of widths and depths compiles one program per width, depth and batch size: on a 2-core CPU one
program of the MLP space takes 3-5 s to trace and compile, about what a trial takes to train, so a cold study
spends more time compiling than training. A network whose hidden layers are narrower than an already
compiled program's, or fewer, can train *in* that program exactly: its state is zero-padded to the wider shapes
and placed in the larger tree (``pad_state``; the host's extra layers all zeros, their switches off), and the
padding stays zero, contributing nothing (``ModelFamily.hosting`` says when a family guarantees that: for rule
networks, activations with f(0) = 0, rules whose feedback is zero where the kernel is, and extra layers that keep
their width so they can pass their input on). What it costs is the padded units' and switched-off layers'
arithmetic, every epoch, which is nearly nothing on a GPU and not on a CPU. So whether to pad is decided by
measurement, as a study goes (``ProgramSharing``):

* the cost of compiling is the mean seconds this process took to compile a program of the family;
* the cost of padding is the host program's measured epoch seconds times the share of its parameters that
  are padding (``1 - n_native / n_host``: what the narrower program would save if its time were proportional
  to its arithmetic, an over-estimate on a CPU, where small programs use the machine less well, so the rule
  errs towards compiling);
* the rule is the ski-rental one: pad while the padding paid so far for this network shape, plus the
  predicted padding of this trial, stays within one compilation; then compile the shape's own program,
  which later trials use. A shape never costs more than about twice the cheaper of the two choices, and a
  shape met once costs at most one compilation's worth of padding.

A program whose own shape exists (compiled in this process or stored on disk) is always used as it is.
"""

from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass, field
from typing import Any, Hashable

import jax
import numpy as np


@dataclass
class HostRecord:
    """A program that trained in this process: what narrower shapes would need to know to train in it."""

    spec: Hashable  # its family's program spec
    template: Any  # one run's state as ``jax.ShapeDtypeStruct`` leaves: the shapes a hosted state is padded to
    n_params: int  # trained parameters of one run's network at these shapes
    epoch_seconds: list[float] = field(default_factory=list)  # measured, every epoch it trained


@dataclass(frozen=True)
class Placement:
    """Where a network trains: in the program of ``host`` with its state padded to ``template``."""

    host: Hashable
    template: Any
    padding_share: float  # share of the host program's parameters that are padding for this network
    description: str  # the family's words for it ("hidden (64, 64) in a (128, 128) program")


class ProgramSharing:
    """This process's programs that can host narrower shapes, their measured costs, and the decision.

    ``context`` keys everything that must be equal for two specs' programs to be interchangeable apart from the
    spec itself (family, plan, number of runs, batch and data shapes). Safe to use from several threads (the
    compile-ahead thread records its compilations).
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._lock = threading.Lock()
        self._hosts: dict[Hashable, dict[Hashable, HostRecord]] = {}
        self._compile_seconds: dict[str, list[float]] = {}
        self._paid: dict[tuple[Hashable, Hashable], float] = {}  # (context, native spec) -> padding seconds

    def record_compile(self, family_name: str, seconds: float) -> None:
        """A program of ``family_name`` was compiled (not loaded) in ``seconds``."""
        with self._lock:
            self._compile_seconds.setdefault(family_name, []).append(seconds)

    def compile_cost(self, family_name: str) -> float | None:
        """Mean seconds of this family's compilations in this process, or None before the first."""
        with self._lock:
            seconds = self._compile_seconds.get(family_name)
            return None if not seconds else statistics.fmean(seconds)

    def record_training(self, context: Hashable, spec: Hashable, state: Any, n_params: int,
                        epoch_seconds: list[float]) -> None:
        """The program of ``spec`` (its runs' stacked ``state``) trained epochs of these seconds."""
        if not epoch_seconds:
            return
        template = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], a.dtype), state)
        with self._lock:
            record = self._hosts.setdefault(context, {}).setdefault(spec, HostRecord(spec, template, n_params))
            record.epoch_seconds.extend(epoch_seconds)

    def padding_paid(self, context: Hashable, spec: Hashable) -> float:
        with self._lock:
            return self._paid.get((context, spec), 0.0)

    def charge(self, context: Hashable, spec: Hashable, seconds: float) -> None:
        """``spec``'s networks spent about ``seconds`` on padding (``Placement.padding_share`` of epochs trained)."""
        with self._lock:
            self._paid[(context, spec)] = self._paid.get((context, spec), 0.0) + seconds

    def choose(self, family: Any, context: Hashable, spec: Hashable, n_params: int, epochs: int) -> Placement | None:
        """Where ``spec``'s networks (``n_params`` each, ``epochs`` to train) should train, when its own program
        does not exist yet: a host's program (the one that would cost the least padding) if the padding paid for
        this shape so far plus this training's predicted padding is within one compilation; else None (compile
        its own)."""
        if not self.enabled:
            return None
        compile_cost = self.compile_cost(family.name)
        if compile_cost is None:
            return None
        with self._lock:
            records = list(self._hosts.get(context, {}).values())
            paid = self._paid.get((context, spec), 0.0)
        best: tuple[float, Placement] | None = None
        for record in records:
            description = family.hosting(record.spec, spec)
            if description is None or record.spec == spec or record.n_params <= 0:
                continue
            share = max(0.0, 1.0 - n_params / record.n_params)
            predicted = statistics.median(record.epoch_seconds) * share * epochs
            if best is None or predicted < best[0]:
                best = (predicted, Placement(record.spec, record.template, share, description))
        if best is None or paid + best[0] > compile_cost:
            return None
        return best[1]


def pad_state(state: Any, template: Any) -> Any:
    """Stacked run states (leading run axis) placed in a host program's state: ``template``'s tree of one run's
    ``jax.ShapeDtypeStruct`` leaves. A leaf of ``state`` goes where the same path is in ``template``, zero-padded
    at the end of every axis; a path of ``template`` that ``state`` lacks (a deeper host's extra layers, their
    optimiser moments) is all zeros."""
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    runs = np.shape(flat[0][1])[0] if flat else 1
    native = {path: np.asarray(leaf) for path, leaf in flat}
    targets, treedef = jax.tree_util.tree_flatten_with_path(template)
    placed = []
    for path, target in targets:
        leaf = native.pop(path, None)
        if leaf is None:
            placed.append(np.zeros((runs, *target.shape), target.dtype))
            continue
        widths = [(0, 0)] + [(0, t - s) for s, t in zip(leaf.shape[1:], target.shape, strict=True)]
        if any(after < 0 for _, after in widths):
            raise ValueError(f"cannot pad a state leaf of shape {leaf.shape[1:]} to the smaller {target.shape}")
        placed.append(np.pad(leaf, widths))
    if native:
        raise ValueError(f"state leaves {[jax.tree_util.keystr(p) for p in native]} have no place in the host's state")
    return jax.tree_util.tree_unflatten(treedef, placed)


def unpad_state(state: Any, native: Any) -> Any:
    """``pad_state`` undone: the tree of ``native``, each leaf taken from the same path of ``state`` and cut to
    ``native``'s shape."""
    hosted = dict(jax.tree_util.tree_flatten_with_path(state)[0])
    leaves, treedef = jax.tree_util.tree_flatten_with_path(native)
    return jax.tree_util.tree_unflatten(
        treedef, [hosted[path][tuple(slice(0, n) for n in np.shape(leaf))] for path, leaf in leaves])

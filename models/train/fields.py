"""Configuration fields: static (fixes the compiled programs), traced (a program input) or host-only.

A model family's configuration is a frozen dataclass; each field's metadata says which kind it is, so a new learning
rate never recompiles and a value that must not be baked into a program never is (``Static``).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np

TRACED = {"kind": "traced"}  # field metadata: an input of the compiled programs; a new value never recompiles
HOST = {"kind": "host"}  # field metadata: used on the host only (initialisation, loop length), never in a program


def chosen_among(choices_field: str) -> dict:
    """Field metadata of a categorical choice that one compiled program serves for every value of the static
    field ``choices_field`` (a tuple; empty: only the field's own value): the program gets the index."""
    return {"kind": "choice", "among": choices_field}


def field_kind(f) -> str:
    return f.metadata.get("kind", "static")


def choices_of(config: Any, f) -> tuple:
    """The values a choice field's program serves: its choices field, or the field's own value alone."""
    return tuple(getattr(config, f.metadata["among"])) or (getattr(config, f.name),)


def traced_values(config: Any) -> dict[str, np.ndarray]:
    """The traced fields of a configuration dataclass as float32 program inputs, and each choice field's index
    among its choices as an int32 input."""
    values: dict[str, np.ndarray] = {}  # 0-d arrays
    for f in fields(config):
        if field_kind(f) == "traced":
            values[f.name] = np.asarray(getattr(config, f.name), np.float32)
        elif field_kind(f) == "choice":
            values[f.name] = np.asarray(choices_of(config, f).index(getattr(config, f.name)), np.int32)
    return values


class Static:
    """The static fields of a configuration dataclass: what fixes its compiled programs.

    Hashable and compared by value, so equal static parts share compiled programs (the cache key); reading a traced,
    host-only or choice field through it is an error, so a value that must not be baked into a program never is
    (a choice field's choices are static, its value is an input: ``chosen_among``).
    """

    __slots__ = ("_type", "_values")

    def __init__(self, config: Any):
        object.__setattr__(self, "_type", type(config))
        values = {f.name: getattr(config, f.name) for f in fields(config) if field_kind(f) == "static"}
        for f in fields(config):
            if field_kind(f) == "choice":  # the program serves the choices; the value itself is an input
                values[f.metadata["among"]] = choices_of(config, f)
        object.__setattr__(self, "_values", tuple(values.items()))

    def __getattr__(self, name: str) -> Any:
        for key, value in self._values:
            if key == name:
                return value
        raise AttributeError(f"{name!r} is not a static field of {self._type.__name__}: programs cannot read it")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Static is read-only")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Static) and (self._type, self._values) == (other._type, other._values)

    def __hash__(self) -> int:
        return hash((self._type, self._values))

    def differences(self, other: Static) -> set[str]:
        """Names of the static fields whose values differ between two static parts of one configuration type."""
        if self._type is not other._type:
            raise TypeError(f"cannot compare the static parts of {self._type.__name__} and {other._type.__name__}")
        return {key for (key, mine), (_, theirs) in zip(self._values, other._values, strict=True) if mine != theirs}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values)
        return f"Static[{self._type.__name__}]({inner})"

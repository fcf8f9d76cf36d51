"""Search-space parameters as data: distributions, domains, conditions, and a study's effective space.

A ``Parameter`` says what one hyperparameter is (type, default distribution, the values a network can be built
with, when it is asked, which rules have it); ``hpo.space.families`` lists the parameters of every model family. A study's
``[space]`` overrides (``hpo.space.overrides``) are parsed against these parameters by ``parse_override`` and applied
by ``effective_space``; the suggest functions then ask every question through ``EffectiveSpace.ask``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from hpo.errors import UsageError
from models.rules import get_rule

# Distributions: what a parameter is asked from.


@dataclass(frozen=True)
class Choices:
    """A categorical parameter: one of ``values``."""

    values: tuple[Any, ...]  # at least two distinct values, in the order Optuna is given them


@dataclass(frozen=True)
class Range:
    """An int or float parameter between ``low`` and ``high`` (inclusive)."""

    low: int | float
    high: int | float  # > low
    log: bool = False  # sampled uniformly in log space (low > 0)


@dataclass(frozen=True)
class Fixed:
    """A parameter that is not searched: every trial uses ``value`` and Optuna never sees it."""

    value: Any


Distribution = Choices | Range | Fixed


@dataclass(frozen=True)
class Domain:
    """Every value a network can be built with: ``values`` for categorical types, else numeric bounds."""

    values: tuple[Any, ...] | None = None  # the only allowed values (strings, booleans)
    low: float | None = None  # lower bound (None: unbounded)
    high: float | None = None  # upper bound (None: unbounded)
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False  # high itself is not allowed

    def contains(self, value: Any) -> bool:
        if self.values is not None:
            return value in self.values
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def describe(self, type_: type) -> str:
        if self.values is not None:
            return "one of " + ", ".join(show(v) for v in self.values)
        noun = {int: "an integer", float: "a number"}[type_]
        if self.low is not None and self.high is not None:
            return f"{noun} in {'(' if self.low_open else '['}{show(self.low)}, {show(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {show(self.low)}"
        return noun


@dataclass(frozen=True)
class Condition:
    """A parameter is asked only when another one takes a value for which ``holds`` is true."""

    parameter: str  # the parameter it depends on (asked before it)
    holds: Callable[[Any], bool]  # of that parameter's value
    text: str  # how reports say it ("optimizer = sgd")


@dataclass(frozen=True)
class Parameter:
    """One hyperparameter of a search space: its default distribution and every value the model can be built with."""

    name: str  # key in [space] tables; also the Optuna name, unless ``per_layer`` names one per layer
    type: type  # int, float, str or bool: the type of every value
    default: Distribution  # the default space
    domain: Domain  # what a fixed value, a choice or a range bound must lie in
    help: str  # what it is, for the README and --show-space
    when: Condition | None = None  # asked only when this holds; None: always
    rules: str | None = None  # the Rule property an algorithm needs to have it ("trains_feedback"); None: every one
    per_layer: str | None = None  # Optuna name of layer i, e.g. "conv{}_channels": asked once per layer
    ranges: bool = True  # a {low, high} range may be given (conv fields: choices only, enumerated so layers fit)
    # a parameter added after studies were stored: the value those studies used, so that a stored space without it
    # reads as this value fixed and they resume (None: the parameter was there from the start)
    before: Any = None

    def optuna_name(self, layer: int | None = None) -> str:
        return self.per_layer.format(layer) if self.per_layer else self.name


def show(value: Any) -> str:
    """A value as reports and errors write it (TOML spelling of booleans, short floats)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# Overrides: a [space] entry turned into a Distribution, checked against the parameter.


def _typed(parameter: Parameter, value: Any, what: str) -> Any:
    """``value`` as the parameter's type, within its domain, or a UsageError naming the parameter and what is allowed."""
    kind = parameter.type
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[kind]
    if ok and kind is float:
        value = float(value)
        ok = math.isfinite(value)  # TOML allows nan and inf; no network is built from them
    if not ok or not parameter.domain.contains(value):
        allowed = "true or false" if kind is bool else parameter.domain.describe(kind)
        raise UsageError(f"space parameter {parameter.name!r}: {what} must be {allowed}, got {value!r}")
    return value


def parse_override(parameter: Parameter, value: Any) -> Distribution:
    """The distribution a [space] entry asks for: ``[choices]``, ``{low, high, log}`` or a fixed value.

    One choice, or a range with ``low == high``, is that value fixed. Every value must lie in the parameter's domain.
    """
    forms = "a value, a list of choices" + (" or a {low = ..., high = ...} range" if _takes_ranges(parameter) else "")
    if isinstance(value, list):
        if not value:
            raise UsageError(f"space parameter {parameter.name!r} has no choices; give {forms}")
        choices = [_typed(parameter, v, "every choice") for v in value]
        repeated = next((c for i, c in enumerate(choices) if c in choices[:i]), None)
        if repeated is not None:
            raise UsageError(f"space parameter {parameter.name!r} lists the choice {repeated!r} twice")
        return Fixed(choices[0]) if len(choices) == 1 else Choices(tuple(choices))
    if isinstance(value, dict):
        if not _takes_ranges(parameter):
            raise UsageError(f"space parameter {parameter.name!r} takes a value or a list of choices, not a range")
        keys = set(value)
        if not {"low", "high"} <= keys or keys - {"low", "high", "log"}:
            raise UsageError(
                f"space parameter {parameter.name!r}: a range has the keys low, high and optionally log, "
                f"got {', '.join(sorted(keys)) or 'none'}"
            )
        low, high = (_typed(parameter, value[k], k) for k in ("low", "high"))
        log = value.get("log", False)
        if not isinstance(log, bool):
            raise UsageError(f"space parameter {parameter.name!r}: log must be true or false, got {log!r}")
        if low > high:
            raise UsageError(f"space parameter {parameter.name!r}: low <= high must hold, got low={low}, high={high}")
        if log and low <= 0:
            raise UsageError(f"space parameter {parameter.name!r}: log = true needs low > 0, got low={low}")
        return Fixed(low) if low == high else Range(low, high, log)
    return Fixed(_typed(parameter, value, "its value"))


def _takes_ranges(parameter: Parameter) -> bool:
    return parameter.ranges and parameter.type in (int, float)


# The effective space of one study: the parameters its algorithm and model have, with the study's overrides.


def has_parameter(parameter: Parameter, algo: str) -> bool:
    """Whether ``algo`` has ``parameter`` (rule-specific ones need the rule property they name)."""
    return parameter.rules is None or bool(getattr(get_rule(algo), parameter.rules))


def distribution_values(distribution: Distribution, limit: int = 10_000) -> tuple[Any, ...] | None:
    """Every value the distribution can give, or None for a float range (or an int range longer than ``limit``)."""
    if isinstance(distribution, Fixed):
        return (distribution.value,)
    if isinstance(distribution, Choices):
        return distribution.values
    if isinstance(distribution.low, int) and isinstance(distribution.high, int) and distribution.high - distribution.low < limit:
        return tuple(range(distribution.low, distribution.high + 1))
    return None


def contains(distribution: Distribution, value: Any) -> bool:
    """Whether a trial could have ``value`` for a parameter of this distribution (a warm start must)."""
    if isinstance(distribution, Fixed):
        return value == distribution.value
    if isinstance(distribution, Choices):
        return value in distribution.values
    return isinstance(value, (int, float)) and not isinstance(value, bool) and distribution.low <= value <= distribution.high


@dataclass(frozen=True)
class EffectiveSpace:
    """The parameters one study asks, each with its default or overridden distribution, in the table's order.

    Parameters whose condition can never hold (``lr_adam`` once ``optimizer`` is fixed to sgd) are left out.
    """

    algo: str  # the study's algorithm
    model: str  # and model
    parameters: dict[str, Parameter]  # name -> parameter, for those the study has
    distributions: dict[str, Distribution] = field(default_factory=dict)  # name -> distribution asked from

    def ask(self, trial: Any, name: str, layer: int | None = None) -> Any:
        """The value of ``name`` (of layer ``layer``) for this trial: the fixed value, or Optuna's suggestion."""
        return self.ask_among(trial, name, distribution_values(self.distributions[name]), layer)

    def ask_among(self, trial: Any, name: str, allowed: tuple[Any, ...] | None, layer: int | None = None) -> Any:
        """Ask ``name`` restricted to ``allowed`` (a subset of its values that is the same in every trial)."""
        parameter, distribution = self.parameters[name], self.distributions[name]
        optuna_name = parameter.optuna_name(layer)
        if isinstance(distribution, Fixed):
            return distribution.value
        if allowed is not None and len(allowed) == 1:
            return allowed[0]
        if isinstance(distribution, Choices):
            return trial.suggest_categorical(optuna_name, list(allowed if allowed is not None else distribution.values))
        low, high = distribution.low, distribution.high
        if allowed is not None and isinstance(low, int):
            low, high = min(allowed), max(allowed)
        if parameter.type is int:
            return trial.suggest_int(optuna_name, low, high, log=True) if distribution.log else trial.suggest_int(
                optuna_name, low, high)
        return trial.suggest_float(optuna_name, low, high, log=distribution.log)

    def values(self, name: str) -> tuple[Any, ...]:
        """Every value ``name`` may take (categorical and int parameters)."""
        values = distribution_values(self.distributions[name])
        if values is None:
            raise ValueError(f"{name} is a float range: its values cannot be listed")
        return values

    def largest(self, name: str) -> Any:
        distribution = self.distributions[name]
        return distribution.high if isinstance(distribution, Range) else max(self.values(name))

    def smallest(self, name: str) -> Any:
        distribution = self.distributions[name]
        return distribution.low if isinstance(distribution, Range) else min(self.values(name))

    def shown(self, name: str) -> str:
        """The values of ``name`` as errors write them: ``[3, 5]`` or ``0.05..0.6``."""
        distribution = self.distributions[name]
        if isinstance(distribution, Range):
            return f"{show(distribution.low)}..{show(distribution.high)}"
        return "[" + ", ".join(show(v) for v in self.values(name)) + "]"

    def parameter_of(self, optuna_name: str) -> Parameter | None:
        """The parameter a trial's Optuna parameter belongs to (``conv2_kernel[3|5]`` -> conv_kernel), if asked."""
        for parameter in self.parameters.values():
            if isinstance(self.distributions[parameter.name], Fixed):
                continue
            pattern = re.escape(parameter.per_layer).replace(r"\{\}", r"\d+") if parameter.per_layer else re.escape(
                parameter.name)
            if re.fullmatch(pattern + r"(\[.*\])?", optuna_name):
                return parameter
        return None

    def to_attrs(self) -> dict[str, dict[str, Any]]:
        """JSON form, stored with the study (``hpo.space.overrides``): name -> kind, range or choices, condition."""
        attrs = {}
        for name, parameter in self.parameters.items():
            distribution = self.distributions[name]
            if isinstance(distribution, Fixed):
                spec: dict[str, Any] = {"kind": "fixed", "value": distribution.value}
            elif isinstance(distribution, Choices):
                spec = {"kind": "categorical", "choices": list(distribution.values)}
            else:
                spec = {"kind": parameter.type.__name__, "low": distribution.low, "high": distribution.high,
                        "log": distribution.log}
            if parameter.when is not None:
                spec["when"] = parameter.when.text
            if parameter.per_layer:
                spec["per_layer"] = parameter.per_layer.format("<i>")
            attrs[name] = spec
        return attrs


def parameters_of(table: tuple[Parameter, ...], algo: str) -> dict[str, Parameter]:
    """The parameters of a space's table that ``algo`` has, by name."""
    return {p.name: p for p in table if has_parameter(p, algo)}


def effective_space(table: tuple[Parameter, ...], algo: str, model: str, overrides: Mapping[str, Any]) -> EffectiveSpace:
    """The space of ``algo`` on ``model`` with ``overrides`` applied; a UsageError names any bad entry."""
    parameters = parameters_of(table, algo)
    for name in overrides:
        if name not in parameters:
            raise UsageError(
                f"space parameter {name!r} is not a parameter of {algo} on {model}; its parameters: "
                f"{', '.join(parameters)}"
            )
    distributions = {name: parse_override(p, overrides[name]) if name in overrides else p.default
                     for name, p in parameters.items()}
    asked = {}
    for name, parameter in parameters.items():
        condition = parameter.when
        if condition is not None and condition.parameter in asked:
            values = distribution_values(distributions[condition.parameter])
            if values is not None and not any(condition.holds(v) for v in values):
                continue  # can never be asked in this space
        asked[name] = parameter
    return EffectiveSpace(algo, model, asked, {name: distributions[name] for name in asked})

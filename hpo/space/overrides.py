"""Search spaces as configuration: ``[space]`` tables in study grids and ``--space`` files, their precedence, and
the effective space stored with every study (refused on resume when it differs) and shown in reports.

A ``[space]`` table maps parameter names (``hpo.space.families``'s tables, ``--show-space`` lists them) to an override:

    [space]                      # every study of the file
    optimizer = "sgd"            # fixed: not searched, not a trial parameter
    activation = "tanh"
    momentum = [0.0, 0.9]        # categorical choices
    [space.cnn]                  # studies of one model
    conv_kernel = [3]
    [space.kp]                   # studies of one rule (an --algo value)
    kp_decay_per_step = {low = 1e-4, high = 1e-2, log = true}
    [space.kp.cnn]               # one rule on one model (also [space.cnn.kp])
    lr_sgd = {low = 1e-3, high = 0.1, log = true}

Precedence, parameter by parameter: a ``[[grid]]``'s ``[space]`` overrides the file's top-level one, and
``--space FILE`` overrides both (as every other flag overrides the file); within one of them a more specific table
wins: ``[space]`` < ``[space.MODEL]`` < ``[space.RULE]`` < ``[space.RULE.MODEL]``. A generic or per-model entry
applies to the studies that have the parameter (``kp_decay_per_step`` in ``[space]`` changes only kp studies), but
must apply to at least one of them; a per-rule table for a rule the grid does not run is ignored, so one space file
serves any ``--algo``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, Sequence, TypeVar

import optuna

from hpo.errors import UsageError
from hpo.files import read_toml
from hpo.record import read_study, write_study
from hpo.space.algorithms import ALGORITHMS, MODELS, get_algorithm, study_effective_space
from hpo.space.parameters import EffectiveSpace, Parameter, parameters_of, parse_override, show
from hpo.space.training import StudySettings


class StudySpace(StudySettings, Protocol):
    """What this module reads of a study's configuration (``hpo.config.StudyConfig``, which imports this module;
    frozen: read-only here): what a space reads, and the study's name."""

    @property
    def name(self) -> str: ...


Config = TypeVar("Config", bound=StudySpace)



def _all_parameters() -> dict[str, Parameter]:
    """Every parameter of every space by name (a name means one thing in every space that has it)."""
    found: dict[str, Parameter] = {}
    for algorithm in ALGORITHMS.values():
        for space in algorithm.spaces.values():
            for parameter in space.parameters:
                found.setdefault(parameter.name, parameter)
    return found


def _has(algo: str, model: str, name: str) -> bool:
    spaces = get_algorithm(algo).spaces
    return model in spaces and name in parameters_of(spaces[model].parameters, algo)


def _owners(name: str) -> list[str]:
    """Every "rule/model" whose space has parameter ``name``."""
    return [f"{a}/{m}" for a, algorithm in ALGORITHMS.items() for m in algorithm.spaces if _has(a, m, name)]


@dataclass(frozen=True, eq=False)  # compared (and hashed) by identity: values may be lists or tables
class SpaceEntry:
    """One parameter override of a [space] table."""

    table: str  # where it was written, for errors: "studies/fair.toml [space.kp]"
    algo: str | None  # the rule sub-table it is in (None: every rule)
    model: str | None  # the model sub-table it is in (None: every model)
    key: str  # parameter name
    value: Any  # as written: a value, [choices] or {low, high, log}

    @property
    def specificity(self) -> int:
        return (self.model is not None) + 2 * (self.algo is not None)


@dataclass(frozen=True)
class SpaceLayer:
    """The entries of one [space] table (a grid file's top level, one [[grid]], or a --space file)."""

    where: str  # the table as errors name it
    entries: tuple[SpaceEntry, ...] = ()  # in order of increasing specificity


def parse_space(table: Any, source: str) -> SpaceLayer:
    """Check the [space] table of ``source`` ("studies/fair.toml", "... [[grid]] #2"): known parameters, well-formed
    overrides, and sub-tables per model and rule that exist."""
    where = f"{source} [space]"
    if not isinstance(table, dict):
        raise UsageError(f"{where} must be a table of parameter overrides, got {table!r}")
    parameters = _all_parameters()
    entries: list[SpaceEntry] = []

    def visit(table: dict[str, Any], path: tuple[str, ...], algo: str | None, model: str | None) -> None:
        label = f"{source} [{'.'.join(('space', *path))}]"
        for key, value in table.items():
            if key in ALGORITHMS and algo is None and isinstance(value, dict):
                visit(value, (*path, key), key, model)
            elif key in MODELS and model is None and isinstance(value, dict):
                visit(value, (*path, key), algo, key)
            elif key in parameters:
                entries.append(_entry(label, algo, model, key, value, parameters[key]))
            else:
                tables = [f" or a table per rule ({', '.join(ALGORITHMS)})"] if algo is None else []
                tables += [f" or a table per model ({', '.join(MODELS)})"] if model is None else []
                raise UsageError(
                    f"unknown key {key!r} in {label}; allowed: parameters ({', '.join(parameters)}){''.join(tables)}"
                )

    visit(table, (), None, None)
    return SpaceLayer(where, tuple(sorted(entries, key=lambda e: e.specificity)))


def _entry(where: str, algo: str | None, model: str | None, key: str, value: Any, parameter: Parameter) -> SpaceEntry:
    if algo is not None and model is not None and model not in get_algorithm(algo).spaces:
        raise UsageError(f"{where}: {algo} exists only for model {', '.join(get_algorithm(algo).spaces)}")
    owners = [o for o in _owners(key) if algo in (None, o.split("/")[0]) and model in (None, o.split("/")[1])]
    if not owners:
        subject = " on ".join(part for part in (algo, model) if part)
        raise UsageError(f"{where}: {subject} has no parameter {key!r}; it is a parameter of {', '.join(_owners(key))}")
    try:
        parse_override(parameter, value)
    except UsageError as error:
        raise UsageError(f"{where}: {error}") from None
    return SpaceEntry(where, algo, model, key, value)


def read_space_file(path: str | Path) -> SpaceLayer:
    """The [space] table of a ``--space`` file (the file holds nothing else)."""
    path = Path(path)
    document = read_toml(path, "space file")
    other = sorted(set(document) - {"space"})
    if other or "space" not in document:
        raise UsageError(
            f"space file {str(path)!r} must hold just a [space] table"
            + (f", got key {other[0]!r}" if other else ", found none")
        )
    return parse_space(document["space"], str(path))


def resolve(layers: list[SpaceLayer], algo: str, model: str) -> tuple[dict[str, Any], set[SpaceEntry]]:
    """The overrides of one study (``algo`` on ``model``) and the entries that gave them, by precedence."""
    overrides: dict[str, Any] = {}
    used: set[SpaceEntry] = set()
    for layer in layers:
        for entry in layer.entries:
            if entry.algo not in (None, algo) or entry.model not in (None, model) or not _has(algo, model, entry.key):
                continue
            overrides[entry.key] = entry.value
            used.add(entry)
    return overrides, used


def apply_spaces(placed: list[tuple[Config, list[SpaceLayer]]]) -> list[Config]:
    """Each ``(study configuration, its layers)`` with its overrides set; an entry that selects studies but applies to none
    of them is an error (a generic ``kp_decay_per_step`` with no kp study, say)."""
    configs: list[Config] = []
    used: set[SpaceEntry] = set()
    selected: dict[SpaceEntry, list[str]] = {}
    for config, layers in placed:
        overrides, applied = resolve(layers, config.algo, config.model)
        settable: Any = config  # a frozen dataclass (StudyConfig): replace() makes the one with these overrides
        configs.append(replace(settable, space=overrides) if overrides else config)
        used |= applied
        for layer in layers:
            for entry in layer.entries:
                if entry.algo in (None, config.algo) and entry.model in (None, config.model):
                    selected.setdefault(entry, []).append(config.name)
    for entry, names in selected.items():
        if entry not in used:
            raise UsageError(
                f"{entry.table}: space parameter {entry.key!r} applies to none of the studies it selects "
                f"({', '.join(names)}); it is a parameter of {', '.join(_owners(entry.key))}"
            )
    return configs


# The effective space stored with a study.

DESCRIBED = ("kind", "low", "high", "log", "choices", "value")  # what makes two spaces differ (not "when" texts)


def stored_space(config: StudySpace) -> dict[str, dict[str, Any]]:
    """The JSON form of the study's effective space (``hpo.space.parameters.EffectiveSpace.to_attrs``)."""
    return study_effective_space(config).to_attrs()


def describe(spec: dict[str, Any] | None) -> str:
    """One parameter of a stored space in words: "float 0.0001..0.01 (log)", "fixed sgd", "choices relu, tanh"."""
    if spec is None:
        return "not asked"
    if spec["kind"] == "fixed":
        return f"fixed {show(spec['value'])}"
    if spec["kind"] == "categorical":
        return "choices " + ", ".join(show(v) for v in spec["choices"])
    return f"{spec['kind']} {show(spec['low'])}..{show(spec['high'])}" + (" (log)" if spec.get("log") else "")


def first_difference(stored: dict[str, Any], current: dict[str, Any]) -> tuple[str, str, str] | None:
    """(parameter, as stored, as now) of the first parameter whose distribution differs, or None."""
    for name in [*current, *(n for n in stored if n not in current)]:
        old, new = stored.get(name), current.get(name)
        trimmed = [None if s is None else {k: s[k] for k in DESCRIBED if k in s} for s in (old, new)]
        if trimmed[0] != trimmed[1]:
            return name, describe(old), describe(new)
    return None


def with_later_parameters(stored: dict[str, Any], space: EffectiveSpace) -> dict[str, Any]:
    """``stored`` with every parameter added to the space after it was stored, as the value it then had, fixed
    (``Parameter.before``)."""
    added = {name: {"kind": "fixed", "value": parameter.before} for name, parameter in space.parameters.items()
             if name not in stored and parameter.before is not None}
    return {**stored, **added}


def record_space(study: optuna.Study, config: StudySpace, where: str) -> None:
    """Store the effective space on a new study; refuse to resume one created with another space.

    A study created before spaces were stored (no attribute, but trials) is taken to have used the default space:
    it resumes only without overrides, and only if every parameter its trials have is still asked (kp's
    ``kp_decay``, times the learning rate, became ``kp_decay_per_step``, so old kp studies cannot resume).
    """
    current = stored_space(config)
    stored = read_study(study).space
    if stored is not None:
        stored = with_later_parameters(stored, study_effective_space(config))
        difference = first_difference(stored, current)
        if difference is not None:
            name, old, new = difference
            raise UsageError(
                f"study {config.name!r} in {where!r} was created with space parameter {name} {old}, got {new}; "
                "use another --study-name or the original space"
            )
        return
    trials = study.get_trials(deepcopy=False)
    if trials:
        before = f"study {config.name!r} in {where!r} was created before search spaces were stored with studies"
        if config.space:
            raise UsageError(f"{before}: it resumes only with the default space (no [space] overrides)")
        space = study_effective_space(config)
        unknown = next((n for t in trials for n in t.params if space.parameter_of(n) is None), None)
        if unknown is not None:
            raise UsageError(
                f"{before}, and its trials have parameter {unknown!r}, which the current default space does not "
                "ask; use another --study-name"
            )
    write_study(study, space=current)


# Tables of a space, for --show-space, reports and the notebook.

COLUMNS = ("parameter", "kind", "range or choices", "asked when")


def space_rows(space: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """One row per parameter of a stored (JSON) space."""
    rows = []
    for name, spec in space.items():
        label = name + (f" ({spec['per_layer']} per layer)" if spec.get("per_layer") else "")
        if spec["kind"] == "fixed":
            kind, values = "fixed", show(spec["value"])
        elif spec["kind"] == "categorical":
            kind, values = "categorical", ", ".join(show(v) for v in spec["choices"])
        else:
            kind = spec["kind"] + (" (log)" if spec.get("log") else "")
            values = f"{show(spec['low'])} .. {show(spec['high'])}"
        rows.append((label, kind, values, spec.get("when", "")))
    return rows


def space_table(space: dict[str, Any] | None) -> str:
    """Markdown table of a study's stored space (``hpo.record.read_study(study).space``)."""
    if space is None:
        return "Search space not stored: the study was created before spaces were stored with studies.\n"
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(f"`{c}`" if i == 0 else c for i, c in enumerate(row)) + " |" for row in space_rows(space)]
    return "\n".join(lines) + "\n"


def text_table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    lines = [COLUMNS, tuple("-" * w for w in widths), *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines) + "\n"


def show_spaces(configs: Sequence[StudySpace]) -> str:
    """The effective space of each study as a text table; studies with the same space share one table."""
    groups: dict[str, tuple[StudySpace, dict[str, Any], list[str]]] = {}
    for config in configs:
        space = stored_space(config)
        key = f"{config.algo}/{config.model}/{space}"
        groups.setdefault(key, (config, space, []))[2].append(config.name)
    parts = []
    for config, space, names in groups.values():
        title = f"{config.algo} ({get_algorithm(config.algo).title}) on {config.model}: {', '.join(names)}"
        parts.append(title + "\n" + text_table(space_rows(space)))
    return "\n".join(parts)

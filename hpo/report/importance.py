"""Which hyperparameters matter for each rule, with their uncertainty, and where their best values lie.

One study's importances are Optuna's PED-ANOVA (Watanabe et al. 2023; ``optuna.importance``): how much each
parameter's distribution among the top ``TARGET_QUANTILE`` of complete trials differs from its distribution among
all of them, normalised to sum to 1. It handles conditional parameters (``lr_sgd`` exists only where the optimiser is
SGD), which fANOVA cannot. On 30-50 trials one estimate is noisy, so each is given with its spread over
``BOOTSTRAPS`` resamples of the complete trials (with replacement, from a fixed seed: a report regenerates byte for
byte), and every value is rounded to ``DIGITS`` decimals, below the floating-point noise of one machine or another.

Across rules (``cross_rule_importance``): a table of parameter x rule (mean ± bootstrap std), written by the
report at the top of a results folder holding several rules (``importance.csv``, ``importance.md``,
``importance.png``), with each parameter's best value or range among the top trials of each rule (the top
``TOP_SHARE`` of complete trials, at least ``TOP_MIN``): the range of a number, the most frequent choice and its
share for a category.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
from optuna.trial import FrozenTrial, TrialState

from hpo.files import atomic_path, pyplot, write_text
from hpo.record import read_study

BOOTSTRAPS = 50  # resamples of the complete trials per study
SEED = 0  # of the resampling: every report draws the same resamples
DIGITS = 3  # decimals an importance is rounded to
TARGET_QUANTILE = 0.1  # PED-ANOVA's top share of trials (Optuna's default)
TOP_SHARE = 0.2  # of complete trials whose values say where the best region lies
TOP_MIN = 3
FEW_TRIALS = 20  # complete trials below which a study's importances are a rough estimate, and say so


@dataclass(frozen=True)
class Importance:
    """One parameter's importance in one study."""

    mean: float  # over the bootstrap resamples (NaN where the parameter was never estimable)
    std: float  # their standard deviation
    point: float  # on the study's complete trials themselves


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _evaluate(trials: list[FrozenTrial], direction: optuna.study.StudyDirection) -> dict[str, float]:
    """PED-ANOVA importances on ``trials`` (an in-memory study of them), for every parameter they hold."""
    scratch = optuna.create_study(direction=direction)
    scratch.add_trials(trials)
    names = sorted({name for t in trials for name in t.distributions})
    with warnings.catch_warnings():  # "some regimes have less than n trials": the spread says how rough it is
        warnings.simplefilter("ignore")
        return get_param_importances(scratch, evaluator=PedAnovaImportanceEvaluator(), params=names)


def study_importance(study: optuna.Study, bootstraps: int = BOOTSTRAPS, seed: int = SEED) -> dict[str, Importance]:
    """Each parameter's importance in ``study`` with its bootstrap spread (module docstring); {} with fewer than
    two distinct complete configurations."""
    trials = complete_trials(study)
    if len({tuple(sorted(t.params.items())) for t in trials}) < 2:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    point = _evaluate(trials, study.direction)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {name: [] for name in point}
    for _ in range(bootstraps):
        drawn = [trials[i] for i in rng.integers(0, len(trials), len(trials))]
        try:
            values = _evaluate(drawn, study.direction)
        except ValueError:  # every drawn trial the same configuration: nothing to tell apart
            continue
        for name in samples:
            if name in values:
                samples[name].append(values[name])
    return {
        name: Importance(_round(np.mean(samples[name])) if samples[name] else math.nan,
                         _round(np.std(samples[name])) if samples[name] else math.nan, _round(point[name]))
        for name in sorted(point, key=lambda n: (-point[n], n))
    }


def _round(value: Any) -> float:
    return round(float(value), DIGITS)


def best_region(study: optuna.Study, name: str) -> str:
    """Where parameter ``name`` lies among the study's top trials: ``1.4e-4 .. 4.1e-4`` for a number (3
    significant digits), ``relu (4/5)`` for a choice, or "" where no top trial has it."""
    trials = complete_trials(study)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(trials, key=lambda t: float(t.value or 0.0), reverse=maximize)  # complete: a value each
    top = ranked[: max(TOP_MIN, math.ceil(TOP_SHARE * len(ranked)))]
    values = [t.params[name] for t in top if name in t.params]
    if not values:
        return ""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and \
            not isinstance(top[0].distributions.get(name), optuna.distributions.CategoricalDistribution):
        low, high = min(values), max(values)
        return _number(low) if low == high else f"{_number(low)} .. {_number(high)}"
    value, count = Counter(map(str, values)).most_common(1)[0]
    return f"{value} ({count}/{len(values)})"


def _number(value: float) -> str:
    return f"{value:.3g}"


def importance_frame(studies: list[optuna.Study], importances: dict[str, dict[str, Importance]]) -> pd.DataFrame:
    """One row per (rule, parameter): importance mean, bootstrap std, point estimate, best region, trials."""
    rows = []
    for study in studies:
        record = read_study(study)
        rule = record.algo or study.study_name
        n = len(complete_trials(study))
        for name, value in importances[study.study_name].items():
            rows.append({"study": study.study_name, "rule": rule, "parameter": name, "importance": value.mean,
                         "importance_std": value.std, "importance_point": value.point,
                         "best_region": best_region(study, name), "complete_trials": n})
    return pd.DataFrame(rows, columns=["study", "rule", "parameter", "importance", "importance_std",
                                       "importance_point", "best_region", "complete_trials"])


def importance_markdown(frame: pd.DataFrame) -> str:
    """Parameter x rule: importance mean ± bootstrap std, then the best region of each, as markdown."""
    rules = list(dict.fromkeys(frame["rule"]))
    order = frame.groupby("parameter")["importance"].mean().sort_values(ascending=False).index
    cell = {(r.parameter, r.rule): r for r in frame.itertuples()}
    header = ["| parameter | " + " | ".join(rules) + " |", "|---|" + "---|" * len(rules)]
    importance = [f"| {p} | " + " | ".join(
        f"{cell[p, r].importance:.2f} ± {cell[p, r].importance_std:.2f}" if (p, r) in cell else "" for r in rules)
        + " |" for p in order]
    regions = [f"| {p} | " + " | ".join(cell[p, r].best_region if (p, r) in cell else "" for r in rules) + " |"
               for p in order]
    trials = ", ".join(f"{r} {int(frame[frame['rule'] == r]['complete_trials'].iloc[0])}" for r in rules)
    return "\n".join([
        "# Which hyperparameters matter, per rule", "",
        f"PED-ANOVA importance (Optuna) over each study's complete trials: mean ± std over {BOOTSTRAPS} bootstrap "
        f"resamples of them (seed {SEED}); each rule's importances sum to 1. Complete trials: {trials}.", "",
        *header, *importance, "",
        f"## Best region: the top {TOP_SHARE:.0%} of complete trials (at least {TOP_MIN})", "",
        "A number's range, or the most frequent choice with its share.", "",
        *header, *regions, "",
    ])


def importance_png(frame: pd.DataFrame, path: Path) -> None:
    """A heatmap of parameter x rule importance, each cell annotated with mean ± std."""
    plt = pyplot()
    rules = list(dict.fromkeys(frame["rule"]))
    order = list(frame.groupby("parameter")["importance"].mean().sort_values(ascending=False).index)
    means = np.full((len(order), len(rules)), np.nan)
    stds = np.full_like(means, np.nan)
    for r in frame.itertuples():
        means[order.index(r.parameter), rules.index(r.rule)] = r.importance
        stds[order.index(r.parameter), rules.index(r.rule)] = r.importance_std
    fig, ax = plt.subplots(figsize=(1.1 * len(rules) + 2.5, 0.45 * len(order) + 1.6))
    image = ax.imshow(np.nan_to_num(means, nan=0.0), cmap="Blues", vmin=0, vmax=max(0.5, np.nanmax(means)),
                      aspect="auto")
    for i in range(len(order)):
        for j in range(len(rules)):
            if np.isfinite(means[i, j]):
                ax.text(j, i, f"{means[i, j]:.2f}\n±{stds[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if means[i, j] > 0.35 else "black")
    ax.set_xticks(range(len(rules)), rules)
    ax.set_yticks(range(len(order)), order)
    ax.set_title(f"Hyperparameter importance per rule (PED-ANOVA, mean ± std over {BOOTSTRAPS} bootstraps)",
                 fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def cross_rule_importance(
    studies: list[optuna.Study], results: Path, importances: dict[str, dict[str, Importance]] | None = None
) -> list[Path]:
    """``importance.csv``, ``.md`` and ``.png`` at the top of ``results`` for studies of several rules on one
    dataset and model (the most common pair, where a folder holds several); [] where there is one rule."""
    pairs = Counter((read_study(s).dataset, read_study(s).model) for s in studies)
    if not pairs:
        return []
    (dataset, model), _ = pairs.most_common(1)[0]
    chosen = sorted((s for s in studies if (read_study(s).dataset, read_study(s).model) == (dataset, model)),
                    key=lambda s: read_study(s).algo or s.study_name)
    importances = importances or {s.study_name: study_importance(s) for s in chosen}
    frame = importance_frame(chosen, importances)
    if frame["rule"].nunique() < 2:
        return []
    with atomic_path(results / "importance.csv") as tmp:
        frame.to_csv(tmp, index=False)
    write_text(results / "importance.md", importance_markdown(frame))
    importance_png(frame, results / "importance.png")
    return [results / "importance.csv", results / "importance.md", results / "importance.png"]

"""How the rules compare, from the storage alone: test scores over seeds, the start-up spread, the difference
from backprop, HPO efficiency and the best hyperparameters.

The summary (``hpo.report.summary``) is one row per study; this module computes the columns that need more than one
trial's numbers, and the figures and tables built on them:

* ``test_*``: the best configuration's test scores over seeds (``hpo.study.heldout``): ``test_n`` seeds, their mean,
  sample std and the half-width of the Student-t 95% interval of the mean (``hpo.report.stats``). A study run before
  test seeds has one score (n = 1, no interval) and says so in ``test_note``.
* ``startup_*``: the spread across trials over the random start-up trials (``hpo.study.population``): the same
  number of random configurations for every rule, none pruned.
* ``test_pi95``: the half-width of the 95% prediction interval of one new seed's test score (what a rerun lands in).
* ``delta_vs_bp``, ``delta_vs_bp_ci95``, ``p_vs_bp``, ``p_vs_bp_holm``: test mean minus backprop's (same dataset and
  model, in the same storage), the half-width of Welch's 95% interval of that difference, Welch's two-sided p-value
  and that p adjusted by Holm's method for the number of rules compared with bp there.
  Empty for bp itself, where there is no (or more than one) bp study to compare with, and (interval and p)
  where either side has fewer than two seeds.
* ``efficiency_png``: best cross-validated score so far against the number of finished trials, one line per
  rule, one figure per dataset and model.
* ``best_params_tables``: each study's best hyperparameters, a column per parameter, rounded.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from hpo.files import atomic_path, path_component, pyplot
from hpo.record import STARTUP_TRIALS, TestScores, read_study, startup_spread
from hpo.report.curves import final_angles, layer_order
from hpo.report.stats import CONFIDENCE, holm, summarize_scores, welch

BACKPROP = "bp"  # the rule every other one is compared with
PREDATES_TEST_SEEDS = "one seed: the run predates test seeds"
PREDATES_STARTUP_MARK = (
    f"predates the start-up mark: its first {STARTUP_TRIALS} trials are taken as the start-up ones, which the "
    "pruner could stop after the fifth (stopped ones are unscored)"
)
SIGNIFICANCE = 0.05  # p below which the chart marks a difference from backprop

TEST_COLUMNS = ["test_n", "test_mean", "test_std", "test_ci95", "test_pi95", "test_note", "test_scores"]
STARTUP_COLUMNS = ["startup_n", "startup_unscored", "startup_mean", "startup_std", "startup_worst", "startup_note"]
VS_BP_COLUMNS = ["delta_vs_bp", "delta_vs_bp_ci95", "p_vs_bp", "p_vs_bp_holm"]
ALIGNMENT_COLUMNS = ["wb_angle", "update_angle", "wb_angle_mean", "update_angle_mean"]


def alignment_columns(diagnostics: dict[str, Any] | None) -> dict[str, Any]:
    """The best trial's alignment at the end of training (``hpo.report.curves.final_angles``): ``wb_angle``, the
    angle between W and the matrix that carries its error back, and ``update_angle``, the angle of the rule's
    update to backprop's gradient, each per layer in network order (``"64.1 / 83.0"``; empty where the rule has
    none) and as the mean over those layers (degrees)."""
    row: dict[str, Any] = {"wb_angle": "", "update_angle": "", "wb_angle_mean": np.nan, "update_angle_mean": np.nan}
    for metric in ("wb_angle", "update_angle"):
        angles = final_angles(diagnostics or {}, metric)
        layers = sorted((layer for layer in angles if layer != "total"), key=layer_order)
        if layers:
            row[metric] = " / ".join(f"{angles[layer]:.1f}" for layer in layers)
            row[f"{metric}_mean"] = float(np.mean([angles[layer] for layer in layers]))
    return row


def score_columns(record: TestScores | None, best_trial: int | None) -> dict[str, Any]:
    """The ``test_*`` columns of a study from its stored test scores and its best trial's number."""
    row: dict[str, Any] = {"test_n": 0, "test_mean": np.nan, "test_std": np.nan, "test_ci95": np.nan,
                           "test_pi95": np.nan, "test_note": "", "test_scores": ""}
    if best_trial is None:
        return row
    if record is None:
        row["test_note"] = "no test score stored"
        return row
    if record.trial != best_trial:
        row["test_note"] = f"test scores are of trial #{record.trial}, not the best #{best_trial}: rerun hpo.run"
        return row
    if record.error:
        row["test_note"] = record.error
        return row
    summary = summarize_scores(record.scores)
    row.update(test_n=summary.n, test_mean=summary.mean, test_std=summary.std, test_ci95=summary.ci95,
               test_pi95=summary.pi95, test_scores=json.dumps(list(record.scores)))
    if record.predates_seeds:
        row["test_note"] = PREDATES_TEST_SEEDS
    return row


def startup_columns(
    trials: list[optuna.trial.FrozenTrial], maximize: bool, read_at: int | None = None
) -> dict[str, Any]:
    """The ``startup_*`` columns: the spread over the random start-up trials (``hpo.record.startup_spread``), read
    from their final CV scores or, for a study that stops them later (``hpo.record.spread_step``), at step
    ``read_at``: the first fold's validation score after its last epoch, which the note says."""
    spread = startup_spread(trials, read_at)
    scores = spread.scores
    return {
        "startup_n": spread.n,
        "startup_unscored": spread.unscored,
        "startup_mean": float(scores.mean()) if spread.n else np.nan,
        "startup_std": float(scores.std(ddof=1)) if spread.n > 1 else np.nan,
        "startup_worst": (float(scores.min() if maximize else scores.max())) if spread.n else np.nan,
        "startup_note": (PREDATES_STARTUP_MARK if not spread.marked else "" if read_at is None
                         else f"read at the first fold's end (epoch {read_at}), where the pruner may stop them"),
    }


def seed_scores(cell: Any) -> list[float]:
    """Per-seed test scores from the ``test_scores`` column (JSON list; empty or NaN: none)."""
    if not isinstance(cell, str) or not cell:
        return []
    return [float(v) for v in json.loads(cell)]


def add_vs_bp(frame: pd.DataFrame) -> pd.DataFrame:
    """Fill ``delta_vs_bp``, ``delta_vs_bp_ci95`` and ``p_vs_bp`` (see the module docstring)."""
    frame = frame.copy()
    for column in VS_BP_COLUMNS:
        frame[column] = np.nan
    for (_, _), group in frame.groupby(["dataset", "model"], sort=False):
        bp = group[group["algo"] == BACKPROP]
        if len(bp) != 1:
            continue  # none to compare with, or ambiguous (two bp studies, e.g. two seeds or samplers)
        reference = seed_scores(bp["test_scores"].iloc[0])
        others = [index for index, row in group.iterrows() if row["algo"] != BACKPROP]
        for index in others:
            comparison = welch(seed_scores(frame.loc[index, "test_scores"]), reference, CONFIDENCE)
            frame.loc[index, VS_BP_COLUMNS[:3]] = [comparison.delta, comparison.ci95, comparison.p]
        frame.loc[others, "p_vs_bp_holm"] = holm(frame.loc[others, "p_vs_bp"].astype(float).tolist())
    return frame


# ----------------------------------------------------------------------------------------------------------
# HPO efficiency


def best_so_far(study: optuna.Study) -> np.ndarray:
    """Best CV score after each finished (complete or pruned) trial, in trial order; NaN before the first
    complete one. Pruned trials add no score but use up a trial of the budget."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    finished = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                      key=lambda t: t.number)
    values = np.array([t.value if t.state == TrialState.COMPLETE else np.nan for t in finished], dtype=float)
    if not len(values):
        return values
    filled = np.where(np.isnan(values), -np.inf if maximize else np.inf, values)
    best = np.maximum.accumulate(filled) if maximize else np.minimum.accumulate(filled)
    return np.where(np.isinf(best), np.nan, best)


def efficiency_png(studies: list[optuna.Study], results: Path) -> list[Path]:
    """``efficiency/<dataset>-<model>.png``: best-so-far CV score against finished trials, a line per rule."""
    groups: dict[tuple[str, str], list[optuna.Study]] = {}
    for study in studies:
        record = read_study(study)
        groups.setdefault((record.dataset or "", record.model or ""), []).append(study)
    written = []
    plt = pyplot()
    for (dataset, model), members in sorted(groups.items()):
        curves = [(s, best_so_far(s)) for s in sorted(members, key=lambda s: s.study_name)]
        curves = [(s, c) for s, c in curves if np.isfinite(c).any()]
        if not curves:
            continue
        labels = [read_study(s).algo or s.study_name for s, _ in curves]
        if len(set(labels)) < len(labels):  # one rule in two studies: name the studies
            labels = [s.study_name for s, _ in curves]
        maximize = curves[0][0].direction == optuna.study.StudyDirection.MAXIMIZE
        after_startup = [c[min(STARTUP_TRIALS, len(c)) - 1] for _, c in curves]
        # (only once some study has run past its start-up: there is nothing after it to zoom on before)
        zoom = maximize and np.isfinite(after_startup).all() and max(len(c) for _, c in curves) > STARTUP_TRIALS
        # left: every trial, nothing off the chart; right (maximised scores): from where the worst rule stands
        # after its random start-up, where the differences that remain between rules are visible
        fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(10.5 if zoom else 6.4, 4.0), squeeze=False)
        for ax in axes[0]:
            for (_, curve), label in zip(curves, labels):
                ax.step(np.arange(1, len(curve) + 1), curve, where="post", lw=1.6, label=label)
            ax.axvspan(0.5, STARTUP_TRIALS + 0.5, color="grey", alpha=0.12, lw=0)
            ax.set_xlabel("finished trials (complete or pruned), in order")
            ax.grid(alpha=0.3)
        # labelled on the full panel only: on the zoomed one it would stand left of its axes, over the other panel
        axes[0][0].text(STARTUP_TRIALS / 2 + 0.5, 0.02, "random start-up", transform=axes[0][0].get_xaxis_transform(),
                        ha="center", fontsize=7, color="dimgrey")
        metric = read_study(curves[0][0]).metric or "score"
        title = " / ".join(part for part in (dataset, model) if part) or "studies"
        axes[0][0].set_ylabel(f"best CV {metric} so far")
        axes[0][0].set_title("every trial", fontsize=9)
        if zoom:
            low, high = min(after_startup), max(c[-1] for _, c in curves)
            axes[0][1].set_ylim(low - 0.1 * max(high - low, 0.01), high + 0.05 * max(high - low, 0.01))
            axes[0][1].set_xlim(STARTUP_TRIALS - 0.5, max(len(c) for _, c in curves) + 0.5)
            axes[0][1].set_title("after the start-up, zoomed", fontsize=9)
        fig.suptitle(f"HPO efficiency: {title}", fontsize=10)
        axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
        # the attributes come from the storage, which others may write: never a path of their own making
        name = path_component("-".join(part for part in (dataset, model) if part) or "studies")
        path = results / "efficiency" / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png", bbox_inches="tight", pad_inches=0.1)
        plt.close(fig)
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------------------
# Best hyperparameters


RESTRICTED = re.compile(r"\[[^\]]*\]$")  # "conv2_kernel[3]": a parameter asked over a restricted set of values


def round_value(value: Any) -> Any:
    """A parameter value for a table: floats to 3 significant digits, everything else as it is."""
    if isinstance(value, bool) or not isinstance(value, float):
        return value
    return float(f"{value:.3g}") if math.isfinite(value) else value


def best_params_tables(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Each study's best hyperparameters as tables, a row per study and a column per parameter (rounded).

    Studies whose parameters overlap (at least half of the smaller set shares names) share a table, so rules of
    one search space sit together and segregated dendrites' parameters get their own table; a parameter asked
    over a restricted set (``conv2_kernel[3]``) shares the column of its plain name.
    """
    rows = []
    for row in frame.itertuples(index=False):
        if not isinstance(row.best_params, str) or not row.best_params:
            continue
        params = {RESTRICTED.sub("", k): round_value(v) for k, v in sorted(json.loads(row.best_params).items())}
        rows.append(({"dataset": row.dataset, "model": row.model, "rule": row.algo or row.study,
                      "trial": f"#{row.best_trial}"}, params))
    groups: list[tuple[str, set[str], list[tuple[dict, dict]]]] = []
    for ident, params in rows:
        names = set(params)
        for model, members_names, members in groups:
            shared = len(names & members_names)
            if model == ident["model"] and names and shared * 2 >= min(len(names), len(members_names)):
                members_names |= names
                members.append((ident, params))
                break
        else:
            groups.append((ident["model"], set(names), [(ident, params)]))
    tables = []
    identity = ["dataset", "model", "rule", "trial"]
    for model, names, members in groups:
        columns = identity + sorted(names)
        # built cell by cell, so a missing parameter is an empty cell and integers stay integers
        table = pd.DataFrame([[{**ident, **params}.get(c, "") for c in columns] for ident, params in members],
                             columns=columns, dtype=object)
        rules = "/".join(dict.fromkeys(table["rule"].astype(str)))
        tables.append((f"{model}: {rules}", table))
    return tables


def markdown_table(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    for values in table.itertuples(index=False):
        lines.append("| " + " | ".join("" if v is None else str(v) for v in values) + " |")
    return "\n".join(lines)

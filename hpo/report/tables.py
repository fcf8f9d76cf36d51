"""The summary table of a storage's studies: one row per study (counts, best CV, the start-up spread, test scores
over seeds, the comparison with bp, alignment, timing), as a data frame, CSV and Markdown."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from hpo.record import STARTUP_TRIALS, read_study, read_trial, spread_step
from hpo.report.comparison import (
    ALIGNMENT_COLUMNS,
    PREDATES_STARTUP_MARK,
    PREDATES_TEST_SEEDS,
    STARTUP_COLUMNS,
    TEST_COLUMNS,
    VS_BP_COLUMNS,
    add_vs_bp,
    alignment_columns,
    best_params_tables,
    markdown_table,
    score_columns,
    startup_columns,
)

SUMMARY_COLUMNS = [
    "study", "dataset", "model", "algo", "metric", "direction", "complete", "pruned", "failed", "best",
    "best_trial", "best_fold_std", *STARTUP_COLUMNS, *TEST_COLUMNS[:6], *VS_BP_COLUMNS, *ALIGNMENT_COLUMNS,
    "interrupted", "surplus", "median_trial_seconds", "train_seconds", "compile_seconds", "wall_seconds",
    "test_scores", "best_params",
]


def study_row(study: optuna.Study) -> dict:
    """One summary row: counts, the best CV score and trial, the spread over the random start-up trials and the
    best configuration's test scores over seeds (``hpo.report.comparison``); the comparison with bp comes later."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    values = np.array([t.value for t in complete], dtype=float)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    record = read_study(study)
    row = {
        "study": study.study_name,
        "dataset": record.dataset or "",
        "model": record.model or "",
        "algo": record.algo or "",
        "metric": record.metric or "value",
        "direction": "maximize" if maximize else "minimize",
        "complete": len(complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "best": np.nan, "best_trial": None, "best_fold_std": np.nan,
        **startup_columns(trials, maximize, spread_step(record)),
        **alignment_columns(None),
        "median_trial_seconds": np.nan, "train_seconds": 0.0, "compile_seconds": 0.0, "wall_seconds": 0.0,
        "best_params": "",
    }
    records = [read_trial(t) for t in trials]
    # a failed trial that a signal stopped (re-queued) or that the study did not need (surplus) is not a failure
    ended = [(t, r) for t, r in zip(trials, records) if t.state == TrialState.FAIL]
    row["interrupted"] = sum(r.interrupted is not None for _, r in ended)
    row["surplus"] = sum(r.surplus is not None for _, r in ended)
    row["failed"] = len(ended) - row["interrupted"] - row["surplus"]
    timed = [r.wall_seconds for r in records if r.wall_seconds is not None]
    if timed:
        row["median_trial_seconds"] = float(np.median(timed))
        row["wall_seconds"] = float(np.sum(timed))
    row["train_seconds"] = float(sum(r.train_seconds or 0.0 for r in records))
    row["compile_seconds"] = float(sum(r.compile_seconds or 0.0 for r in records))
    best = study.best_trial if len(values) else None
    if best is not None:
        row.update(
            best=float(values.max() if maximize else values.min()),
            best_trial=best.number,
            best_fold_std=np.nan if read_trial(best).fold_std is None else read_trial(best).fold_std,
            best_params=json.dumps(best.params, sort_keys=True),
            **alignment_columns(read_trial(best).diagnostics),
        )
    row.update(score_columns(record.test, None if best is None else best.number))
    return row


def summarize(studies: list[optuna.Study]) -> pd.DataFrame:
    rows = [study_row(s) for s in studies]
    frame = add_vs_bp(pd.DataFrame(rows, columns=SUMMARY_COLUMNS))
    return frame.sort_values(["dataset", "model", "algo"], kind="stable").reset_index(drop=True)


def _number(value: Any, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def _plus_minus(centre: Any, spread: Any, n: Any = None) -> str:
    text = _number(centre)
    if text and _number(spread):
        text += f" ± {_number(spread)}"
    return f"{text} (n={int(n)})" if text and n is not None else text


def p_value(p: Any) -> str:
    """A p-value for a table: 3 decimals, or scientific below 0.001 (never a misleading 0.000)."""
    if p is None or not np.isfinite(p):
        return ""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


SPREAD_NOTE = (
    f"Start-up: the study's first {STARTUP_TRIALS} trials, drawn at random from the rule's search space before "
    "Bayesian optimisation starts and never pruned, so the same population for every rule (hpo.study.population); "
    "mean ± sample std and worst of their CV scores, n of them with a score (diverged ones counted apart)."
)
TEST_NOTE = (
    "Test: the best configuration retrained on the whole training split with n seeds and scored on the test "
    "split: mean ± half-width of the Student-t 95% interval of the mean; one new seed: the half-width of the 95% "
    "prediction interval of one more seed's score around that mean (what a rerun lands in). vs bp: test mean minus "
    "bp's on the same dataset and model ± Welch's 95% interval, Welch's two-sided p, and that p adjusted by Holm's "
    "method for the number of rules compared with bp on that dataset and model."
)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The readable summary: one row per study, statistics with their spread in one cell."""
    return pd.DataFrame({
        "study": frame["study"],
        "trials (complete / pruned / failed)": [f"{r.complete} / {r.pruned} / {r.failed}" for r in frame.itertuples()],
        "best CV": frame["best"].map(_number),
        "start-up CV mean ± std": [_plus_minus(r.startup_mean, r.startup_std, r.startup_n) for r in frame.itertuples()],
        "start-up worst": frame["startup_worst"].map(_number),
        "test mean ± 95% CI": [_plus_minus(r.test_mean, r.test_ci95, r.test_n or None) for r in frame.itertuples()],
        "one new seed (95% PI)": [f"± {_number(v)}" if _number(v) else "" for v in frame["test_pi95"]],
        "test vs bp ± 95% CI": [_plus_minus(r.delta_vs_bp, r.delta_vs_bp_ci95) for r in frame.itertuples()],
        "p vs bp": frame["p_vs_bp"].map(p_value),
        "p (Holm)": frame["p_vs_bp_holm"].map(p_value),
        "W-B angle (deg)": frame["wb_angle"].map(lambda v: v if isinstance(v, str) else ""),
        "update vs bp (deg)": frame["update_angle"].map(lambda v: v if isinstance(v, str) else ""),
    })


def _notes(frame: pd.DataFrame) -> list[str]:
    """Markdown lines about rows that need them: notes shared by many studies (a run older than test seeds or
    the start-up mark) once, with the studies listed; any other note per study."""
    def listed(rows, detail=lambda r: "") -> str:
        return ", ".join(f"`{r.study}`{detail(r)}" for r in rows)

    rows = list(frame.itertuples())
    old_startup = [r for r in rows if r.startup_note == PREDATES_STARTUP_MARK]
    old_test = [r for r in rows if r.test_note == PREDATES_TEST_SEEDS]
    lines = []
    if old_startup:
        lines.append(f"- Start-up {PREDATES_STARTUP_MARK}: {listed(old_startup, lambda r: f' ({r.startup_unscored} unscored)')}.")
    if old_test:
        lines.append(f"- Test: {PREDATES_TEST_SEEDS}: {listed(old_test)}.")
    for r in rows:
        if r.startup_note and r.startup_note != PREDATES_STARTUP_MARK:
            lines.append(f"- `{r.study}`: start-up {r.startup_note}")
        elif not r.startup_note and r.startup_unscored:
            lines.append(f"- `{r.study}`: {r.startup_unscored} start-up trial(s) ended without a score (diverged)")
        if r.test_note and r.test_note != PREDATES_TEST_SEEDS:
            lines.append(f"- `{r.study}`: test {r.test_note}")
    return ["", "Notes:", "", *lines] if lines else []


def to_markdown(frame: pd.DataFrame) -> str:
    parts = [markdown_table(summary_table(frame)), "", SPREAD_NOTE, "", TEST_NOTE]
    parts += [*_notes(frame)]
    parts += ["", "## Best hyperparameters", ""]
    for title, table in best_params_tables(frame):
        parts += [f"### {title}", "", markdown_table(table), ""]
    return "\n".join(parts).rstrip() + "\n"


# The bars of each rule: (column, error-bar column, legend label, colour)

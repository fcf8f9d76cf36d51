"""Statistics of test scores over seeds: Student-t intervals of the mean and for one new seed, Welch's comparison with
backprop, and Holm's correction for the several rules compared with it.

Pure functions of score arrays; the report (``hpo.report.summary``) applies them to the per-seed test scores a study
stores (``hpo.study.heldout``). Only the t distribution's quantile and survival functions come from scipy; the
formulas are written out here, so the tests can check them against closed forms and against
``scipy.stats.ttest_ind``.

A quantity that needs a variance (an interval, a p-value) is NaN when a sample has fewer than two scores, or
when both samples have zero variance (t is then undefined): an honest "unknown", never a made-up 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import special  # the t distribution's functions, without the 2 s import of scipy.stats

CONFIDENCE = 0.95  # of every interval in the summaries (the ``*_ci95`` columns)


@dataclass(frozen=True)
class SeedSummary:
    """Mean and spread of one configuration's test scores over seeds."""

    n: int  # number of scores (seeds)
    mean: float  # their mean (NaN without scores)
    std: float  # sample standard deviation (n - 1 in the denominator); NaN for n < 2
    ci95: float  # half-width of the Student-t interval of the mean (n - 1 degrees of freedom); NaN for n < 2
    pi95: float  # half-width of the Student-t prediction interval of one new seed's score; NaN for n < 2


@dataclass(frozen=True)
class Comparison:
    """Welch's comparison of two samples' means (``a`` minus ``b``)."""

    delta: float  # mean(a) - mean(b); NaN if either sample is empty
    ci95: float  # half-width of Welch's interval of delta (Welch-Satterthwaite degrees of freedom)
    p: float  # two-sided p-value of Welch's t-test of equal means
    dof: float  # Welch-Satterthwaite degrees of freedom


def t_quantile(confidence: float, dof: float) -> float:
    """The t distribution's two-sided critical value: P(|T| <= value) = ``confidence`` for ``dof`` degrees."""
    return float(special.stdtrit(dof, 0.5 + confidence / 2))


def t_half_width(std: float, n: int, confidence: float = CONFIDENCE) -> float:
    """Half-width of the Student-t interval of a mean of ``n`` values with sample standard deviation ``std``."""
    if n < 2 or not math.isfinite(std):
        return math.nan
    return t_quantile(confidence, n - 1) * std / math.sqrt(n)


def prediction_half_width(std: float, n: int, confidence: float = CONFIDENCE) -> float:
    """Half-width of the Student-t prediction interval of one more value drawn like ``n`` values with sample
    standard deviation ``std``: ``t * std * sqrt(1 + 1/n)``. What a rerun with one new seed should land in; the
    interval of the mean (``t_half_width``) is ``sqrt(n + 1)`` times narrower and says nothing about one seed."""
    if n < 2 or not math.isfinite(std):
        return math.nan
    return t_quantile(confidence, n - 1) * std * math.sqrt(1 + 1 / n)


def summarize_scores(scores: Sequence[float], confidence: float = CONFIDENCE) -> SeedSummary:
    """Mean, sample std and the half-widths of the t intervals of the mean and of one new seed (``SeedSummary``)."""
    values = np.asarray(scores, dtype=float)
    n = len(values)
    if n == 0:
        return SeedSummary(0, math.nan, math.nan, math.nan, math.nan)
    std = float(values.std(ddof=1)) if n >= 2 else math.nan
    return SeedSummary(n, float(values.mean()), std, t_half_width(std, n, confidence),
                       prediction_half_width(std, n, confidence))


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Comparison:
    """Welch's unequal-variance comparison of the means of ``a`` and ``b`` (delta = mean a - mean b).

    With ``v = var(a)/n_a + var(b)/n_b`` (sample variances), ``t = delta / sqrt(v)`` has approximately a t
    distribution with ``v**2 / ((var(a)/n_a)**2/(n_a-1) + (var(b)/n_b)**2/(n_b-1))`` degrees of freedom; the
    interval is ``delta +- t_crit * sqrt(v)`` and the p-value ``2 P(T > |t|)``.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(x) or not len(y):
        return Comparison(math.nan, math.nan, math.nan, math.nan)
    delta = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return Comparison(delta, math.nan, math.nan, math.nan)
    share_a, share_b = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    variance = share_a + share_b
    if variance == 0:
        return Comparison(delta, math.nan, math.nan, math.nan)
    dof = float(variance**2 / (share_a**2 / (len(x) - 1) + share_b**2 / (len(y) - 1)))
    se = math.sqrt(variance)
    p = float(2 * special.stdtr(dof, -abs(delta) / se))
    return Comparison(delta, t_quantile(confidence, dof) * se, p, dof)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (NaN kept as NaN, not counted): the family-wise error rate of
    several rules each compared with backprop stays at the threshold, less conservatively than Bonferroni. The
    adjusted p of the i-th smallest of m is ``max over j <= i of min(1, (m - j + 1) p_(j))``."""
    values = np.asarray(p_values, dtype=float)
    known = np.flatnonzero(np.isfinite(values))
    adjusted = np.full(len(values), math.nan)
    running = 0.0
    for rank, index in enumerate(known[np.argsort(values[known], kind="stable")]):
        running = max(running, min(1.0, (len(known) - rank) * values[index]))
        adjusted[index] = running
    return adjusted.tolist()

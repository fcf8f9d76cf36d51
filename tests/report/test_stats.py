"""hpo.report.stats against closed forms (printed t tables, hand-computed Welch) and against scipy's own t-tests."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from hpo.report.stats import summarize_scores, t_half_width, t_quantile, welch


@pytest.mark.parametrize("dof,table", [(1, 12.7062), (4, 2.7764), (9, 2.2622), (29, 2.0452)])
def test_t_quantile_matches_the_printed_table(dof, table):
    assert t_quantile(0.95, dof) == pytest.approx(table, abs=1e-4)


def test_t_interval_of_known_scores():
    scores = [0.90, 0.92, 0.94, 0.96, 0.98]
    summary = summarize_scores(scores)
    # mean 0.94, sample std sqrt(0.004 / 4) = 0.0316228, t(0.975, 4) = 2.776445
    assert summary.n == 5 and summary.mean == pytest.approx(0.94)
    assert summary.std == pytest.approx(math.sqrt(0.004 / 4))
    assert summary.ci95 == pytest.approx(2.776445 * math.sqrt(0.004 / 4) / math.sqrt(5), rel=1e-6)
    low, high = scipy_stats.t.interval(0.95, 4, loc=np.mean(scores), scale=scipy_stats.sem(scores))
    assert summary.ci95 == pytest.approx((high - low) / 2)


def test_one_seed_has_a_mean_and_no_interval():
    summary = summarize_scores([0.9])
    assert summary.n == 1 and summary.mean == 0.9
    assert math.isnan(summary.std) and math.isnan(summary.ci95)
    assert math.isnan(t_half_width(0.1, 1))
    assert summarize_scores([]).n == 0 and math.isnan(summarize_scores([]).mean)


def test_two_seeds_use_one_degree_of_freedom():
    summary = summarize_scores([0.8, 0.9])
    assert summary.ci95 == pytest.approx(12.7062 * (0.1 / math.sqrt(2)) / math.sqrt(2), rel=1e-5)


@pytest.mark.parametrize(
    "a,b",
    [
        ([0.93, 0.94, 0.95, 0.94, 0.935], [0.94, 0.942, 0.938, 0.941, 0.939]),  # unequal variances
        ([0.90, 0.91, 0.92], [0.95, 0.96, 0.94, 0.97, 0.95, 0.96]),  # unequal sizes, a clear difference
        ([0.5, 0.7], [0.6, 0.61, 0.59]),
    ],
)
def test_welch_matches_scipy(a, b):
    result = welch(a, b)
    reference = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert result.delta == pytest.approx(np.mean(a) - np.mean(b))
    assert result.p == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.dof == pytest.approx(reference.df, rel=1e-9)
    interval = reference.confidence_interval(0.95)
    assert result.ci95 == pytest.approx((interval.high - interval.low) / 2, rel=1e-9)
    assert result.delta - result.ci95 == pytest.approx(interval.low, abs=1e-12)


def test_welch_by_hand():
    # a: mean 2, var 1 (n 3); b: mean 0, var 4 (n 2): v = 1/3 + 2 = 7/3, dof = v^2 / ((1/3)^2/2 + 2^2/1)
    a, b = [1.0, 2.0, 3.0], [-math.sqrt(2), math.sqrt(2)]
    result = welch(a, b)
    variance = 1 / 3 + 2
    dof = variance**2 / ((1 / 3) ** 2 / 2 + 4 / 1)
    assert result.delta == pytest.approx(2.0)
    assert result.dof == pytest.approx(dof)
    assert result.p == pytest.approx(2 * scipy_stats.t.sf(2 / math.sqrt(variance), dof))
    assert result.ci95 == pytest.approx(scipy_stats.t.ppf(0.975, dof) * math.sqrt(variance))


def test_welch_without_variance_gives_the_difference_only():
    one_seed = welch([0.9], [0.95, 0.96])
    assert one_seed.delta == pytest.approx(-0.055) and math.isnan(one_seed.p) and math.isnan(one_seed.ci95)
    constant = welch([0.9, 0.9], [0.8, 0.8])
    assert constant.delta == pytest.approx(0.1) and math.isnan(constant.p)
    assert math.isnan(welch([], [0.9, 0.8]).delta)

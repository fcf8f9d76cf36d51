"""benchmarks.protocols: busy hours as the union of trial intervals, and what counts as the same answer."""

from datetime import datetime, timedelta

from benchmarks.protocols import busy_seconds, same_answer


def test_busy_time_counts_parallel_trials_once_and_pauses_not_at_all():
    t0 = datetime(2026, 1, 1)
    at = lambda s: t0 + timedelta(seconds=s)  # noqa: E731
    # two workers overlapping (0-10, 5-12), a pause, then one trial (100-110): 12 + 10 seconds
    assert busy_seconds([(at(100), at(110)), (at(5), at(12)), (at(0), at(10))]) == 22.0
    assert busy_seconds([(at(0), at(10)), (at(2), at(3))]) == 10.0  # one inside another
    assert busy_seconds([]) == 0.0


def test_the_same_answer_is_within_a_third_of_a_point_or_not_told_apart():
    reference = [0.890, 0.891, 0.889, 0.892, 0.888]
    assert same_answer([s + 0.0025 for s in reference], reference)  # 0.25 points, significant: same
    assert not same_answer([s - 0.006 for s in reference], reference)  # 0.6 points, significant
    noisy = [0.880, 0.900, 0.870, 0.905, 0.875]
    assert same_answer(noisy, reference)  # 0.4 points lower on average, but Welch's p >= 0.05


def test_several_runs_are_answered_by_the_best_cv_never_the_test_and_cost_all_together():
    from benchmarks.protocols import best_by_cv

    low_cv_high_test = {"best": 0.880, "test": [0.95, 0.95], "busy_s": 100.0, "params": {"depth": 1}}
    high_cv = {"best": 0.890, "test": [0.85, 0.86], "busy_s": 50.0, "params": {"depth": 2}}
    chosen = best_by_cv([low_cv_high_test, high_cv])
    assert chosen["params"] == {"depth": 2} and chosen["run"] == 1 and chosen["test"] == [0.85, 0.86]
    assert chosen["busy_s"] == 150.0  # both runs were paid for
    unscored = {**low_cv_high_test, "test": []}  # a run not yet test-scored: the study does not count yet
    assert best_by_cv([unscored, high_cv])["test"] == []

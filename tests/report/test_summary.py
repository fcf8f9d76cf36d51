"""hpo.report.summary regenerates summaries, charts and the index page from a storage alone (no training).

The studies here are written directly with Optuna (known values, no training), in the format hpo.run stores.
"""

from __future__ import annotations

import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from scipy import stats as scipy_stats

from hpo.report import __main__ as report_command
from hpo.report import charts as report_charts
from hpo.report import summary as report
from hpo.storage import open_storage


def add_study(storage_url: str, name: str, dataset: str, algo: str, values: list[float], model: str = "mlp",
              test_scores: list[float] | None = None, startup: int = 0):
    """A finished study as hpo.run leaves it: study attributes, and per trial a value, params and user attrs.

    ``test_scores``: the best trial's per-seed test scores (default: one score in the format of the runs before
    test seeds); ``startup``: the first trials carry the start-up mark (default: none, as before it existed).
    """
    study = optuna.create_study(study_name=name, storage=open_storage(storage_url), direction="maximize")
    for key, value in {"dataset": dataset, "model": model, "algo": algo, "metric": "accuracy"}.items():
        study.set_user_attr(key, value)
    for i, value in enumerate(values):
        folds = [value - 0.01, value + 0.01]
        losses = [[1.0, 1.0 - value], [1.1, 1.1 - value]]
        curves = {"train_score": [[value / 2, value], [value / 2, value]], "val_score": [folds, folds],
                  "train_loss": losses, "val_loss": losses}
        study.add_trial(
            optuna.trial.create_trial(
                params={"learning_rate": 10.0 ** -(i % 6 + 1)},  # within the distribution for any number
                distributions={"learning_rate": FloatDistribution(1e-6, 1.0, log=True)},
                value=value,
                intermediate_values={0: value / 2, 1: value},
                user_attrs={
                    "fold_scores": folds, "fold_std": 0.01, "wall_seconds": 1.0 + i, "compile_seconds": 0.5,
                    "curves": {"epoch": [1.0, 2.0], "series": {k: np.transpose(v).tolist() for k, v in curves.items()}},
                    **({"startup": True} if i < startup else {}),
                },
            )
        )
    best = int(np.argmax(values))
    if test_scores is None:
        study.set_user_attr("test", {"trial": best, "score": values[best] - 0.02, "metric": "accuracy"})
    else:
        study.set_user_attr("test", {"trial": best, "seeds": list(range(len(test_scores))), "scores": test_scores,
                                     "metric": "accuracy"})
    return study


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG after checking its signature and the CRC of its header chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])
    return struct.unpack(">II", data[16:24])


def assert_real_image(path: Path) -> None:
    import matplotlib.image

    width, height = png_size(path)
    assert width > 200 and height > 200
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 0.01  # something is drawn, not a blank canvas


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.targets.update(v for k, v in attrs if k in ("href", "src") and v)


def index_targets(results: Path) -> set[str]:
    parser = Links()
    parser.feed((results / "index.html").read_text())
    return parser.targets


def charts(results: Path) -> set[str]:
    return {
        p.relative_to(results).as_posix()
        for p in results.rglob("*")
        if p.suffix in (".png", ".html") and p.name != "index.html" and not p.name.startswith(".")
    }


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("storage") / "studies.journal")
    add_study(url, "digits-mlp-fa", "digits", "fa", [0.5, 0.8, 0.7])
    add_study(url, "digits-mlp-bp", "digits", "bp", [0.9, 0.6])
    add_study(url, "mnist-5k-mlp-kp", "mnist-5k", "kp", [0.4, 0.6, 0.5, 0.3])
    return url


def test_mixed_datasets_and_rules(storage, tmp_path, capsys):
    results = tmp_path / "results"
    assert report_command.main(["--storage", storage, "--results-dir", str(results)]) == 0
    frame = pd.read_csv(results / "summary.csv").set_index("study")
    assert sorted(frame.index) == ["digits-mlp-bp", "digits-mlp-fa", "mnist-5k-mlp-kp"]
    kp = frame.loc["mnist-5k-mlp-kp"]
    values = np.array([0.4, 0.6, 0.5, 0.3])
    assert (kp.complete, kp.best, kp.startup_worst, kp.best_trial, kp.startup_n) == (4, 0.6, 0.3, 1, 4)
    assert kp.startup_mean == pytest.approx(values.mean()) and kp.startup_std == pytest.approx(values.std(ddof=1), rel=1e-5)
    # stored before test seeds: one score, no interval, and the table says so
    assert (kp.test_n, kp.test_mean) == (1, pytest.approx(0.58)) and np.isnan(kp.test_ci95)
    assert "predates test seeds" in kp.test_note and "predates the start-up mark" in kp.startup_note
    assert np.isnan(kp.delta_vs_bp)  # no bp study on mnist-5k
    fa = frame.loc["digits-mlp-fa"]
    assert fa.delta_vs_bp == pytest.approx((0.8 - 0.02) - (0.9 - 0.02)) and np.isnan(fa.p_vs_bp)  # n = 1 each
    assert frame.loc["digits-mlp-bp", "wall_seconds"] == pytest.approx(3.0)

    assert_real_image(results / "comparison.png")
    assert_real_image(results / "efficiency" / "digits-mlp.png")
    html = (results / "comparison.html").read_text()
    for text in ("digits", "mnist-5k", '"fa"', '"bp"', '"kp"'):  # panel titles and bar labels in the figure JSON
        assert text in html
    for name in frame.index:
        assert_real_image(results / "studies" / name / "history.png")
        assert (results / "studies" / name / "importance.html").is_file()
    # the index shows every chart the report wrote (and the tables)
    assert charts(results) <= index_targets(results)
    assert {"summary.csv", "summary.md", "comparison.png", "comparison.html"} <= index_targets(results)
    assert "digits-mlp-fa" in capsys.readouterr().out


def test_one_study_alone_still_draws(storage, tmp_path):
    results = tmp_path / "results"
    assert report_command.main(["--storage", storage, "--results-dir", str(results), "--study", "mnist-*"]) == 0
    assert pd.read_csv(results / "summary.csv")["study"].tolist() == ["mnist-5k-mlp-kp"]
    assert_real_image(results / "comparison.png")
    (title, group), = report_charts._groups(report.summarize(report.load_studies(storage, "mnist-*")))
    assert title == "mnist-5k / mlp" and group["label"].tolist() == ["kp"]
    low, high = report_charts._score_limits(group)
    kp = group.iloc[0]
    assert 0.0 <= low < min(kp.startup_worst, kp.startup_mean - kp.startup_std)  # every bar and error bar in view
    assert max(kp.best, kp.startup_mean + kp.startup_std, kp.test_mean) < high <= 1.0
    assert charts(results) <= index_targets(results)


@pytest.mark.parametrize("trials,panels", [(4, 1), (14, 2)])
def test_the_efficiency_chart_zooms_only_past_the_start_up_and_draws_nothing_outside_its_panels(tmp_path, trials, panels):
    """A study shorter than its random start-up (the 2-core grid's 8 segregated-dendrites trials) has nothing to zoom
    on: one panel, no layout warning (its zoomed panel had an inverted, empty range and the image grew to 2044
    pixels). Past the start-up, two panels, and nothing drawn far outside them."""
    import warnings

    from hpo.report.comparison import STARTUP_TRIALS, efficiency_png

    url = f"sqlite:///{tmp_path / 's.db'}"
    values = list(np.linspace(0.5, 0.8, trials))
    study = add_study(url, "fm-mlp-sd", "fashion-mnist", "sd", values, startup=min(trials, STARTUP_TRIALS))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "Tight layout not applied" among them
        (path,) = efficiency_png([study], tmp_path)
    assert_real_image(path)
    width, height = png_size(path)
    # 6.4 or 10.5 inches at 100 dpi, plus the legend beside the last panel: nothing further out
    assert width < (900 if panels == 1 else 1200), width


def test_regenerating_gives_the_same_numbers(storage, tmp_path):
    first = report.write_reports(storage, tmp_path / "a", out=lambda _: None)
    second = report.write_reports(storage, tmp_path / "b", out=lambda _: None)
    pd.testing.assert_frame_equal(first, second)
    files = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    assert {"summary.csv", "summary.md", "comparison.html", "index.html"} <= {p.as_posix() for p in files}
    for relative, data in files.items():  # every file byte for byte, so a regenerated committed run is unchanged
        assert (tmp_path / "b" / relative).read_bytes() == data, relative


def test_bars_of_one_rule_in_two_studies_are_told_apart():
    frame = pd.DataFrame(
        {
            "study": ["digits-fa-seed0", "digits-fa-seed1", "digits-bp", "other"],
            "dataset": ["digits", "digits", "digits", ""], "model": ["mlp", "mlp", "mlp", ""],
            "algo": ["fa", "fa", "bp", ""], "complete": [3, 3, 3, 1],
        }
    )
    groups = dict(report_charts._groups(frame))
    assert groups["digits / mlp"]["label"].tolist() == ["digits-fa-seed0", "digits-fa-seed1", "bp"]
    assert groups["studies"]["label"].tolist() == ["other"]


def test_index_discovers_other_charts(tmp_path):
    (tmp_path / "studies" / "s").mkdir(parents=True)
    (tmp_path / "diagnostics").mkdir()
    for name in ("comparison.png", "studies/s/alignment.png", "studies/s/alignment.html", "diagnostics/angles.html",
                 "summary.csv", ".comparison.tmp.png", "notes.bin"):
        (tmp_path / name).write_bytes(b"x")
    report.write_index(tmp_path)
    targets = index_targets(tmp_path)
    assert {"comparison.png", "studies/s/alignment.png", "studies/s/alignment.html", "diagnostics/angles.html",
            "summary.csv"} <= targets
    assert not {".comparison.tmp.png", "notes.bin", "index.html"} & targets
    page = (tmp_path / "index.html").read_text()
    assert page.index("comparison.png") < page.index("studies/s/") < page.index("diagnostics/angles.html")
    assert not list(tmp_path.glob(".index*"))  # written atomically: no temporary file left behind


def test_missing_storage_is_one_line(tmp_path, capsys):
    assert report_command.main(["--storage", str(tmp_path / "none.journal"), "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: storage") and "does not exist" in err and err.count("\n") == 1


def test_fresh_clone_without_local_database_points_to_the_committed_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    add_study(report.BUNDLED_STORAGE, "digits-mlp-fa", "digits", "fa", [0.5, 0.7])
    assert report_command.main([]) == 2  # the default storage, sqlite:///studies/studies.db, does not exist
    assert capsys.readouterr().err == (
        "error: storage 'sqlite:///studies/studies.db' does not exist; the committed run is in "
        "studies/bundled.journal: add --storage studies/bundled.journal\n"
    )
    assert report_command.main(["--storage", report.BUNDLED_STORAGE]) == 0
    assert pd.read_csv(tmp_path / "results" / "bundled" / "summary.csv")["best"].tolist() == [0.7]  # its own folder


def test_error_bars_above_one_are_not_cut_off():
    """Accuracy whose mean + spread passes 1 (a skewed spread): the axis goes above 1 rather than clipping the
    interval, and below the lowest point; points with intervals need no zero baseline (bars would)."""
    group = pd.DataFrame({"best": [0.98], "startup_mean": [0.92], "startup_std": [0.16], "startup_worst": [0.13],
                          "test_mean": [0.97], "test_ci95": [0.05], "direction": ["maximize"]})
    low, high = report_charts._score_limits(group)
    assert 0 < low < 0.13 and high > 0.92 + 0.16 and high > 0.97 + 0.05


def test_comparison_legend_covers_no_bar(storage, tmp_path):
    """One legend for the figure, outside every panel's area."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = report.summarize(report.load_studies(storage))
    saved = []
    original = plt.Figure.savefig
    plt.Figure.savefig = lambda fig, *a, **k: (saved.append(fig), original(fig, *a, **k))[1]
    try:
        report.comparison_png(frame, tmp_path / "comparison.png")
    finally:
        plt.Figure.savefig = original
    (fig,) = saved
    assert not any(ax.get_legend() for ax in fig.axes)  # no legend inside a panel
    (legend,) = fig.legends
    fig.canvas.draw()
    box = legend.get_window_extent()
    assert all(not box.overlaps(ax.get_window_extent()) for ax in fig.axes if ax.get_visible())
def test_rules_are_compared_with_backprop_by_welch(tmp_path):
    url = str(tmp_path / "s.journal")
    bp_scores, fa_scores, kp_scores = [0.94, 0.942, 0.938, 0.941, 0.939], [0.93, 0.925, 0.935, 0.928, 0.931], [0.9]
    add_study(url, "mnist-5k-mlp-bp", "mnist-5k", "bp", [0.9, 0.93], test_scores=bp_scores, startup=2)
    add_study(url, "mnist-5k-mlp-fa", "mnist-5k", "fa", [0.85, 0.92, 0.6], test_scores=fa_scores, startup=3)
    add_study(url, "mnist-5k-mlp-kp", "mnist-5k", "kp", [0.91], test_scores=kp_scores, startup=1)
    add_study(url, "digits-mlp-fa", "digits", "fa", [0.9], test_scores=[0.95, 0.96])
    results = tmp_path / "results"
    frame = report.write_reports(url, results, out=lambda _: None).set_index("study")
    csv = pd.read_csv(results / "summary.csv").set_index("study")
    for column in ("test_mean", "test_std", "test_ci95", "delta_vs_bp", "p_vs_bp"):
        assert column in csv.columns
    fa = csv.loc["mnist-5k-mlp-fa"]
    welch = scipy_stats.ttest_ind(fa_scores, bp_scores, equal_var=False)
    interval = welch.confidence_interval(0.95)
    assert fa.delta_vs_bp == pytest.approx(np.mean(fa_scores) - np.mean(bp_scores), rel=1e-5)
    assert fa.p_vs_bp == pytest.approx(welch.pvalue, rel=1e-5) and fa.p_vs_bp < 0.05
    assert fa.delta_vs_bp_ci95 == pytest.approx((interval.high - interval.low) / 2, rel=1e-5)
    assert fa.test_n == 5 and fa.test_mean == pytest.approx(np.mean(fa_scores), rel=1e-5)
    assert fa.test_std == pytest.approx(np.std(fa_scores, ddof=1), rel=1e-5)
    assert fa.test_ci95 == pytest.approx(scipy_stats.t.ppf(0.975, 4) * scipy_stats.sem(fa_scores), rel=1e-5)
    assert (fa.startup_n, fa.startup_worst) == (3, 0.6)  # the marked start-up trials
    kp = csv.loc["mnist-5k-mlp-kp"]  # one seed: a difference, but no interval and no p
    assert kp.delta_vs_bp == pytest.approx(0.9 - np.mean(bp_scores), rel=1e-5)
    assert np.isnan(kp.delta_vs_bp_ci95) and np.isnan(kp.p_vs_bp)
    for study in ("mnist-5k-mlp-bp", "digits-mlp-fa"):  # bp itself, and a dataset without bp: empty
        assert csv.loc[study, ["delta_vs_bp", "delta_vs_bp_ci95", "p_vs_bp"]].isna().all()
    markdown = (results / "summary.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| mnist-5k-mlp-fa |"))
    assert f"{np.mean(fa_scores):.4f} ± {frame.loc['mnist-5k-mlp-fa', 'test_ci95']:.4f} (n=5)" in row
    assert f"{fa.delta_vs_bp:.4f} ± " in row and report_charts.p_value(fa.p_vs_bp) in row
    assert "## Best hyperparameters" in markdown and "| learning_rate |" in markdown.replace("trial | ", "")
    page = (results / "index.html").read_text()
    assert "Best hyperparameters" in page and "p vs bp" in page and report_charts.p_value(fa.p_vs_bp) in page


def test_best_so_far_counts_pruned_trials_as_spent_budget():
    from hpo.report.comparison import best_so_far

    study = optuna.create_study(direction="maximize")
    distributions = {"x": FloatDistribution(0, 1)}
    for state, value in [(TrialState.PRUNED, None), (TrialState.COMPLETE, 0.5), (TrialState.PRUNED, None),
                         (TrialState.COMPLETE, 0.4), (TrialState.COMPLETE, 0.7), (TrialState.FAIL, None)]:
        study.add_trial(optuna.trial.create_trial(state=state, value=value, params={"x": 0.1},
                                                  distributions=distributions,
                                                  intermediate_values={0: 0.3} if state == TrialState.PRUNED else {}))
    np.testing.assert_array_equal(best_so_far(study), [np.nan, 0.5, 0.5, 0.5, 0.7])  # the failed trial is not one


def test_best_hyperparameters_a_column_per_parameter_rounded_and_grouped_by_space():
    frame = pd.DataFrame({
        "study": ["a", "b", "c"], "dataset": ["d", "d", "d"], "model": ["mlp", "mlp", "mlp"],
        "algo": ["bp", "fa", "sd"], "best_trial": [3, 4, 5],
        "best_params": [
            '{"lr_adam": 0.0012345678, "width": 512, "optimizer": "adam"}',
            '{"lr_adam": 0.25, "width": 64, "optimizer": "adam", "feedback_scale": 1.23456}',
            '{"sd_phase": 30.0, "sd_width1": 250, "sd_spiking_feedback": false}',
        ],
    })
    (rules_title, rules), (sd_title, sd) = report.best_params_tables(frame)
    assert rules_title == "mlp: bp/fa" and sd_title == "mlp: sd"
    assert list(rules.columns) == ["dataset", "model", "rule", "trial", "feedback_scale", "lr_adam", "optimizer", "width"]
    assert rules.iloc[0].tolist() == ["d", "mlp", "bp", "#3", "", 0.00123, "adam", 512]  # empty where not asked
    assert rules.iloc[1]["feedback_scale"] == 1.23 and sd.iloc[0]["sd_spiking_feedback"] is False

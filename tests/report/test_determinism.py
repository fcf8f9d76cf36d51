"""A report is a function of the storage: written twice it is the same bytes, and the notebook draws its charts
outside the committed results/ folders."""

from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from hpo.report import write_reports
from hpo.report.workspace import notebook_settings
from hpo.storage import open_storage


def make_storage(path: str) -> None:
    for algo in ("bp", "fa"):
        study = optuna.create_study(study_name=f"digits-mlp-{algo}", storage=open_storage(path), direction="maximize")
        for key, value in {"dataset": "digits", "model": "mlp", "algo": algo, "metric": "accuracy"}.items():
            study.set_user_attr(key, value)
        for i in range(12):
            curve = {"epoch": [1.0, 2.0], "series": {"val_score": [[0.3, 0.5 + i / 100], [0.3, 0.52]],
                                                      "update_angle/dense_0": [[40.0, 30.0], [41.0, 31.0]]}}
            study.add_trial(optuna.trial.create_trial(
                params={"lr": 10.0 ** -(1 + i % 4), "width": (64, 128)[i % 2]},
                distributions={"lr": FloatDistribution(1e-5, 1.0, log=True),
                               "width": CategoricalDistribution((64, 128))},
                value=0.5 + i / 100 + (algo == "bp") / 10,
                user_attrs={"curves": curve, "diagnostics": {"update_angle/dense_0": 30.5}, "startup": i < 10},
            ))


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_report_written_twice_is_the_same_bytes(tmp_path):
    storage = str(tmp_path / "s.journal")
    make_storage(storage)
    write_reports(storage, tmp_path / "one", out=lambda line: None)
    write_reports(storage, tmp_path / "two", out=lambda line: None)
    one, two = contents(tmp_path / "one"), contents(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) > 10
    assert [name for name in one if one[name] != two[name]] == []


def test_the_notebook_draws_outside_the_committed_results(monkeypatch):
    monkeypatch.delenv("HPO_RESULTS_DIR", raising=False)
    monkeypatch.setenv("HPO_STORAGE", "studies/bundled.journal")
    storage, results = notebook_settings()
    assert storage == "studies/bundled.journal" and results == str(Path("notebooks") / "output" / "bundled")
    monkeypatch.setenv("HPO_RESULTS_DIR", "/somewhere")
    assert notebook_settings()[1] == "/somewhere"


ROOT = Path(__file__).resolve().parents[2]
TEXT_SUFFIXES = (".csv", ".md", ".html")  # a PNG's bytes also depend on the installed matplotlib and FreeType


def test_the_committed_fashion_mnist_report_regenerates_byte_for_byte(tmp_path, monkeypatch):
    """Every table and page of results/fashion-mnist/ is what the report writes from the committed journal, on
    any machine: no float printed to its last digit, no unseeded estimate (parameter importances are bootstrapped
    from a fixed seed and rounded)."""
    monkeypatch.chdir(ROOT)  # the index names the storage as the README's command does: relative to the project
    committed = ROOT / "results" / "fashion-mnist"
    write_reports("studies/fashion-mnist.journal", tmp_path, out=lambda line: None)
    written = contents(tmp_path)
    expected = {name: data for name, data in contents(committed).items() if name.endswith(TEXT_SUFFIXES)}
    assert len(expected) > 20 and set(expected) <= set(written)
    assert [name for name in expected if written[name] != expected[name]] == []

"""A storage is shared (a PostgreSQL server, a journal on a shared disk): what its studies say never chooses where
the report writes. Every name that reaches a path is a component of the project's own making (``path_component``)."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from hpo.files import path_component
from hpo.record import write_study
from hpo.report.__main__ import main as report
from hpo.storage import open_storage


@pytest.mark.parametrize("dataset", ["../../escaped", "/ABSOLUTE/escaped", "a/../../escaped"])
def test_a_planted_dataset_attribute_never_writes_outside_the_results_folder(tmp_path, dataset):
    absolute = dataset.replace("/ABSOLUTE", str(tmp_path / "outside"))
    storage = str(tmp_path / "shared.journal")
    study = optuna.create_study(study_name="planted", storage=open_storage(storage), direction="maximize")
    write_study(study, dataset=absolute, model="../mlp", algo="fa", metric="accuracy", folds=3, epochs=1, seed=0)
    for x in (0.1, 0.2, 0.3):
        study.add_trial(create_trial(params={"x": x}, distributions={"x": FloatDistribution(0, 1)}, value=x))
    results = tmp_path / "work" / "results"
    assert report(["--storage", storage, "--results-dir", str(results)]) == 0
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - {tmp_path / "shared.journal"}
    assert written and all(results in p.parents for p in written), sorted(map(str, written))
    charts = list((results / "efficiency").iterdir())
    assert [p.name for p in charts] == [path_component(f"{absolute}-../mlp") + ".png"]
    assert not (tmp_path / "outside").exists() and not (tmp_path / "escaped").exists()


def test_path_components_keep_plain_names_and_map_the_rest():
    assert path_component("fashion-mnist-mlp") == "fashion-mnist-mlp"
    for name in ("../x", "/etc/passwd", "a/b", "..", ".hidden", "x\ny", "x" * 300):
        component = path_component(name)
        assert "/" not in component and component not in (".", "..") and not component.startswith(".")
        assert len(component) <= 100 and "+" in component
    assert path_component("a/b") != path_component("a_b")


def small_storage(tmp_path):
    storage = str(tmp_path / "s.journal")
    study = optuna.create_study(study_name="digits-mlp-fa", storage=open_storage(storage), direction="maximize")
    write_study(study, dataset="digits", model="mlp", algo="fa", metric="accuracy", folds=3, epochs=1, seed=0)
    for x in (0.1, 0.2, 0.3):
        study.add_trial(create_trial(params={"x": x}, distributions={"x": FloatDistribution(0, 1)}, value=x))
    return storage


def test_a_results_folder_marker_that_links_elsewhere_is_never_read_out(tmp_path, monkeypatch, capsys):
    """A results folder's .storage linked to another file printed that file's whole content in the error line."""
    monkeypatch.chdir(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-LINE\n")
    storage = small_storage(tmp_path)
    folder = tmp_path / "results" / "s"
    folder.mkdir(parents=True)
    (folder / ".storage").symlink_to(secret)
    assert report(["--storage", storage]) == 2
    err = capsys.readouterr().err
    assert "TOP-SECRET" not in err and err.count("\n") == 1
    assert "holds the report of an unknown storage: its .storage is not a file this project wrote" in err


def test_a_folder_where_a_report_file_goes_keeps_the_previous_report_whole(tmp_path, capsys):
    """index.html as a folder: the report said the previous one was kept and published the new set anyway."""
    storage, results = small_storage(tmp_path), tmp_path / "r"
    assert report(["--storage", storage, "--results-dir", str(results)]) == 0
    (results / "index.html").unlink()
    (results / "index.html").mkdir()
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in results.rglob("*") if p.is_file()}
    assert report(["--storage", storage, "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert f"({results / 'index.html'}: a directory stands where the file goes); the previous reports are kept" in err
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in results.rglob("*") if p.is_file()}
    assert after == before and (results / "index.html").is_dir()


def test_a_fifo_where_a_report_file_goes_is_refused_not_waited_on(tmp_path):
    import os

    storage, results = small_storage(tmp_path), tmp_path / "r"
    results.mkdir()
    os.mkfifo(results / "plotly.min.js")
    assert report(["--storage", storage, "--results-dir", str(results)]) == 2  # refused at once, nothing written
    assert not (results / "summary.csv").exists()

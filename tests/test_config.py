"""hpo.config: mistyped values, oversized spaces, unreadable grid files and studies refused on their loaded dataset
are one line each and leave nothing behind."""

from __future__ import annotations

import pytest

from hpo.run import main

# ---------------------------------------------------------------------------------------------------------
# Mistyped configuration values, validated before anything is created

MISTYPED = [
    ("study_name = 7", "--study-name must be a string, got 7"),
    ('results_dir = ["a"]', "--results-dir must be a string, got ['a']"),
    ("data_dir = 3", "--data-dir must be a string, got 3"),
    ("cache_dir = 3", "--cache-dir must be a string, got 3"),
    ("storage = 5", "--storage must be a string, got 5"),
    ("seed = -1", "--seed must be an integer >= 0, got -1"),
    ("trials = 2.5", "--trials must be an integer >= 1, got 2.5"),
    ("model = 3", "--model must be a string, got 3"),
    ("grid = [1]", "must be a [[grid]] table"),
]


@pytest.mark.parametrize("line,message", MISTYPED, ids=[m[0] for m in MISTYPED])
def test_mistyped_grid_values_are_one_line_and_leave_nothing(tmp_path, capsys, monkeypatch, line, message):
    monkeypatch.chdir(tmp_path)  # the default storage (studies/studies.db) and results would land here
    grid = tmp_path / "grid.toml"
    body = f'{line}\n[[grid]]\nalgos = ["fa"]\n' if not line.startswith("grid") else f"{line}\n"
    grid.write_text(body)
    assert main(["--config", str(grid)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]


OVERSIZED = [
    ("width = [20000]", "space parameter 'width': every choice must be an integer in [1, 16384], got 20000"),
    ("depth = 40", "space parameter 'depth': its value must be an integer in [1, 32], got 40"),
    ("batch_size = [100000]", "space parameter 'batch_size': every choice must be an integer in [1, 65536], got 100000"),
    # within the bounds, but 784-4096x4-10 has 784*4096 + 3*4096**2 + 4096*10 = 5.36e7 weights, x 32 bytes x 3 folds =
    # 4.79 GiB: more than the 1 GiB this machine "has"
    ("width = [64, 4096]\ndepth = [1, 4]", "space parameters width [64, 4096], depth [1, 4] reach networks of 5.36e+07 "
                                           "weights, which need about 4.79 GB to train 3 at once; this machine has 1 GB "
                                           "available: allow smaller values"),
]


@pytest.mark.parametrize("space,message", OVERSIZED, ids=["width", "depth", "batch", "memory"])
def test_a_space_whose_networks_could_not_be_built_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch,
                                                                                   space, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("hpo.space.families.available_memory", lambda: 2**30)
    grid = tmp_path / "grid.toml"
    grid.write_text(f'trials = 1\n[space]\n{space}\n[[grid]]\nalgos = ["fa"]\ndatasets = ["mnist-5k"]\n')
    assert main(["--config", str(grid)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]


@pytest.mark.parametrize("flag,what", [("--config", "config file"), ("--space", "space file")])
def test_non_utf8_grid_or_space_file_is_one_line(tmp_path, capsys, monkeypatch, flag, what):
    """One TOML reader for grids and --space files (a non-UTF-8 space file ended in a traceback)."""
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "grid.toml"
    grid.write_bytes(b'study_name = "caf\xe9"\n[[grid]]\nalgos = ["fa"]\n' if flag == "--config"
                     else b'[space]\nactivation = "caf\xe9"\n')  # Latin-1, not UTF-8
    assert main([flag, str(grid)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {what}") and "is not UTF-8 text (byte 0xe9" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]


REFUSED_ON_THE_DATASET = [
    (["--model", "cnn", "--dataset", "teacher"], "--model cnn needs sequences (length, channels) or images"),
    (["--dataset", "digits", "--folds", "200"], "--folds must be at most 139 for dataset 'digits'"),
    (["--dataset", "digits", "--evals-per-epoch", "1000"], "--evals-per-epoch must be at most 7"),
    (["--dataset", "sinreg", "--algo", "sd"], "--algo sd is classification-only"),
]


@pytest.mark.parametrize("argv,message", REFUSED_ON_THE_DATASET, ids=[" ".join(r[0]) for r in REFUSED_ON_THE_DATASET])
def test_refused_on_the_loaded_dataset_before_any_storage_or_study_exists(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)  # where the default storage would be created
    assert main([*argv, "--trials", "1", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())  # no studies/studies.db, no results/


def test_a_grid_with_one_bad_study_creates_nothing(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    storage, results = tmp_path / "grid.journal", tmp_path / "results"
    grid.write_text(f'trials = 1\nepochs = 1\nstorage = "{storage}"\nresults_dir = "{results}"\n'
                    '[[grid]]\ndatasets = ["digits"]\nalgos = ["bp"]\n'
                    '[[grid]]\ndatasets = ["teacher"]\nmodels = ["cnn"]\nalgos = ["fa"]\n')
    assert main(["--config", str(grid)]) == 2
    assert "--model cnn needs" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]  # the good study did not run either



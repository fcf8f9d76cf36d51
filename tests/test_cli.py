"""End-to-end: the command line on tiny configs, resume, grids, and bad input."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from hpo.run import main
from hpo.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--epochs", "1", "--folds", "2"]


def run_cli(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "hpo.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def finished(storage, name):
    study = optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage))))
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study, study.get_trials(states=states)


def test_cli_runs_a_study_writes_results_and_resumes(tmp_path):
    storage, results = tmp_path / "s.journal", tmp_path / "results"
    first = run_cli("--algo", "fa", "--trials", "3", *TINY, "--storage", str(storage), "--results-dir", str(results))
    assert first.returncode == 0, first.stderr
    assert "[digits-mlp-fa] 3/3 trial #2" in first.stdout  # progress per trial
    for name in ["summary.csv", "summary.md", "comparison.png", "comparison.html",
                 "studies/digits-mlp-fa/history.html", "studies/digits-mlp-fa/history.png"]:
        assert (results / name).stat().st_size > 0, name
    rows = list(csv.DictReader((results / "summary.csv").open()))
    assert len(rows) == 1 and rows[0]["study"] == "digits-mlp-fa" and rows[0]["algo"] == "fa"
    assert int(rows[0]["complete"]) + int(rows[0]["pruned"]) == 3
    assert 0.0 < float(rows[0]["test_mean"]) <= 1.0 and int(rows[0]["test_n"]) == 5  # the default --test-seeds
    assert float(rows[0]["startup_worst"]) <= float(rows[0]["startup_mean"]) <= float(rows[0]["best"])
    study, trials = finished(storage, "digits-mlp-fa")
    kept = {t.number: t.params for t in trials}
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        assert len(t.user_attrs["fold_scores"]) == 2
        assert {"fold_std", "wall_seconds", "compile_seconds", "n_params"} <= set(t.user_attrs)
        assert 50 < t.user_attrs["peak_memory_mb"] < 24 * 1024  # a process with JAX loaded, within this machine

    again = run_cli("--algo", "fa", "--trials", "3", *TINY, "--storage", str(storage), "--results-dir", str(results))
    assert again.returncode == 0 and "nothing to run" in again.stdout

    more = run_cli("--algo", "fa", "--trials", "5", *TINY, "--storage", str(storage), "--results-dir", str(results))
    assert more.returncode == 0, more.stderr
    _, trials = finished(storage, "digits-mlp-fa")
    assert len(trials) == 5
    assert {t.number: t.params for t in trials if t.number in kept} == kept  # earlier trials untouched


@pytest.mark.slow  # 30-50 s of study processes or eager training; run with -m slow
def test_grid_config_runs_every_study(tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text(
        f'trials = 2\nepochs = 1\nfolds = 2\nstorage = "{tmp_path / "g.journal"}"\n'
        f'results_dir = "{tmp_path / "results"}"\n[[grid]]\ndatasets = ["digits"]\nalgos = ["bp", "dfa"]\n'
        '[[grid]]\ndatasets = ["sinreg"]\nalgos = ["kp"]\n'
    )
    result = run_cli("--config", str(config))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "results" / "summary.csv").open()))
    assert sorted(r["study"] for r in rows) == ["digits-mlp-bp", "digits-mlp-dfa", "sinreg-mlp-kp"]
    sinreg = next(r for r in rows if r["dataset"] == "sinreg")
    assert sinreg["metric"] == "mse" and sinreg["direction"] == "minimize"


BAD = [
    (["--algo", "xx"], "--algo must be one of bp, brsf, dfa, drtp, fa, frsf, kp, usf, sd, got 'xx'"),
    (["--dataset", "imagenet"], "--dataset must be one of mnist-5k, digits, mnist1d"),
    (["--sampler", "bogus"], "--sampler must be one of tpe, random, gp, cmaes, got 'bogus'"),
    (["--pruner", "bogus"], "--pruner must be one of halving, halving-half, median, hyperband, wilcoxon, none, got 'bogus'"),
    (["--trials", "0"], "--trials must be an integer >= 1, got 0"),
    (["--folds", "1"], "--folds must be an integer >= 2, got 1"),
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--storage", "redis://u:secret@h/0"], "unsupported storage URL 'redis://u:***@h/0'"),
    (["--config", "/nonexistent/grid.toml"], "cannot read config file '/nonexistent/grid.toml'"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[b[0][0] + "=" + b[0][1] for b in BAD])
def test_bad_input_gives_one_clear_line(tmp_path, capsys, argv, message):
    results = tmp_path / "results"
    code = main([*argv, "--results-dir", str(results), "--storage", str(tmp_path / "s.journal")]
                if "--storage" not in argv else [*argv, "--results-dir", str(results)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert "secret" not in err
    assert not results.exists()  # nothing written


def test_bad_config_contents(tmp_path, capsys):
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text('trials = 2\nlearning_rate = 3\n[[grid]]\nalgos = ["fa"]\n')
    assert main(["--config", str(bad_key)]) == 2
    assert "unknown key 'learning_rate'" in capsys.readouterr().err
    bad_toml = tmp_path / "broken.toml"
    bad_toml.write_text("trials = = 2\n")
    assert main(["--config", str(bad_toml)]) == 2
    assert "is not valid TOML" in capsys.readouterr().err
    bad_value = tmp_path / "value.toml"
    bad_value.write_text('[[grid]]\nalgos = ["fa", "nope"]\n')
    assert main(["--config", str(bad_value)]) == 2
    assert "--algo must be one of" in capsys.readouterr().err


def test_unwritable_results_dir_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["--algo", "fa", *TINY, "--trials", "1", "--storage", str(tmp_path / "s.journal"),
                 "--results-dir", str(blocker / "results")])
    assert code == 2
    assert "results directory" in capsys.readouterr().err
    assert not (tmp_path / "s.journal").exists() or (tmp_path / "s.journal").stat().st_size == 0


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    result = run_cli("--algo", "nope", "--results-dir", str(tmp_path / "r"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --algo must be one of bp, brsf, dfa, drtp, fa, frsf, kp, usf") and "got 'nope'" in lines[0]
    assert not (tmp_path / "r").exists()


def test_changed_settings_on_resume_are_refused(tmp_path, capsys):
    storage = str(tmp_path / "s.journal")
    assert main(["--algo", "bp", *TINY, "--trials", "1", "--storage", storage,
                 "--results-dir", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["--algo", "bp", "--dataset", "digits", "--epochs", "2", "--folds", "2", "--trials", "2",
                 "--storage", storage, "--results-dir", str(tmp_path / "r")]) == 2
    assert "was created with epochs=1, got epochs=2" in capsys.readouterr().err


@pytest.mark.slow  # 30-50 s of study processes or eager training; run with -m slow
def test_test_seeds_are_stored_summarised_and_recomputed_only_when_needed(tmp_path, capsys):
    from hpo.study.heldout import retraining_seeds
    from hpo.study.objective import trial_seed

    storage, results = tmp_path / "s.journal", tmp_path / "results"
    argv = ["--algo", "bp", "--trials", "3", *TINY, "--storage", str(storage), "--results-dir", str(results)]
    assert main([*argv, "--test-seeds", "3"]) == 0
    out = capsys.readouterr().out
    study, trials = finished(storage, "digits-mlp-bp")
    test = study.user_attrs["test"]
    assert test["trial"] == study.best_trial.number and len(test["scores"]) == 3
    assert test["seeds"] == retraining_seeds(0, test["trial"], 3)
    assert test["seeds"][0] == trial_seed(0, test["trial"])  # seed 0 is the trial's own: --test-seeds 1 = before
    assert len(set(test["seeds"])) == 3 and all(0.0 < s <= 1.0 for s in test["scores"])
    assert all(t.user_attrs.get("startup") for t in trials)  # the first trials are random start-up trials
    row = next(csv.DictReader((results / "summary.csv").open()))
    scores = np.array(test["scores"])
    assert int(row["test_n"]) == 3 and float(row["test_mean"]) == pytest.approx(scores.mean(), rel=1e-5)
    assert float(row["test_std"]) == pytest.approx(scores.std(ddof=1), rel=1e-4, abs=1e-7)
    assert float(row["test_ci95"]) == pytest.approx(4.302653 * scores.std(ddof=1) / np.sqrt(3), rel=1e-4, abs=1e-7)
    assert row["delta_vs_bp"] == "" and row["p_vs_bp"] == ""  # bp itself
    assert "(95% CI over 3 seeds)" in out and "best hyperparameters" in out  # printed at the end of the run

    assert main([*argv, "--test-seeds", "3"]) == 0  # same best trial, same seeds: nothing retrained
    assert "best trial #" not in capsys.readouterr().out
    assert main([*argv, "--test-seeds", "2"]) == 0  # another number of seeds: retrained
    assert "(95% CI over 2 seeds)" in capsys.readouterr().out
    study, _ = finished(storage, "digits-mlp-bp")
    assert study.user_attrs["test"]["seeds"] == test["seeds"][:2]


def test_bad_test_seeds_is_one_line(tmp_path, capsys):
    assert main(["--test-seeds", "0", "--storage", str(tmp_path / "s.journal"), "--results-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: --test-seeds must be an integer >= 1, got 0\n"


def test_compiling_ahead_asks_the_start_up_trials_together_and_the_study_exits_cleanly(tmp_path):
    """With ``--compile-ahead`` a study asks its random start-up trials as one batch: every one has started
    before the first ends, and a later shape's program compiled in the background while an earlier one trained.
    A thread also compiles the space's programs; the study ends while it still compiles, and the process must
    stop it and wait (a thread killed inside XLA at exit aborts the process, after the results, with
    ``terminate called ...``)."""
    space = tmp_path / "space.toml"
    # 12 programs, more than the study ends before compiling; a shape hosts only narrower ones of its batch size
    space.write_text("[space]\ndepth = 1\nwidth = [16, 24, 32, 48]\nbatch_size = [32, 64, 128]\n")
    storage, cache = tmp_path / "s.journal", tmp_path / "cache"
    run = run_cli("--algo", "bp", "--trials", "3", *TINY, "--storage", str(storage), "--results-dir",
                  str(tmp_path / "results"), "--cache-dir", str(cache), "--space", str(space),
                  "--test-seeds", "1", "--compile-ahead", "--no-diagnostics")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "terminate" not in run.stderr
    (study,) = optuna.get_all_study_summaries(open_storage(str(storage), create=False))
    trials = optuna.load_study(study_name=study.study_name, storage=open_storage(str(storage))).get_trials()
    assert len(trials) == 3 and all(t.user_attrs.get("startup") for t in trials)
    assert max(t.datetime_start for t in trials) < min(t.datetime_complete for t in trials)
    assert len({t.params["batch_size"] for t in trials}) > 1  # the seed's draws: two shapes at least
    assert any(t.user_attrs.get("background_compile_seconds", 0) > 0 for t in trials)
    assert len(list((cache / "programs").glob("*.programs"))) >= 3  # the trials', the test retraining's

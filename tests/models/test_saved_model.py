"""The best network, saved: a study writes it next to its charts, ``models.saved.load_model`` reads it back and
scores the test split as the study did; configurations of every family come back equal, a file that does not fit
its configuration is refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest
from flax import serialization

from hpo import run
from hpo.config import StudyConfig
from hpo.data import load_dataset
from hpo.files import study_folder
from hpo.record import read_study, write_study
from hpo.space.algorithms import suggest
from hpo.storage import open_storage
from hpo.study.heldout import retraining_seeds
from hpo.study.runner import MODEL_FILE, record_test_score
from models.networks import ConvLayer
from models.rule_training import TrainConfig
from models.saved import load_model, save_model
from models.sd import SDConfig


def test_a_study_saves_its_best_network_and_it_scores_the_test_split_as_the_study_did(tmp_path):
    storage, results = str(tmp_path / "s.journal"), tmp_path / "results"
    args = ["--algo", "fa", "--dataset", "digits", "--trials", "2", "--epochs", "2", "--folds", "2",
            "--test-seeds", "2", "--storage", storage, "--results-dir", str(results)]
    assert run.main(args) == 0
    study = optuna.load_study(study_name="digits-mlp-fa", storage=open_storage(storage))
    stored = read_study(study).test
    path = study_folder(results, "digits-mlp-fa") / MODEL_FILE
    model = load_model(path)

    dataset = load_dataset("digits")
    expected = suggest(optuna.trial.FixedTrial(study.best_params), StudyConfig(algo="fa", dataset="digits"), dataset)
    assert model.config == dataclasses.replace(expected, epochs=2)
    assert model.metadata["trial"] == study.best_trial.number == stored.trial
    assert model.metadata["seed"] == stored.seeds[0] and model.metadata["params"] == study.best_params
    assert "feedback" in model.state.fixed and model.state.opt_state is None  # B matrices kept, Adam moments not
    loss, accuracy = model.score(dataset.x_train, dataset.x_test, dataset.y_test)
    # the same network on the same rows: seed 0's stored score, up to the order of floating-point sums
    assert accuracy == pytest.approx(stored.scores[0], abs=1 / len(dataset.y_test)) and np.isfinite(loss)

    config = StudyConfig(algo="fa", dataset="digits", trials=2, epochs=2, folds=2, test_seeds=2, storage=storage,
                         results_dir=str(results))
    mtime, lines = path.stat().st_mtime_ns, []
    record_test_score(study, config, dataset, lines.append)  # what a rerun does: nothing new, nothing rewritten
    assert path.stat().st_mtime_ns == mtime and lines == []
    # A fresh clone of a finished grid has the stored scores but not the (ignored) network: seed 0 alone is
    # retrained to rebuild it, and the stored scores stay. Marker scores show that nothing recomputed them.
    marked = dataclasses.replace(stored, scores=(0.25, 0.5))
    write_study(study, test=marked)
    path.unlink()
    record_test_score(study, config, dataset, lines.append)
    assert read_study(study).test == marked
    assert lines[0] == (f"[digits-mlp-fa] the saved network of trial #{stored.trial} is missing: retraining seed 0 "
                        "only, the 2 stored test scores kept")
    rebuilt = load_model(path)
    assert rebuilt.metadata["seed"] == stored.seeds[0] and rebuilt.metadata["trial"] == stored.trial
    # seed 0 alone trains the network seed 0 trained beside seed 1, up to the order of floating-point sums
    assert rebuilt.metadata["test_score"] == pytest.approx(stored.scores[0], abs=2 / len(dataset.y_test))

    # more seeds extend the stored scores: only the new seed is trained, the stored ones stay as measured
    lines.clear()
    record_test_score(study, dataclasses.replace(config, test_seeds=3), dataset, lines.append)
    extended = read_study(study).test
    assert extended.scores[:2] == (0.25, 0.5) and len(extended.scores) == 3 and 0 < extended.scores[2] <= 1
    assert extended.seeds == tuple(retraining_seeds(0, stored.trial, 3))
    assert lines[0] == (f"[digits-mlp-fa] trial #{stored.trial}: the 2 stored test scores kept, retraining seed 3")


@pytest.mark.parametrize("config,input_shape", [
    (TrainConfig(rule="kp", hidden=(7,), learning_rate=0.01, conv=(ConvLayer(3, 3, pool="max"), ConvLayer(4, 2, 2, "VALID")),
                 activation_choices=("relu", "tanh")), (8, 8, 1)),
    (TrainConfig(rule="dfa", hidden=(5, 6), learning_rate=0.01), (10,)),
    (SDConfig(hidden=(6,), forward_learning_rates=(0.1, 0.2), feedback_learning_rates=(0.05,)), (10,)),
])
def test_every_family_comes_back_as_it_was_saved(tmp_path, config, input_shape):
    family = config.family
    sample = np.zeros((1, *input_shape), np.float32)
    spec = family.program_spec(config, sample, 3)
    state = family.init(config, spec, sample, np.random.default_rng(5))
    path = tmp_path / "m.msgpack"
    path.write_bytes(save_model(config, state, 3, input_shape, {"note": "x"}))
    model = load_model(path)
    assert model.config == config and model.out_features == 3 and model.input_shape == input_shape
    assert model.metadata == {"note": "x"}
    saved, loaded = serialization.to_state_dict(family.saved_state(state)), serialization.to_state_dict(model.state)
    np.testing.assert_equal(loaded, saved)


def test_a_file_that_does_not_fit_its_configuration_is_refused(tmp_path):
    config = TrainConfig(rule="fa", hidden=(4,), learning_rate=0.1)
    sample = np.zeros((1, 6), np.float32)
    state = config.family.init(config, config.family.program_spec(config, sample, 2), sample, np.random.default_rng(0))
    record = serialization.msgpack_restore(save_model(config, state, 2, (6,)))
    record["input_shape"] = [7]  # the stored kernels are 6 x 4
    path = tmp_path / "m.msgpack"
    path.write_bytes(serialization.msgpack_serialize(record))
    with pytest.raises(ValueError, match="do not fit its configuration"):
        load_model(path)
    record["format"] = 99
    path.write_bytes(serialization.msgpack_serialize(record))
    with pytest.raises(ValueError, match="not a model file of this version"):
        load_model(path)


def conv_file(tmp_path, **changes):
    """A real small CNN's model file with its stored configuration or input shape edited."""
    import json

    config = TrainConfig(rule="fa", hidden=(8,), learning_rate=0.1, conv=(ConvLayer(4, 3), ConvLayer(4, 3)))
    sample = np.zeros((1, 8, 8, 1), np.float32)
    state = config.family.init(config, config.family.program_spec(config, sample, 2), sample, np.random.default_rng(0))
    record = serialization.msgpack_restore(save_model(config, state, 2, (8, 8, 1)))
    stored = json.loads(record["config"])
    if "conv" in changes:
        stored["conv"] = [dataclasses.asdict(layer) for layer in changes["conv"]]
    record["config"] = json.dumps(stored)
    record["input_shape"] = list(changes.get("input_shape", (8, 8, 1)))
    path = tmp_path / "m.msgpack"
    path.write_bytes(serialization.msgpack_serialize(record))
    return path


def test_the_whole_network_is_counted_before_anything_is_built(tmp_path):
    """The size check counted only the last convolution's channels: two unpooled 256-channel layers on 64x64
    inputs (a dense head of 64*64*256 x 8 weights) took 5.7 GB before failing; 4096 channels asked for 512 GiB."""
    wide = (ConvLayer(256, 3), ConvLayer(256, 3))
    with pytest.raises(ValueError, match=r"m.msgpack: its configuration needs 8980752 weights but the file holds"):
        load_model(conv_file(tmp_path, conv=wide, input_shape=(64, 64, 1)))
    with pytest.raises(ValueError, match=r"its configuration needs 18911248 weights"):
        load_model(conv_file(tmp_path, conv=(ConvLayer(4096, 3), ConvLayer(4096, 1))))
    assert load_model(conv_file(tmp_path)).input_shape == (8, 8, 1)  # the file as it was saved loads


def test_an_input_larger_than_memory_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    # a conv trunk's kernels do not grow with the input: the input and activations of one example must fit memory
    monkeypatch.setattr("models.saved.memory_budget", lambda: 2 * 2**30)
    pooled = (ConvLayer(4, 3, pool="max"), ConvLayer(4, 3, pool="max"))
    with pytest.raises(ValueError, match=r"its (network needs about [\d.]+ GiB to load; this process may allocate "
                       r"2.0 GiB|configuration needs)"):
        load_model(conv_file(tmp_path, conv=pooled, input_shape=(100_000, 100_000, 1)))
    with pytest.raises(ValueError, match=r"its input shape \(0, 8, 1\) is not a shape"):
        load_model(conv_file(tmp_path, input_shape=(0, 8, 1)))

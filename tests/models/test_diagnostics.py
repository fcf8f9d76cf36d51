"""Learning diagnostics: closed-form angles, exact zeros where a rule is backprop, alignment during training,
the curves' shape and storage size, and the plots made from storage alone."""

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optuna
import pytest

from hpo.config import StudyConfig
from hpo.data import load_dataset, make_folds
from hpo.record import decode_curves, encode_curves, final_diagnostics
from hpo.report.curves import write_curve_plots
from hpo.study.objective import Objective
from models import diagnostics as D
from models.initializers import host_init
from models.networks import MLP
from models.rule_training import TrainConfig
from models.train import FoldData, Plan, RunState, cross_validate, run_epoch, segment_layout, stack


def loss_fn(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def network(rule, hidden=(7, 5), activation="tanh", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((11, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 11)
    model = MLP(hidden, 4, rule, activation)
    variables = host_init(model, x[:1], rng)
    params = variables.pop("params")
    return model, params, variables, x, labels


def diagnose(model, params, fixed, x, labels):
    # compiled, as in training (eager op-by-op dispatch may round the last bit differently)
    out = jax.jit(lambda p, f: D.diagnose(model, p, f, x, labels, loss_fn))(params, fixed)
    return {k: float(v) for k, v in out.items()}


def fold_data(name, k=2):
    data = load_dataset(name)
    folds = make_folds(data, k, 0)
    return FoldData(jnp.asarray(data.x_train), jnp.asarray(data.y_train), folds.train_idx,
                    jnp.asarray(folds.val_idx), jnp.asarray(folds.val_mask))


def test_angle_norm_ratio_and_relative_change_closed_form():
    a, b = jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0])
    assert float(D.angle(a, b)) == pytest.approx(45.0, abs=1e-4)
    assert float(D.angle(a, -a)) == pytest.approx(180.0, abs=1e-4)
    assert float(D.angle(b, b)) == 0.0  # exact for identical vectors
    assert float(D.angle(b, 3 * b)) == pytest.approx(0.0, abs=1e-4)
    assert float(D.angle({"k": a, "b": a}, {"k": a, "b": -a})) == pytest.approx(90.0, abs=1e-4)
    assert np.isnan(float(D.angle(a, jnp.zeros(2))))  # undefined, not a made-up number
    assert float(D.norm_ratio(3 * b, b)) == pytest.approx(3.0)
    assert float(D.relative_change(jnp.array([3.0, 4.0]), jnp.array([3.0, 0.0]))) == pytest.approx(0.8)
    # a tiny angle, where arccos of a rounded cosine would give ~0.03 degrees of noise in float32
    eps = 1e-4
    assert float(D.angle(jnp.array([1.0, 0.0]), jnp.array([1.0, eps]))) == pytest.approx(np.degrees(eps), rel=1e-3)


def test_bp_update_angle_is_zero_by_definition():
    out = diagnose(*network("bp"))
    names = ["dense_0", "dense_1", "output"]
    for name in names + ["total"]:
        assert out[f"update_angle/{name}"] == 0.0
    for name in names:
        assert out[f"norm_ratio/{name}"] == pytest.approx(1.0, abs=1e-6)
    assert out["error_angle/dense_0"] == 0.0 and out["error_angle/dense_1"] == 0.0
    assert "error_angle/output" not in out and not any(k.startswith("wb_angle") for k in out)


def test_fa_with_feedback_equal_to_kernel_has_zero_angles():
    model, params, fixed, x, labels = network("fa")
    fixed = {"feedback": {n: {"feedback": params[n]["kernel"]} for n in params}}
    out = diagnose(model, params, fixed, x, labels)
    assert {k for k in out if k.startswith("wb_angle")} == {"wb_angle/dense_0", "wb_angle/dense_1", "wb_angle/output"}
    for name, value in out.items():
        if "angle" in name:
            assert value == 0.0, name


def test_kp_feedback_is_found_in_params():
    model, params, fixed, x, labels = network("kp")
    params["output"]["feedback"] = params["output"]["kernel"]
    out = diagnose(model, params, fixed, x, labels)
    assert out["wb_angle/output"] == 0.0 and out["wb_angle/dense_1"] > 30


def angle64(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return np.degrees(np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))


def test_dfa_delivered_hidden_error_angle_matches_closed_form():
    """dL/da_l under DFA is (e @ B_l.T) * f'(a_l); under backprop the chain through the kernels."""
    model, params, fixed, x, labels = network("dfa")
    w = [np.asarray(params[n]["kernel"], np.float64) for n in ("dense_0", "dense_1", "output")]
    b = [np.asarray(params[n]["bias"], np.float64) for n in ("dense_0", "dense_1", "output")]
    taps = [np.asarray(fixed["feedback"][f"DirectFeedback_{i}"]["feedback"], np.float64) for i in range(2)]
    a0 = x @ w[0] + b[0]
    a1 = np.tanh(a0) @ w[1] + b[1]
    logits = np.tanh(a1) @ w[2] + b[2]
    p = np.exp(logits - logits.max(1, keepdims=True))
    e = (p / p.sum(1, keepdims=True) - np.eye(4)[labels]) / len(x)
    d1 = lambda a: 1 - np.tanh(a) ** 2  # noqa: E731
    bp1 = (e @ w[2].T) * d1(a1)
    bp0 = (bp1 @ w[1].T) * d1(a0)
    out = diagnose(model, params, fixed, x, labels)
    assert out["error_angle/dense_1"] == pytest.approx(angle64((e @ taps[1].T) * d1(a1), bp1), abs=0.02)
    assert out["error_angle/dense_0"] == pytest.approx(angle64((e @ taps[0].T) * d1(a0), bp0), abs=0.02)

    # the known special case: a linear network with B_l = W_{l+1} ... W_L receives backprop's error exactly
    model, params, fixed, x, labels = network("dfa", activation="identity")
    fixed["feedback"]["DirectFeedback_0"]["feedback"] = params["dense_1"]["kernel"] @ params["output"]["kernel"]
    fixed["feedback"]["DirectFeedback_1"]["feedback"] = params["output"]["kernel"]
    out = diagnose(model, params, fixed, x, labels)
    assert out["error_angle/dense_0"] < 0.05 and out["error_angle/dense_1"] < 0.05
    assert out["update_angle/total"] < 0.05


def test_segment_layout_covers_every_batch_once_in_order():
    rows, valid, last = segment_layout(41, 4)
    assert rows.shape == (4, 11) and valid.sum(1).tolist() == [11, 10, 10, 10]
    assert rows[valid].tolist() == list(range(41))
    assert [rows[i, last[i]] for i in range(4)] == [10, 20, 30, 40]
    with pytest.raises(ValueError, match="evals_per_epoch must be between 1 and the 3 mini-batches"):
        segment_layout(3, 4)


def test_kp_aligns_curves_have_every_point_and_training_is_unchanged():
    data = fold_data("digits")
    config = TrainConfig(rule="kp", hidden=(32,), learning_rate=3e-3, epochs=3, weight_decay=0.3)
    plain = cross_validate(config, data, 10, seed=0)
    result = cross_validate(config, data, 10, seed=0, plan=Plan("sequential", evals_per_epoch=3, diagnostics=True))
    np.testing.assert_allclose(result.fold_scores, plain.fold_scores, atol=1e-6)  # observing does not change it
    for name in ("train_loss", "val_score", "update_angle/dense_0", "wb_angle/output", "weight_change/dense_0"):
        assert result.points[name].shape == (3 * 3, 2), name
    assert result.point_epochs[2] == 1.0 and result.point_epochs[-1] == 3.0 and len(result.point_epochs) == 9
    np.testing.assert_allclose(result.points["val_score"][2::3], plain.curves["val_score"], atol=1e-6)
    wb = result.points["wb_angle/output"].mean(1)
    assert wb[-1] < wb[0] - 5, wb  # kp's feedback aligns with the forward weights
    assert set(plain.points) == {"train_loss", "train_score", "val_loss", "val_score"}
    assert plain.points["val_score"].shape == (3, 2)


def test_diagnostics_off_is_the_plain_program():
    """Off, nothing of the diagnostics is traced: no angle (atan2), no segment branch (cond), no extra output."""
    family, spec, args = _epoch_args()
    plain, monitored = Plan("sequential"), Plan("sequential", evals_per_epoch=2, diagnostics=True)
    off = str(jax.make_jaxpr(partial(run_epoch, family, spec, plain))(*args))
    on = str(jax.make_jaxpr(partial(run_epoch, family, spec, monitored))(*args))
    assert "atan2" not in off and "cond" not in off and "atan2" in on
    assert jax.eval_shape(partial(run_epoch, family, spec, plain), *args)[2] == {}


def _epoch_args():
    config = TrainConfig(rule="fa", hidden=(8,), learning_rate=0.1)
    family = config.family
    x = np.zeros((40, 6), np.float32)
    spec = family.program_spec(config, x[:1], 10)
    host = stack([family.init(config, spec, x[:1], np.random.default_rng(0))] * 2)
    hyper = stack([family.hyperparameters(config)] * 2)  # one value per run
    state = RunState(host, None)
    batches = np.zeros((2, 5, 4), np.int32)
    return family, spec, (state, batches, x, np.zeros(40, np.int32), np.zeros((2, 8), np.int32), np.ones((2, 8), bool), hyper)


def test_fa_hidden_update_aligns_with_backprop_on_mnist():
    """Lillicrap et al. (2016): under FA the hidden layer's update comes within 90 degrees of backprop's."""
    config = TrainConfig(rule="fa", hidden=(128,), learning_rate=3e-2, optimizer="sgd", momentum=0.9, epochs=3)
    result = cross_validate(config, fold_data("mnist-5k"), 10, seed=0, plan=Plan("sequential", diagnostics=True))
    assert result.score > 0.8
    final = {k: v[-1].mean() for k, v in result.points.items()}
    assert final["update_angle/dense_0"] < 70, final
    assert final["error_angle/dense_0"] < 70, final
    assert final["wb_angle/output"] < 80, final  # W aligns with the fixed B, not the other way round


def test_storage_is_compact_and_round_trips():
    rng = np.random.default_rng(0)
    layers = ["dense_0", "dense_1", "dense_2", "output"]
    names = ["train_loss", "train_score", "val_loss", "val_score", "update_angle/total"]
    names += [f"{m}/{layer}" for m in ("update_angle", "norm_ratio", "weight_change", "wb_angle") for layer in layers]
    names += [f"error_angle/{layer}" for layer in layers[:-1]]
    points = {n: rng.uniform(0, 100, (10, 3)).astype(np.float32) for n in names}  # 10 epochs x 1 eval, 3 folds
    points["error_angle/dense_0"][4, 1] = np.nan
    attr = encode_curves(points, np.arange(1, 11.0))
    size = len(json.dumps(attr))
    assert size < 8_000, size  # 50 trials well under 1 MB
    epochs, series = decode_curves(json.loads(json.dumps(attr)))
    assert epochs.tolist() == list(range(1, 11)) and series["val_loss"].shape == (3, 10)
    np.testing.assert_allclose(series["val_loss"], points["val_loss"].T, rtol=1e-3)
    assert np.isnan(series["error_angle/dense_0"][1, 4])
    summary = final_diagnostics(points)
    assert "val_loss" not in summary and summary["wb_angle/output"] == pytest.approx(points["wb_angle/output"][-1].mean(), rel=1e-3)


def test_objective_stores_curves_and_report_plots_them(tmp_path):
    config = StudyConfig(algo="fa", dataset="digits", folds=2, epochs=2, evals_per_epoch=2, results_dir=str(tmp_path))
    study = optuna.create_study(direction="maximize", study_name="digits-mlp-fa")
    study.set_user_attr("dataset", "digits")
    study.set_user_attr("model", "mlp")
    study.set_user_attr("algo", "fa")
    params = dict(depth=1, width=64, activation="tanh", optimizer="sgd", lr_sgd=0.05, momentum=0.9, batch_size=64,
                  feedback_distribution="normal", feedback_scale=1.0)
    study.enqueue_trial(params)
    study.optimize(Objective(config, load_dataset("digits")), n_trials=1)
    trial = study.best_trial
    epochs, series = decode_curves(trial.user_attrs["curves"])
    assert len(epochs) == 2 * 2 and series["update_angle/dense_0"].shape == (2, 4)
    assert 0 < trial.user_attrs["diagnostics"]["update_angle/dense_0"] < 180
    write_curve_plots([study], tmp_path)
    for name in ("curves.png", "alignment.png", "weight_change.png"):
        assert (tmp_path / "studies" / "digits-mlp-fa" / name).stat().st_size > 1000
    assert (tmp_path / "alignment.png").stat().st_size > 1000

"""Sign-concordant feedback (usf, brsf, frsf) and direct random target projection (drtp), dense and conv.

The MLP closed-form updates of these rules are checked with every other rule in tests/models/rules/test_rules.py (its numpy
reference covers them); here: the layer functions against numpy / lax references, exact equivalences with
backprop, brsf's random magnitudes (distribution, redrawn per update, signs of W), drtp in a CNN, the missing-
input errors, and training with the compiled trainer (MLP training of every rule is in tests/models/train/test_training.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models.initializers import host_init
from models.networks import CNN, MLP, ConvLayer
from models.rule_training import TrainConfig, make_model
from models.rules import (
    RULES,
    ConvForward,
    DenseForward,
    brsf_feedback,
    get_rule,
    registry,
    rule_op,
    sign_feedback_scale,
)
from models.train import FoldData, Plan, cross_validate


def usf_dense(x, kernel, bias):
    return rule_op(get_rule("usf"), DenseForward(), x, kernel, bias, None, None)


def frsf_dense(x, kernel, bias, feedback):
    return rule_op(get_rule("frsf"), DenseForward(), x, kernel, bias, feedback, None)


def brsf_dense(x, kernel, bias, key):
    return rule_op(get_rule("brsf"), DenseForward(), x, kernel, bias, None, key)


def usf_conv(x, kernel, bias, strides, padding):
    return rule_op(get_rule("usf"), ConvForward(strides, padding), x, kernel, bias, None, None)


def frsf_conv(x, kernel, bias, feedback, strides, padding):
    return rule_op(get_rule("frsf"), ConvForward(strides, padding), x, kernel, bias, feedback, None)


def brsf_conv(x, kernel, bias, key, strides, padding):
    return rule_op(get_rule("brsf"), ConvForward(strides, padding), x, kernel, bias, None, key)

NEW_RULES = ("usf", "brsf", "frsf", "drtp")
LAYOUTS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}


def arrays(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]


def dense_vjp(fn, *args, dy):
    return jax.vjp(fn, *args)[1](dy)


# ----------------------------------------------------------------------------------------------------------
# Dense layers


def test_usf_dense_sends_the_error_through_the_scaled_signs_of_the_current_kernel():
    x, w, b, dy = arrays([(5, 6), (6, 3), (3,), (5, 3)])
    dx, dw, db = dense_vjp(usf_dense, x, w, b, dy=dy)
    B = np.sign(np.asarray(w, np.float64)) / np.sqrt(6)
    np.testing.assert_allclose(dx, np.asarray(dy) @ B.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, np.asarray(x).T @ np.asarray(dy), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(db, np.asarray(dy).sum(0), rtol=1e-5, atol=1e-6)
    # the signs are read in the backward pass: flipping the kernel flips the error sent down
    np.testing.assert_allclose(dense_vjp(usf_dense, x, -w, b, dy=dy)[0], -np.asarray(dx), rtol=1e-6)


def test_frsf_dense_uses_fixed_magnitudes_with_the_kernel_signs():
    x, w, b, r, dy = arrays([(5, 6), (6, 3), (3,), (6, 3), (5, 3)])
    dx, dw, db, dr = dense_vjp(frsf_dense, x, w, b, r, dy=dy)
    B = np.abs(np.asarray(r, np.float64)) * np.sign(np.asarray(w, np.float64))
    np.testing.assert_allclose(dx, np.asarray(dy) @ B.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, np.asarray(x).T @ np.asarray(dy), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(dr, 0)  # fixed
    # the stored R's own signs are irrelevant
    np.testing.assert_array_equal(dense_vjp(frsf_dense, x, w, b, -r, dy=dy)[0], dx)


def _mlp_loss(model, variables, x, labels, **kwargs):
    def loss(p):
        logits = model.apply({"params": p, **variables}, x, **kwargs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return loss


def _mlp(rule, seed=0, activation="tanh"):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((11, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 11)
    model = MLP((7, 5), 4, rule, activation)
    variables = host_init(model, x[:1], rng)
    return model, variables.pop("params"), variables, x, labels


def test_usf_with_kernels_of_magnitude_one_over_sqrt_fan_in_is_backprop_exactly():
    model, params, _, x, labels = _mlp("usf")
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.sign(v) * sign_feedback_scale(v.shape) if path[-1].key == "kernel" else v, params
    )
    usf = jax.jit(jax.grad(_mlp_loss(model, {}, x, labels)))(params)
    bp = jax.jit(jax.grad(_mlp_loss(MLP((7, 5), 4, "bp", "tanh"), {}, x, labels)))(params)
    for a, b in zip(jax.tree_util.tree_leaves(usf), jax.tree_util.tree_leaves(bp)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_frsf_with_magnitudes_equal_to_the_kernels_is_backprop_exactly():
    model, params, fixed, x, labels = _mlp("frsf")
    fixed = {"feedback": {n: {"feedback": -jnp.abs(params[n]["kernel"])} for n in fixed["feedback"]}}
    frsf = jax.jit(jax.grad(_mlp_loss(model, fixed, x, labels)))(params)
    bp = jax.jit(jax.grad(_mlp_loss(MLP((7, 5), 4, "bp", "tanh"), {}, x, labels)))(params)
    for a, b in zip(jax.tree_util.tree_leaves(frsf), jax.tree_util.tree_leaves(bp)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _drawn_feedback(w, key):
    """brsf's B recovered from its VJP: with dy = I, dx = B.T."""
    n_out = w.shape[1]
    x, b = jnp.zeros((n_out, w.shape[0])), jnp.zeros(n_out)
    return np.asarray(dense_vjp(brsf_dense, x, w, b, key, dy=jnp.eye(n_out))[0]).T


def test_brsf_magnitudes_are_half_normal_redrawn_per_key_with_the_kernel_signs():
    (w,) = arrays([(64, 48)], seed=3)
    keys = jax.random.split(jax.random.key(0), 200)
    draws = np.stack([_drawn_feedback(w, k) for k in keys[:3]])
    # signs always those of W; the same key gives the same draw, a new key a new one
    assert (np.sign(draws) == np.sign(np.asarray(w))).all()
    np.testing.assert_array_equal(_drawn_feedback(w, keys[0]), draws[0])
    assert not np.allclose(draws[0], draws[1]) and not np.allclose(draws[1], draws[2])
    # |R| ~ |N(0, 1/fan_in)| over many draws (600k values): moments of the half-normal
    magnitudes = np.abs(np.asarray(jax.vmap(lambda k: brsf_feedback(w, k))(keys), np.float64)) * np.sqrt(64)
    assert abs(magnitudes.mean() - np.sqrt(2 / np.pi)) < 3e-3
    assert abs((magnitudes**2).mean() - 1.0) < 5e-3
    assert abs((magnitudes**4).mean() - 3.0) < 3e-2
    # independent across draws and entries: the correlation of one entry across keys is ~0
    flat = magnitudes.reshape(len(keys), -1)
    assert abs(np.corrcoef(flat[:-1].ravel(), flat[1:].ravel())[0, 1]) < 0.01


def _input_error(model, params, x, key=None):
    """The error the layer sends to its input for the loss sum(y) (dy = 1 everywhere)."""
    rngs = None if key is None else {"feedback": key}
    return jax.grad(lambda x: model.apply({"params": params}, x, rngs=rngs).sum())(x)


def _drawn_brsf_matrix(model, params, x, key):
    """brsf's B of a dense layer from its Jacobian: dy = I gives the input error B.T."""
    return np.asarray(jax.jacrev(lambda x: model.apply({"params": params}, x, rngs={"feedback": key}))(x)[0, :, 0]).T


def test_sign_magnitudes_follow_the_kernel_initialiser_xavier_as_biotorch_lecun_by_default():
    """The magnitude of sign-concordant feedback is the standard deviation of the layer's kernel initialiser:
    Xavier's sqrt(2 / (fan_in + fan_out)) under init="xavier" (biotorch's scaling factor), 1 / sqrt(fan_in) else."""
    from models.initializers import FanAvg, FanIn
    from models.rules import Conv, Dense

    rng = np.random.default_rng(5)
    layers = [(Dense(48), (48, 64), (64, 48)), (Conv(16, 5, padding="VALID"), (2, 9, 9, 6), (5, 5, 6, 16))]
    for layer, x_shape, kernel_shape in layers:
        fan_in, fan_out = np.prod(kernel_shape[:-1]), np.prod(kernel_shape[:-2]) * kernel_shape[-1]
        for init, expected in ((FanIn(), fan_in**-0.5), (FanAvg(), np.sqrt(2.0 / (fan_in + fan_out)))):
            x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
            usf, bp = layer.clone(rule="usf", kernel_init=init), layer.clone(rule="bp", kernel_init=init)
            params = host_init(usf, x, rng)["params"]
            through_signs = _input_error(bp, jax.tree_util.tree_map(jnp.sign, params), x)  # through sign(W) itself
            np.testing.assert_allclose(_input_error(usf, params, x), expected * through_signs, rtol=1e-5, atol=1e-6)
            if isinstance(layer, Dense):  # brsf: E|R|^2 = s^2, over 8 draws of its 3072 magnitudes
                brsf = layer.clone(rule="brsf", kernel_init=init)
                keys = jax.random.split(jax.random.key(0), 8)
                b = np.stack([_drawn_brsf_matrix(brsf, params, x[:1], k) for k in keys])
                assert (np.sign(b) == np.sign(np.asarray(params["kernel"]))).all()
                assert np.sqrt((b**2).mean()) == pytest.approx(expected, rel=0.05)


def test_brsf_network_draws_differ_by_key_but_not_for_the_same_key():
    model, params, _, x, labels = _mlp("brsf")
    grad = jax.jit(lambda p, k: jax.grad(_mlp_loss(model, {}, x, labels, rngs={"feedback": k}))(p))
    k1, k2 = jax.random.split(jax.random.key(1))
    a, again, b = grad(params, k1), grad(params, k1), grad(params, k2)
    for name in ("dense_0", "dense_1", "output"):
        np.testing.assert_array_equal(a[name]["kernel"], again[name]["kernel"])
    # the output layer's update does not depend on the feedback; the hidden ones do
    np.testing.assert_array_equal(a["output"]["kernel"], b["output"]["kernel"])
    assert not np.allclose(a["dense_0"]["kernel"], b["dense_0"]["kernel"])


@pytest.mark.parametrize("rule,message", [("brsf", "rngs="), ("drtp", "target=")])
def test_forward_works_without_the_backward_inputs_but_a_gradient_fails_loudly(rule, message):
    model, params, fixed, x, labels = _mlp(rule)
    logits = model.apply({"params": params, **fixed}, x)
    full = model.apply({"params": params, **fixed}, x, **get_rule(rule).apply_kwargs(labels, jax.random.key(0)))
    np.testing.assert_array_equal(logits, full)  # neither input changes the forward pass
    with pytest.raises(ValueError, match=message):
        jax.grad(_mlp_loss(model, fixed, x, labels))(params)
    with pytest.raises(ValueError, match="needs"):
        get_rule(rule).apply_kwargs(None, None)


def test_drtp_hidden_error_is_the_projected_target_not_the_output_error():
    """dL/da_l = (onehot(y) @ B_l.T / n) * f'(a_l), whatever the outputs: scaling the output kernel changes only
    the output layer's update."""
    model, params, fixed, x, labels = _mlp("drtp", activation="relu")
    grads = jax.grad(_mlp_loss(model, fixed, x, labels, target=labels))(params)
    a0 = np.asarray(x, np.float64) @ np.asarray(params["dense_0"]["kernel"], np.float64)
    B0 = np.asarray(fixed["feedback"]["DirectTarget_0"]["feedback"], np.float64)
    delta = np.eye(4)[labels] @ B0.T / len(x) * (a0 > 0)
    np.testing.assert_allclose(grads["dense_0"]["kernel"], np.asarray(x).T @ delta, rtol=1e-4, atol=1e-7)
    scaled = {**params, "output": {**params["output"], "kernel": 3 * params["output"]["kernel"]}}
    other = jax.grad(_mlp_loss(model, fixed, x, labels, target=labels))(scaled)
    np.testing.assert_array_equal(other["dense_0"]["kernel"], grads["dense_0"]["kernel"])
    np.testing.assert_array_equal(other["dense_1"]["kernel"], grads["dense_1"]["kernel"])
    assert not np.allclose(other["output"]["kernel"], grads["output"]["kernel"])


# ----------------------------------------------------------------------------------------------------------
# Convolutions


def lax_conv(x, w, b, strides, padding):
    layout = LAYOUTS[w.ndim - 2]
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=layout) + b


CONV_CASES = [(1, 1, "SAME"), (1, 2, "VALID"), (2, 1, "VALID"), (2, 2, "SAME")]  # (spatial axes, stride, padding)


@pytest.mark.parametrize("spatial,stride,padding", CONV_CASES)
def test_sign_concordant_convs_are_the_conv_vjp_through_the_formed_feedback_kernel(spatial, stride, padding):
    shape_x, shape_w = (3,) + (8,) * spatial + (2,), (3,) * spatial + (2, 4)
    x, w, b, r = arrays([shape_x, shape_w, (4,), shape_w], seed=spatial + stride)
    strides = (stride,) * spatial
    y, ref = jax.vjp(lambda x, w, b: lax_conv(x, w, b, strides, padding), x, w, b)
    dy = jnp.asarray(np.random.default_rng(9).standard_normal(y.shape), jnp.float32)
    _, dw_ref, db_ref = ref(dy)

    def through(B):  # the input error backprop would send if the kernel were B
        return jax.vjp(lambda x: lax_conv(x, B, b, strides, padding), x)[1](dy)[0]

    fan_in = int(np.prod(shape_w[:-1]))
    key = jax.random.key(4)
    formed = {
        "usf": (lambda *a: usf_conv(*a, strides, padding), (x, w, b), jnp.sign(w) / np.sqrt(fan_in)),
        "frsf": (lambda *a: frsf_conv(*a, strides, padding), (x, w, b, r), jnp.abs(r) * jnp.sign(w)),
        "brsf": (lambda *a: brsf_conv(*a, strides, padding), (x, w, b, key), brsf_feedback(w, key)),
    }
    for name, (fn, args, B) in formed.items():
        out, vjp = jax.vjp(fn, *args)
        np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-5)
        grads = vjp(dy)
        np.testing.assert_allclose(grads[0], through(B), rtol=1e-4, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(grads[1], dw_ref, rtol=1e-4, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(grads[2], db_ref, rtol=1e-4, atol=1e-4, err_msg=name)
    assert (np.sign(brsf_feedback(w, key)) == np.sign(w)).all()


def small_cnn(rule, spatial=2, seed=5):
    layers = (ConvLayer(4, 3, 1, "SAME", "max"), ConvLayer(5, 3, 2, "VALID"))
    shape = (6, 10, 10, 2) if spatial == 2 else (6, 12, 2)
    config = TrainConfig(rule=rule, hidden=(7,), learning_rate=0.1, conv=layers)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    labels = rng.integers(0, 3, shape[0])
    model = make_model(config, 3)
    variables = host_init(model, x[:1], rng)
    return model, variables.pop("params"), variables, x, labels


@pytest.mark.parametrize("spatial", [1, 2])
def test_frsf_cnn_with_magnitudes_equal_to_the_kernels_is_backprop_cnn_exactly(spatial):
    model, params, fixed, x, labels = small_cnn("frsf", spatial)
    assert set(fixed["feedback"]) == set(params)  # one fixed magnitude tensor per layer, the kernel's shape
    fixed = {"feedback": {n: {"feedback": jnp.abs(params[n]["kernel"])} for n in params}}
    frsf = jax.jit(jax.grad(_mlp_loss(model, fixed, x, labels)))(params)
    bp = jax.jit(jax.grad(_mlp_loss(CNN(model.conv, model.hidden, 3, "bp"), {}, x, labels)))(params)
    for a, b in zip(jax.tree_util.tree_leaves(frsf), jax.tree_util.tree_leaves(bp)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_usf_cnn_with_kernels_of_magnitude_one_over_sqrt_fan_in_is_backprop_cnn_exactly():
    model, params, _, x, labels = small_cnn("usf")
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.sign(v) * sign_feedback_scale(v.shape) if path[-1].key == "kernel" else v, params
    )
    usf = jax.jit(jax.grad(_mlp_loss(model, {}, x, labels)))(params)
    bp = jax.jit(jax.grad(_mlp_loss(CNN(model.conv, model.hidden, 3, "bp"), {}, x, labels)))(params)
    for a, b in zip(jax.tree_util.tree_leaves(usf), jax.tree_util.tree_leaves(bp)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("spatial", [1, 2])
def test_drtp_conv_hidden_error_is_the_projected_target(spatial):
    model, params, fixed, x, labels = small_cnn("drtp", spatial)
    grads = jax.jit(jax.grad(_mlp_loss(model, fixed, x, labels, target=labels)))(params)
    strides = (1,) * spatial
    w, b = params["conv_0"]["kernel"], params["conv_0"]["bias"]
    a = lax_conv(jnp.asarray(x), w, b, strides, "SAME")
    B = np.asarray(fixed["feedback"]["DirectTarget_0"]["feedback"], np.float64)
    assert B.shape == (int(np.prod(a.shape[1:])), 3)
    delta = (np.eye(3)[labels] @ B.T / len(x)).reshape(a.shape) * (np.asarray(a) > 0)
    _, dw, db = jax.vjp(lambda x, w, b: lax_conv(x, w, b, strides, "SAME"), jnp.asarray(x), w, b)[1](
        jnp.asarray(delta, jnp.float32)
    )
    np.testing.assert_allclose(grads["conv_0"]["kernel"], dw, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads["conv_0"]["bias"], db, rtol=1e-4, atol=1e-6)
    assert set(fixed["feedback"]) == {"DirectTarget_0", "DirectTarget_1", "DirectTarget_2"}


# ----------------------------------------------------------------------------------------------------------
# The registry, the trainer and the diagnostics


def test_registry_fields_of_the_new_rules():
    assert {r for r in RULES if RULES[r].needs_rng} == {"brsf"}
    assert {r for r in RULES if RULES[r].needs_target} == {"drtp"}
    assert [RULES[r].has_feedback_init for r in NEW_RULES] == [False, False, True, True]
    assert all(not RULES[r].trains_feedback for r in NEW_RULES)
    assert get_rule("bp").apply_kwargs(None, None) == {}  # old rules: the network is called exactly as before


def fold_data(name, k=2):
    from hpo.data import load_dataset, make_folds

    data = load_dataset(name)
    folds = make_folds(data, k, 0)
    return data, FoldData(jnp.asarray(data.x_train), jnp.asarray(data.y_train), folds.train_idx,
                          jnp.asarray(folds.val_idx), jnp.asarray(folds.val_mask))


def test_brsf_trainer_redraws_at_every_step_with_the_current_signs(monkeypatch):
    """In the compiled trainer every update draws new magnitudes, always with the signs of the kernel it uses."""
    seen = []
    real = registry.brsf_feedback

    def recording(kernel, key, scale=None):
        b = real(kernel, key, scale)
        if kernel.shape == (13, 10):  # the output layer of this (otherwise unused) network shape
            jax.debug.callback(lambda w, v: seen.append((np.asarray(w), np.asarray(v))), kernel, b)
        return b

    monkeypatch.setattr(registry, "brsf_feedback", recording)
    data, folds = fold_data("digits")
    config = TrainConfig(rule="brsf", hidden=(13,), learning_rate=1e-2, epochs=1, batch_size=128)
    first = cross_validate(config, folds, 10, seed=2)
    jax.effects_barrier()
    steps = 2 * (folds.train_idx.shape[1] // 128)  # two folds
    assert len(seen) == steps
    assert all((np.sign(v) == np.sign(w)).all() for w, v in seen)
    magnitudes = [np.abs(v) for _, v in seen]
    assert all(not np.allclose(a, b) for a, b in zip(magnitudes, magnitudes[1:]))
    again = cross_validate(config, folds, 10, seed=2, plan=Plan("vmap"))
    np.testing.assert_allclose(again.fold_scores, first.fold_scores, atol=2e-3)  # same keys per fold either way


@pytest.mark.parametrize("rule", NEW_RULES)
def test_diagnostics_cover_the_new_rules(rule):
    data, folds = fold_data("digits")
    config = TrainConfig(rule=rule, hidden=(24,), learning_rate=1e-2, epochs=3, batch_size=32)
    result = cross_validate(config, folds, 10, seed=0, plan=Plan("sequential", evals_per_epoch=2, diagnostics=True))
    final = {k: v[-1].mean() for k, v in result.points.items()}
    assert result.score > 0.7, result.fold_scores  # chance is 0.1
    assert 0 < final["update_angle/dense_0"] < 90 and np.isfinite(final["error_angle/dense_0"])
    assert final["update_angle/output"] < 1e-3  # the output layer gets the true error under every rule
    has_wb = {k.split("/")[1] for k in final if k.startswith("wb_angle/")}
    assert has_wb == (set() if rule == "drtp" else {"dense_0", "output"})
    if rule in ("usf", "brsf"):  # B has W's signs: well within 90 degrees
        assert final["wb_angle/output"] < 60, final


@pytest.mark.slow  # ~5-10 s each on a loaded 2-core CPU, mostly compilation
@pytest.mark.parametrize("rule", NEW_RULES)
def test_a_small_cnn_of_each_new_rule_trains_well_above_chance(rule):
    data, folds = fold_data("mnist-5k")
    config = TrainConfig(rule=rule, hidden=(64,), learning_rate=3e-3, epochs=3,
                         conv=(ConvLayer(8, 3, 2, "SAME", "max"),))
    result = cross_validate(config, folds, data.out_features, seed=0)
    assert result.score > 0.6, result.fold_scores  # chance is 0.1

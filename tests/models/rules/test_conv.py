"""Convolutions under every rule: VJPs against independent references, exact equivalences, shapes, training."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models.initializers import host_init
from models.networks import CNN, ConvLayer, pool, trunk_shape
from models.rule_training import TrainConfig, make_model
from models.rules import FEEDBACK, RULES, Conv, ConvForward, get_rule, rule_op


def bp_conv(x, kernel, bias, strides, padding):
    return rule_op(get_rule("bp"), ConvForward(strides, padding), x, kernel, bias, None, None)


def fa_conv(x, kernel, bias, feedback, strides, padding):
    return rule_op(get_rule("fa"), ConvForward(strides, padding), x, kernel, bias, feedback, None)


def kp_conv(x, kernel, bias, feedback, strides, padding):
    return rule_op(get_rule("kp"), ConvForward(strides, padding), x, kernel, bias, feedback, None)


def dfa_conv(x, kernel, bias, strides, padding):
    return rule_op(get_rule("dfa"), ConvForward(strides, padding), x, kernel, bias, None, None)

LAYOUTS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}
CASES = list(itertools.product([1, 2], [1, 2], ["SAME", "VALID"]))  # (spatial axes, stride, padding)


def lax_conv(x, w, b, strides, padding):
    """The reference: lax's convolution, differentiated by JAX's own transpose rules."""
    layout = LAYOUTS[w.ndim - 2]
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=layout) + b


def arrays(spatial, stride, seed=0, size=9, kernel=3, c_in=2, c_out=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4,) + (size,) * spatial + (c_in,))
    w = rng.standard_normal((kernel,) * spatial + (c_in, c_out))
    b = rng.standard_normal(c_out)
    feedback = rng.standard_normal(w.shape)
    strides = (stride,) * spatial
    return [jnp.asarray(a, jnp.float32) for a in (x, w, b, feedback)], strides, rng


@pytest.mark.parametrize("spatial,stride,padding", CASES)
@pytest.mark.parametrize("kernel", [5])
def test_bp_conv_and_its_vjp_match_lax(spatial, stride, padding, kernel):
    (x, w, b, _), strides, rng = arrays(spatial, stride, size=8, kernel=kernel)
    y, vjp = jax.vjp(lambda x, w, b: bp_conv(x, w, b, strides, padding), x, w, b)
    y_ref, vjp_ref = jax.vjp(lambda x, w, b: lax_conv(x, w, b, strides, padding), x, w, b)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    for got, want, name in zip(vjp(dy), vjp_ref(dy), ["dx", "dkernel", "dbias"]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)


def test_conv_forward_and_kernel_gradient_match_numpy_correlation():
    """A 1-D, stride-2, VALID convolution written out as loops in numpy."""
    (x, w, b, _), strides, rng = arrays(1, 2, size=9)
    xn, wn = np.asarray(x, np.float64), np.asarray(w, np.float64)
    k, out = wn.shape[0], (9 - 3) // 2 + 1
    y_np = np.stack([np.einsum("nki,kio->no", xn[:, 2 * t : 2 * t + k], wn) for t in range(out)], 1) + np.asarray(b)
    y, vjp = jax.vjp(lambda w: bp_conv(x, w, b, strides, "VALID"), w)
    np.testing.assert_allclose(y, y_np, rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y.shape)
    dw_np = sum(np.einsum("nki,no->kio", xn[:, 2 * t : 2 * t + k], dy[:, t]) for t in range(out))
    np.testing.assert_allclose(vjp(jnp.asarray(dy, jnp.float32))[0], dw_np, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spatial,stride,padding", CASES)
def test_fa_and_kp_with_feedback_equal_to_kernel_are_backprop_exactly(spatial, stride, padding):
    (x, w, b, _), strides, rng = arrays(spatial, stride)
    dy = jnp.asarray(rng.standard_normal(jax.eval_shape(lambda: bp_conv(x, w, b, strides, padding)).shape))

    @jax.jit
    def grads(dy):
        bp = jax.vjp(lambda x, w, b: bp_conv(x, w, b, strides, padding), x, w, b)[1](dy)
        fa = jax.vjp(lambda x, w, b, f: fa_conv(x, w, b, f, strides, padding), x, w, b, w)[1](dy)
        kp = jax.vjp(lambda x, w, b, f: kp_conv(x, w, b, f, strides, padding), x, w, b, w)[1](dy)
        return bp, fa, kp

    bp, fa, kp = grads(dy)
    for got in (fa[:3], kp[:3]):
        for a, c in zip(got, bp):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize("spatial,stride,padding", CASES)
def test_fa_kp_dfa_conv_gradients_against_the_lax_reference(spatial, stride, padding):
    (x, w, b, feedback), strides, rng = arrays(spatial, stride, seed=3)
    y = lax_conv(x, w, b, strides, padding)
    dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    # FA's input error is the transposed convolution with the feedback kernel; weight gradients are backprop's
    dx_b = jax.vjp(lambda x: lax_conv(x, feedback, b, strides, padding), x)[1](dy)[0]
    _, dw_ref, db_ref = jax.vjp(lambda x, w, b: lax_conv(x, w, b, strides, padding), x, w, b)[1](dy)

    out, vjp = jax.vjp(lambda *a: fa_conv(*a, strides, padding), x, w, b, feedback)
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-5)
    dx, dw, db, dfb = vjp(dy)
    for got, want in [(dx, dx_b), (dw, dw_ref), (db, db_ref)]:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(dfb, 0)  # fixed feedback

    dx, dw, db, dfb = jax.vjp(lambda *a: kp_conv(*a, strides, padding), x, w, b, feedback)[1](dy)
    np.testing.assert_allclose(dx, dx_b, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(dfb, dw)  # KP: the feedback kernel gets exactly the kernel's update
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4)

    dx, dw, db = jax.vjp(lambda *a: dfa_conv(*a, strides, padding), x, w, b)[1](dy)
    np.testing.assert_array_equal(dx, 0)  # DFA: nothing flows to the layer below
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, db_ref, rtol=1e-4, atol=1e-4)


def small_cnn(rule, spatial, pool_kind="max"):
    layers = (ConvLayer(4, 3, 1, "SAME", pool_kind), ConvLayer(5, 3, 2, "VALID"))
    shape = (6, 10, 10, 2) if spatial == 2 else (6, 12, 2)
    config = TrainConfig(rule=rule, hidden=(7,), learning_rate=0.1, conv=layers)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32)
    labels = rng.integers(0, 3, shape[0])
    model = make_model(config, 3)
    variables = host_init(model, x[:1], rng)
    return model, variables, x, labels


def cnn_grads(model, variables, x, labels):
    params = {**variables}.pop("params")
    fixed = {k: v for k, v in variables.items() if k != "params"}

    def loss(p):
        logits = model.apply({"params": p, **fixed}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return jax.jit(jax.grad(loss))(params)


@pytest.mark.parametrize("spatial", [1, 2])
def test_fa_cnn_with_feedback_equal_to_kernels_is_backprop_cnn_exactly(spatial):
    model, variables, x, labels = small_cnn("fa", spatial)
    variables["feedback"] = {name: {"feedback": layer["kernel"]} for name, layer in variables["params"].items()}
    fa = cnn_grads(model, variables, x, labels)
    bp_model = CNN(model.conv, model.hidden, 3, "bp")
    bp = cnn_grads(bp_model, {"params": variables["params"]}, x, labels)
    for a, b in zip(jax.tree_util.tree_leaves(fa), jax.tree_util.tree_leaves(bp)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("spatial", [1, 2])
def test_dfa_conv_hidden_error_is_the_projected_output_error(spatial):
    """conv_0's kernel gradient is built from e @ B.T reshaped to its feature map, times relu'."""
    model, variables, x, labels = small_cnn("dfa", spatial)
    grads = cnn_grads(model, variables, x, labels)
    params = variables["params"]
    logits = np.asarray(model.apply(variables, x), np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    error = (p / p.sum(1, keepdims=True) - np.eye(3)[labels]) / len(x)  # dL/dlogits
    strides = (1,) * spatial
    w, b = params["conv_0"]["kernel"], params["conv_0"]["bias"]
    a = lax_conv(jnp.asarray(x), w, b, strides, "SAME")
    B = np.asarray(variables["feedback"]["DirectFeedback_0"]["feedback"], np.float64)
    assert B.shape == (int(np.prod(a.shape[1:])), 3)
    delta = (error @ B.T).reshape(a.shape) * (np.asarray(a) > 0)
    _, dw, db = jax.vjp(lambda x, w, b: lax_conv(x, w, b, strides, "SAME"), jnp.asarray(x), w, b)[1](
        jnp.asarray(delta, jnp.float32)
    )
    np.testing.assert_allclose(grads["conv_0"]["kernel"], dw, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads["conv_0"]["bias"], db, rtol=1e-4, atol=1e-6)
    # the output layer still gets the plain output error from its own input
    assert set(variables["feedback"]) == {"DirectFeedback_0", "DirectFeedback_1", "DirectFeedback_2"}


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("spatial", [1, 2])
def test_cnn_shapes_and_where_feedback_lives(rule, spatial):
    model, variables, x, _ = small_cnn(rule, spatial)
    assert model.apply(variables, x).shape == (6, 3)
    kernel = variables["params"]["conv_1"]["kernel"]
    assert kernel.shape == (3,) * spatial + (4, 5)
    spatial_in = x.shape[1:-1]
    expected = trunk_shape(model.conv, spatial_in)
    assert variables["params"]["dense_0"]["kernel"].shape == (int(np.prod(expected)) * 5, 7)
    has_fixed = "feedback" in variables
    assert has_fixed == (RULES[rule].has_feedback_init and not RULES[rule].trains_feedback)  # fa, dfa, frsf, drtp
    if rule == "fa":
        assert variables["feedback"]["conv_1"]["feedback"].shape == kernel.shape
    if rule == "kp":
        assert variables["params"]["conv_1"]["feedback"].shape == kernel.shape


def test_trunk_shape_rejects_a_layer_that_does_not_fit():
    assert trunk_shape((ConvLayer(4, 5, 2, "VALID", "max"),), (28, 28)) == (6, 6)
    with pytest.raises(ValueError, match="conv layer 1"):
        trunk_shape((ConvLayer(4, 3, 2, "VALID"), ConvLayer(4, 5, 1, "VALID")), (8, 8))
    with pytest.raises(ValueError, match="pool must be one of"):
        ConvLayer(4, 3, pool="min")


def test_pooling_matches_flax_and_drops_an_odd_last_row():
    import flax.linen as nn

    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 9, 3)), jnp.float32)
    np.testing.assert_allclose(pool(x, "max"), nn.max_pool(x, (2, 2), (2, 2), "VALID"))
    np.testing.assert_allclose(pool(x, "avg"), nn.avg_pool(x, (2, 2), (2, 2), "VALID"), rtol=1e-6)
    assert pool(x[:, :, 0], "max").shape == (2, 3, 3)


def test_conv_layer_holds_its_rules_feedback_with_the_kernels_shape():
    layer = Conv(3, 5, 2, "VALID", rule="fa")
    init = jax.eval_shape(lambda: layer.init(jax.random.key(0), jnp.zeros((1, 9, 9, 2))))
    assert init[FEEDBACK][FEEDBACK].shape == init["params"]["kernel"].shape == (5, 5, 2, 3)
    trained = jax.eval_shape(lambda: Conv(3, 5, rule="kp").init(jax.random.key(0), jnp.zeros((1, 9, 2))))
    assert set(trained) == {"params"} and trained["params"][FEEDBACK].shape == (5, 2, 3)


@pytest.mark.slow  # ~10 s each on a loaded 2-core CPU, nearly all XLA compilation
@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize(
    "dataset,conv,epochs,threshold",
    [
        ("mnist-5k", (ConvLayer(8, 3, 2, "SAME", "max"),), 3, 0.6),
        ("mnist1d", (ConvLayer(16, 5, 1, "SAME", "max"), ConvLayer(16, 3, 1, "SAME", "max")), 10, 0.3),
    ],
)
def test_a_small_cnn_trains_well_above_chance(rule, dataset, conv, epochs, threshold):
    if rule == "drtp" and dataset == "mnist1d":  # measured: CNN 0.22, MLP 0.28 (a linear model gets ~0.3)
        pytest.xfail("drtp's target projections teach hidden layers little on mnist1d: a limit of the rule")
    from hpo.data import load_dataset, make_folds
    from models.train import FoldData, cross_validate

    data = load_dataset(dataset)
    folds = make_folds(data, 2, 0)
    fold_data = FoldData(jnp.asarray(data.x_train), jnp.asarray(data.y_train), folds.train_idx,
                         jnp.asarray(folds.val_idx), jnp.asarray(folds.val_mask))
    config = TrainConfig(rule=rule, hidden=(64,), learning_rate=3e-3, epochs=epochs, conv=conv,
                         weight_decay=1e-2 if RULES[rule].trains_feedback else 0.0)
    result = cross_validate(config, fold_data, data.out_features, seed=0)
    assert result.score > threshold, result.fold_scores  # chance is 0.1

"""Every rule's gradients against its closed-form update written in plain numpy, and exact equivalences."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models.networks import MLP
from models.rules import RULES, UnknownRuleError, direct_feedback, fa_dense, get_rule, kp_dense
from models.train import TrainConfig, init_variables


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def numpy_grads(rule, x, labels, kernels, biases, feedback, activation):
    """The rule's update for an MLP with mean softmax cross-entropy, written out by hand.

    kernels[i]: (n_i, n_{i+1}); feedback[i] is B_i of the kernel's shape (fa/kp) or, for dfa, the direct
    matrix of hidden layer i with shape (n_{i+1}, n_out).
    """
    f, df = activation
    hs, pre = [x], []
    for i, (w, b) in enumerate(zip(kernels, biases)):
        a = hs[-1] @ w + b
        pre.append(a)
        if i < len(kernels) - 1:
            hs.append(f(a))
    n = x.shape[0]
    error = (softmax(pre[-1]) - np.eye(pre[-1].shape[1])[labels]) / n  # dL/d(output pre-activation)
    deltas = [None] * len(kernels)
    deltas[-1] = error
    for i in range(len(kernels) - 2, -1, -1):
        if rule == "bp":
            back = deltas[i + 1] @ kernels[i + 1].T
        elif rule in ("fa", "kp"):
            back = deltas[i + 1] @ feedback[i + 1].T
        else:  # dfa: the output error straight to every hidden layer
            back = error @ feedback[i].T
        deltas[i] = back * df(pre[i])
    grads = {"kernel": [hs[i].T @ deltas[i] for i in range(len(kernels))], "bias": [d.sum(0) for d in deltas]}
    if rule == "kp":
        grads["feedback"] = list(grads["kernel"])
    return grads


TANH = (np.tanh, lambda a: 1 - np.tanh(a) ** 2)
LAYER_NAMES = {2: ["dense_0", "output"], 3: ["dense_0", "dense_1", "output"]}


def network_and_grads(rule_name, n_layers, seed=0):
    rng = np.random.default_rng(seed)
    widths = (7, 5)[: n_layers - 1]
    x = rng.standard_normal((11, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 11)
    model = MLP(widths, 4, rule_name, "tanh")
    config = TrainConfig(rule=rule_name, hidden=widths, learning_rate=0.1)
    variables = init_variables(model, x[:1], rng, config)
    params = variables.pop("params")

    def loss(p):
        logits = model.apply({"params": p, **variables}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = jax.grad(loss)(params)
    return x, labels, params, variables, grads


@pytest.mark.parametrize("n_layers", [2, 3])
@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_gradients_equal_closed_form_update(rule_name, n_layers):
    x, labels, params, fixed, grads = network_and_grads(rule_name, n_layers)
    names = LAYER_NAMES[n_layers]
    kernels = [np.asarray(params[n]["kernel"], np.float64) for n in names]
    biases = [np.asarray(params[n]["bias"], np.float64) for n in names]
    if rule_name in ("fa", "kp"):
        source = fixed.get("feedback", params)
        feedback = [np.asarray(source[n]["feedback"], np.float64) for n in names]
    elif rule_name == "dfa":
        taps = fixed["feedback"]
        feedback = [np.asarray(taps[f"DirectFeedback_{i}"]["feedback"], np.float64) for i in range(n_layers - 1)]
    else:
        feedback = None
    expected = numpy_grads(rule_name, x.astype(np.float64), labels, kernels, biases, feedback, TANH)
    for i, name in enumerate(names):
        for kind, values in expected.items():
            np.testing.assert_allclose(grads[name][kind], values[i], rtol=2e-4, atol=1e-6, err_msg=f"{name}.{kind}")
    # fixed feedback is never a trained parameter
    if rule_name in ("fa", "dfa"):
        assert all("feedback" not in params[n] for n in names)


def test_fa_with_feedback_equal_to_kernel_is_backprop_exactly():
    x, labels, params, fixed, _ = network_and_grads("fa", 3)
    fixed = jax.tree_util.tree_map(lambda a: a, fixed)
    for name in LAYER_NAMES[3]:
        fixed["feedback"][name]["feedback"] = params[name]["kernel"]
    fa_model = MLP((7, 5), 4, "fa", "tanh")
    bp_model = MLP((7, 5), 4, "bp", "tanh")

    def loss(model, variables, p):
        logits = model.apply({"params": p, **variables}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    # compiled, as training runs (eager op-by-op dispatch may round the last bit differently)
    fa_grads = jax.jit(jax.grad(lambda p: loss(fa_model, fixed, p)))(params)
    bp_grads = jax.jit(jax.grad(lambda p: loss(bp_model, {}, p)))(params)
    for a, b in zip(jax.tree_util.tree_leaves(fa_grads), jax.tree_util.tree_leaves(bp_grads)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fa_and_kp_dense_with_b_equal_w_match_autodiff_exactly():
    rng = np.random.default_rng(1)
    x, w, b = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in [(3, 4), (4, 2), (2,)])
    cot = jnp.asarray(rng.standard_normal((3, 2)), jnp.float32)
    _, ref_vjp = jax.vjp(lambda x, w, b: x @ w + b, x, w, b)
    for fn in (fa_dense, kp_dense):
        _, vjp = jax.vjp(fn, x, w, b, w)
        for got, want in zip(vjp(cot)[:3], ref_vjp(cot)):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_dfa_in_a_linear_network_with_downstream_product_is_backprop():
    """With B_l = W_{l+1} ... W_L and identity activations, DFA's hidden error is backprop's."""
    x, labels, params, fixed, _ = network_and_grads("dfa", 3)
    w1, w2 = params["dense_1"]["kernel"], params["output"]["kernel"]
    fixed["feedback"]["DirectFeedback_0"]["feedback"] = w1 @ w2
    fixed["feedback"]["DirectFeedback_1"]["feedback"] = w2

    def loss(model, variables, p):
        logits = model.apply({"params": p, **variables}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    dfa = jax.grad(lambda p: loss(MLP((7, 5), 4, "dfa", "identity"), fixed, p))(params)
    bp = jax.grad(lambda p: loss(MLP((7, 5), 4, "bp", "identity"), {}, p))(params)
    for a, b in zip(jax.tree_util.tree_leaves(dfa), jax.tree_util.tree_leaves(bp)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_direct_feedback_is_zero_forward_and_projects_backward():
    rng = np.random.default_rng(2)
    a = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)
    B = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
    out, vjp = jax.vjp(direct_feedback, a, B)
    np.testing.assert_array_equal(np.asarray(out), np.zeros((5, 4)))
    e = jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)
    da, dB = vjp(e)
    np.testing.assert_allclose(np.asarray(da), np.asarray(e) @ np.asarray(B).T, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(dB), 0)


def test_unknown_rule_lists_known_ones():
    with pytest.raises(UnknownRuleError, match=r"unknown learning rule 'xyz'; known rules: bp, dfa, fa, kp"):
        get_rule("xyz")
    assert get_rule("kp").trains_feedback and not get_rule("fa").trains_feedback

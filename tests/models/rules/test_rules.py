"""Every rule's gradients against its closed-form update written in plain numpy, and exact equivalences."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models.initializers import host_init
from models.networks import MLP
from models.rules import RULES, TAPS, DenseForward, UnknownRuleError, direct_tap, get_rule, registry, rule_op


def fa_dense(x, kernel, bias, feedback):
    return rule_op(get_rule("fa"), DenseForward(), x, kernel, bias, feedback, None)


def kp_dense(x, kernel, bias, feedback):
    return rule_op(get_rule("kp"), DenseForward(), x, kernel, bias, feedback, None)


def direct_feedback(hidden, feedback):
    return direct_tap(hidden, feedback, None)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def numpy_grads(rule, x, labels, kernels, biases, feedback, activation):
    """The rule's update for an MLP with mean softmax cross-entropy, written out by hand.

    kernels[i]: (n_i, n_{i+1}); feedback[i] is B_i of the kernel's shape (fa/kp; frsf: the stored R whose
    magnitudes |R| get the kernel's signs; brsf: the drawn B itself) or, for dfa and drtp, the direct matrix of
    hidden layer i with shape (n_{i+1}, n_out). usf needs none: B = sign(W) / sqrt(fan_in).
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
        elif rule in ("fa", "kp", "brsf"):
            back = deltas[i + 1] @ feedback[i + 1].T
        elif rule == "usf":  # the current kernel's signs, scaled by 1/sqrt(fan_in)
            w = kernels[i + 1]
            back = deltas[i + 1] @ (np.sign(w) / np.sqrt(w.shape[0])).T
        elif rule == "frsf":  # fixed magnitudes, the current kernel's signs
            back = deltas[i + 1] @ (np.abs(feedback[i + 1]) * np.sign(kernels[i + 1])).T
        elif rule == "drtp":  # the one-hot target (not the error) straight to every hidden layer, batch mean
            back = np.eye(pre[-1].shape[1])[labels] @ feedback[i].T / n
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
    variables = host_init(model, x[:1], rng)
    params = variables.pop("params")
    inputs = get_rule(rule_name).apply_kwargs(labels, jax.random.key(seed))  # target (drtp), rng (brsf)

    def loss(p):
        logits = model.apply({"params": p, **variables}, x, **inputs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = jax.grad(loss)(params)
    return x, labels, params, variables, grads


@pytest.fixture
def brsf_draws(monkeypatch):
    """Records every feedback matrix brsf draws, by kernel shape (the shapes of one test network differ)."""
    drawn = {}
    real = registry.brsf_feedback

    def recording(kernel, key, scale=None):
        b = real(kernel, key, scale)
        jax.debug.callback(lambda v: drawn.__setitem__(v.shape, np.asarray(v, np.float64)), b)
        return b

    monkeypatch.setattr(registry, "brsf_feedback", recording)
    return drawn


@pytest.mark.parametrize("n_layers", [2, 3])
@pytest.mark.parametrize("rule_name", sorted(RULES))
def test_gradients_equal_closed_form_update(rule_name, n_layers, brsf_draws):
    x, labels, params, fixed, grads = network_and_grads(rule_name, n_layers)
    names = LAYER_NAMES[n_layers]
    kernels = [np.asarray(params[n]["kernel"], np.float64) for n in names]
    biases = [np.asarray(params[n]["bias"], np.float64) for n in names]
    if rule_name in ("fa", "kp", "frsf"):
        source = fixed.get("feedback", params)
        feedback = [np.asarray(source[n]["feedback"], np.float64) for n in names]
    elif rule_name in ("dfa", "drtp"):
        taps = fixed["feedback"]
        tap = TAPS[get_rule(rule_name).direct].__name__
        feedback = [np.asarray(taps[f"{tap}_{i}"]["feedback"], np.float64) for i in range(n_layers - 1)]
    elif rule_name == "brsf":  # the draws of this backward pass: signs of the kernels, |R| of mean square 1/fan_in
        jax.effects_barrier()  # the debug callbacks have run
        feedback = [brsf_draws[k.shape] for k in kernels]
        for w, b in zip(kernels[1:], feedback[1:]):
            np.testing.assert_array_equal(np.sign(b), np.sign(w))
    else:
        feedback = None
    expected = numpy_grads(rule_name, x.astype(np.float64), labels, kernels, biases, feedback, TANH)
    for i, name in enumerate(names):
        for kind, values in expected.items():
            np.testing.assert_allclose(grads[name][kind], values[i], rtol=2e-4, atol=1e-6, err_msg=f"{name}.{kind}")
    # fixed feedback is never a trained parameter
    if rule_name in ("fa", "dfa", "frsf", "drtp"):
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
    with pytest.raises(
        UnknownRuleError, match=r"unknown learning rule 'xyz'; known rules: bp, brsf, dfa, drtp, fa, frsf, kp, usf"
    ):
        get_rule("xyz")
    assert get_rule("kp").trains_feedback and not get_rule("fa").trains_feedback

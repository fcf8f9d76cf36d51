"""The shape of the code the other tests rely on: one rule operation, declared initialisers, static fields."""

import ast
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models.initializers import FanIn, Zeros, host_init
from models.rule_training import TrainConfig
from models.rules import Dense, DFADense, DirectFeedback
from models.train import Static, traced_values

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_models_define_at_most_five_custom_vjps():
    """Every rule's backward pass comes from one operation (models.rules.ops.rule_op), not one function per rule."""
    count = 0
    for path in MODELS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "custom_vjp":
                count += 1
    assert 1 <= count <= 5, count


def test_host_init_draws_from_each_layers_declared_initialiser():
    model = Dense(400, rule="fa", kernel_init=FanIn(3.0), feedback_init=FanIn(0.5, "uniform"), bias_init=Zeros())
    variables = host_init(model, np.zeros((1, 300), np.float32), np.random.default_rng(0))
    kernel, feedback = variables["params"]["kernel"], variables["feedback"]["feedback"]
    assert kernel.dtype == np.float32 and kernel.shape == (300, 400)
    assert kernel.std() == pytest.approx(3.0 / np.sqrt(300), rel=0.01)
    assert np.abs(kernel).max() <= 2 * 3.0 / np.sqrt(300) / 0.8796 + 1e-6  # truncated at two standard deviations
    assert feedback.std() == pytest.approx(0.5 / np.sqrt(300), rel=0.01)
    assert np.abs(feedback).max() <= 0.5 * np.sqrt(3 / 300)  # uniform of that variance
    np.testing.assert_array_equal(variables["params"]["bias"], 0)
    # a plain Flax initialiser is drawn with JAX on the host, with the variable's shape
    other = host_init(Dense(5, kernel_init=jax.nn.initializers.ones), np.zeros((1, 3)), np.random.default_rng(0))
    np.testing.assert_array_equal(other["params"]["kernel"], np.ones((3, 5)))
    # the same seed gives the same network; the same structure as the modules' own init
    again = host_init(model, np.zeros((1, 300), np.float32), np.random.default_rng(0))
    np.testing.assert_array_equal(again["params"]["kernel"], kernel)
    # the trace is kept per network and input shape (models.initializers._declared_variables), never across them
    rescaled = Dense(400, rule="fa", kernel_init=FanIn(1.0), feedback_init=FanIn(0.5, "uniform"), bias_init=Zeros())
    other_draw = host_init(rescaled, np.zeros((1, 300), np.float32), np.random.default_rng(0))
    np.testing.assert_allclose(other_draw["params"]["kernel"], kernel / 3.0, rtol=1e-6)
    wider_input = host_init(model, np.zeros((1, 30), np.float32), np.random.default_rng(0))
    assert wider_input["params"]["kernel"].shape == (30, 400)
    flax_init = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 300))))
    assert jax.tree_util.tree_structure(flax_init) == jax.tree_util.tree_structure(variables)


def test_xavier_initialisation_is_pytorchs_xavier_uniform_for_dense_and_conv_kernels():
    """Glorot's variance 2 / (fan_in + fan_out), uniform: bound sqrt(6 / (fan_in + fan_out)); a convolution's fans
    count its window (PyTorch's and Flax's convention), on the host and in Flax alike."""
    from models.initializers import FanAvg

    rng = np.random.default_rng(0)
    for shape in ((300, 100), (5, 5, 6, 16)):
        fans = (np.prod(shape[:-1]), np.prod(shape[:-2]) * shape[-1])
        bound = np.sqrt(6 / sum(fans))
        host = FanAvg().host(rng, shape)
        flax = np.asarray(FanAvg()(jax.random.key(0), shape))
        for draw in (host, flax):
            assert np.abs(draw).max() <= bound + 1e-6 and np.abs(draw).max() > 0.98 * bound
            assert draw.std() == pytest.approx(np.sqrt(2 / sum(fans)), rel=0.03)
        assert FanAvg(0.5).host(np.random.default_rng(1), shape).std() == pytest.approx(
            0.5 * np.sqrt(2 / sum(fans)), rel=0.03)


def test_a_config_with_xavier_init_draws_xavier_kernels_and_feedback_and_compiles_the_same_programs():
    from models.networks import ConvLayer
    from models.rule_training import TrainConfig, make_model
    from models.train.fields import Static

    base = dict(rule="fa", hidden=(84,), learning_rate=0.1, conv=(ConvLayer(6, 5, padding="VALID", pool="max"),),
                feedback_distribution="uniform", feedback_scale=2.0)
    xavier, lecun = TrainConfig(**base, init="xavier"), TrainConfig(**base)
    x = np.zeros((1, 32, 32, 1), np.float32)
    variables = host_init(make_model(xavier, 10), x, np.random.default_rng(0))
    conv = variables["params"]["conv_0"]["kernel"]  # (5, 5, 1, 6): fans 25 and 150
    assert np.abs(conv).max() <= np.sqrt(6 / 175) + 1e-6 and conv.std() == pytest.approx(np.sqrt(2 / 175), rel=0.1)
    feedback = variables["feedback"]["output"]["feedback"]  # (84, 10), scaled by the feedback scale
    assert np.abs(feedback).max() <= 2.0 * np.sqrt(6 / 94) + 1e-6 and np.abs(feedback).max() > 1.5 * np.sqrt(6 / 94)
    default = host_init(make_model(lecun, 10), x, np.random.default_rng(0))["params"]["conv_0"]["kernel"]
    assert default.std() == pytest.approx(1 / np.sqrt(25), rel=0.1)  # LeCun's, unchanged
    assert Static(xavier) == Static(lecun)  # initialisation is drawn on the host: the same compiled programs
    with pytest.raises(ValueError, match="init must be one of lecun, xavier"):
        TrainConfig(**base, init="he")


def test_static_view_hides_traced_and_host_fields():
    a = TrainConfig(rule="fa", hidden=(8,), learning_rate=0.1, epochs=3, feedback_scale=2.0)
    b = TrainConfig(rule="fa", hidden=(8,), learning_rate=0.5, epochs=9, momentum=0.5)
    assert Static(a) == Static(b) and hash(Static(a)) == hash(Static(b))  # they share compiled programs
    assert Static(a) != Static(TrainConfig(rule="fa", hidden=(16,), learning_rate=0.1))
    assert Static(a).hidden == (8,)
    for name in ("learning_rate", "epochs", "feedback_scale"):
        with pytest.raises(AttributeError, match="not a static field"):
            getattr(Static(a), name)
    assert traced_values(b) == {
        "learning_rate": np.float32(0.5), "momentum": np.float32(0.5), "weight_decay": np.float32(0.0),
        "activation": np.int32(0), "optimizer": np.int32(0),
    }
    # a choice field is its index among the choices one program serves, so the choices are static and the value is not
    c = TrainConfig(rule="fa", hidden=(8,), learning_rate=0.1, activation="tanh", activation_choices=("relu", "tanh"),
                    optimizer="sgd", optimizer_choices=("adam", "sgd"))
    d = TrainConfig(rule="fa", hidden=(8,), learning_rate=0.2, activation="relu", activation_choices=("relu", "tanh"),
                    optimizer="adam", optimizer_choices=("adam", "sgd"))
    assert Static(c) == Static(d) and Static(c) != Static(a)
    assert (traced_values(c)["activation"], traced_values(c)["optimizer"]) == (1, 1)
    with pytest.raises(AttributeError, match="not a static field"):
        _ = Static(c).activation


def _dfa_grads(model):
    x, labels = jnp.ones((4, 6)), jnp.array([0, 1, 2, 3])
    variables = model.init(jax.random.key(0), x)
    params, fixed = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p, **fixed}, x), labels).mean()

    grads = jax.grad(loss)(params)
    jax.effects_barrier()  # the run-time check reports through a host callback
    return grads


def test_a_dfa_layer_without_its_tap_warns_that_it_gets_no_error():
    import flax.linen as nn

    class NoTap(nn.Module):
        @nn.compact
        def __call__(self, x):
            return DFADense(4)(nn.sigmoid(DFADense(5)(x)))

    class WithTap(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.sigmoid(DFADense(5)(x))
            return DFADense(4)(h) + DirectFeedback(4)(h)

    def hidden_kernel(grads):
        return next(np.asarray(g["kernel"]) for g in grads.values() if g["kernel"].shape == (6, 5))

    with pytest.warns(UserWarning, match="received an all-zero error"):
        grads = _dfa_grads(NoTap())
    assert not hidden_kernel(grads).any()  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grads = _dfa_grads(WithTap())
    assert hidden_kernel(grads).any()

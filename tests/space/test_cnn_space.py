"""The CNN search space proposes only architectures that fit the input: property tests over many samples."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optuna
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hpo.config import StudyConfig
from hpo.data import Dataset
from hpo.errors import UsageError
from hpo.space.algorithms import check_dataset, suggest
from hpo.space.cnn import CONV_CHOICES, MAX_CONV_MACS, layer_fits, suggest_cnn, suggest_conv_layer
from hpo.study.runner import make_sampler
from models.networks import ConvLayer
from models.rule_training import make_model
from models.rules import RULES

SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3), (40, 1)]  # digits, mnist, cifar-like images; mnist1d sequences


def fake_dataset(shape, n=3):
    x = np.zeros((n, *shape), np.float32)
    y = np.zeros(n, np.int32)
    return Dataset(f"fake{shape}", "classification", x, y, x, y, 10)


class HypothesisTrial:
    """A stand-in for ``optuna.Trial`` whose every answer hypothesis draws (and can shrink)."""

    def __init__(self, data):
        self.data, self.params, self.user_attrs = data, {}, {}

    def suggest_categorical(self, name, choices):
        return self._keep(name, self.data.draw(st.sampled_from(list(choices)), label=name))

    def suggest_int(self, name, low, high, log=False):
        return self._keep(name, self.data.draw(st.integers(low, high), label=name))

    def suggest_float(self, name, low, high, log=False):
        return self._keep(name, self.data.draw(st.floats(low, high), label=name))

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value

    def _keep(self, name, value):
        assert name not in self.params, f"parameter {name!r} asked twice"
        self.params[name] = value
        return value


def check_architecture(config, shape):
    """Every conv layer leaves extents >= 1 within budget, and the network runs (abstractly) to logits."""
    spatial, channels = shape[:-1], shape[-1]
    for layer in config.conv:
        assert layer.macs(spatial, channels) <= MAX_CONV_MACS
        spatial, channels = tuple(layer.output_size(n) for n in spatial), layer.features
        assert min(spatial) >= 1
    model = make_model(config, 10)
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    # lax's shape rules reject any convolution or pooling that does not fit, so this is a forward pass on shapes
    variables = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x), x)
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 10)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from(SHAPES), algo=st.sampled_from(sorted(RULES)), data=st.data())
def test_every_architecture_hypothesis_can_choose_fits_and_runs(shape, algo, data):
    trial = HypothesisTrial(data)
    config = suggest_cnn(trial, StudyConfig(algo=algo, model="cnn"), fake_dataset(shape))
    assert 1 <= len(config.conv) <= 3
    check_architecture(config, shape)
    # the objective retrains the best trial from its parameters with a FixedTrial: the same network comes out
    assert suggest_cnn(optuna.trial.FixedTrial(trial.params), StudyConfig(algo=algo, model="cnn"),
                       fake_dataset(shape)) == config


# What a [space] table may allow for each conv field: subsets of the defaults and values beyond them (big kernels,
# stride 3, 64 channels), restrictive enough that some combinations cannot fit the smaller inputs at all.
USER_CONV_OPTIONS = {
    "features": [[8], [4, 64], [16, 32], [64]], "padding": [["VALID"], ["SAME"], ["SAME", "VALID"]],
    "kernel": [[1], [3], [5, 7], [9], [3, 9]], "stride": [[1], [2, 3], [3]], "pool": [["max"], ["none", "avg"], ["avg"]],
}
CONV_KEYS = {"features": "conv_channels", "padding": "conv_padding", "kernel": "conv_kernel", "stride": "conv_stride",
             "pool": "conv_pool"}


def some_trunk_fits(shape, allowed, depth):
    """Independent exhaustive search: does any trunk of ``depth`` layers from the allowed values fit ``shape``?"""
    spatial, channels = shape[:-1], shape[-1]
    if depth == 0:
        return True
    for values in itertools.product(*(allowed[f] for f in CONV_CHOICES)):
        layer = ConvLayer(**dict(zip(CONV_CHOICES, values)))
        if layer_fits(layer, spatial, channels):
            after = (*(layer.output_size(n) for n in spatial), layer.features)
            if some_trunk_fits(after, allowed, depth - 1):
                return True
    return False


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from(SHAPES), data=st.data())
def test_user_restricted_conv_choices_are_refused_up_front_or_always_fit(shape, data):
    """Random [space] restrictions (fixed values, subsets, values beyond the defaults, fixed depths): either the
    study is refused before it starts because no trunk of the smallest allowed depth fits, or every architecture the
    sampler can reach fits, runs, uses only allowed values and has an allowed depth."""
    space, allowed = {}, {}
    for field, options in USER_CONV_OPTIONS.items():
        chosen = data.draw(st.sampled_from(options), label=field)
        if data.draw(st.booleans(), label=f"override {field}"):
            space[CONV_KEYS[field]] = chosen[0] if len(chosen) == 1 else chosen
            allowed[field] = chosen
        else:
            allowed[field] = list(CONV_CHOICES[field])
    low = data.draw(st.integers(1, 3), label="conv_layers low")
    high = data.draw(st.integers(low, 3), label="conv_layers high")
    space["conv_layers"] = low if low == high else {"low": low, "high": high}
    config = StudyConfig(algo="fa", model="cnn", space=space)
    dataset = fake_dataset(shape, n=400)  # folds large enough for every batch size
    if not some_trunk_fits(shape, allowed, low):
        event("refused: no trunk fits")
        with pytest.raises(UsageError, match="cannot build"):
            check_dataset(config, dataset)
        return
    check_dataset(config, dataset)
    trial = HypothesisTrial(data)
    network = suggest_cnn(trial, config, dataset)
    event(f"built {len(network.conv)} of {low}..{high} layers")
    assert low <= len(network.conv) <= high
    for layer in network.conv:
        assert all(getattr(layer, field) in allowed[field] for field in CONV_CHOICES), layer
    check_architecture(network, shape)
    assert not {key for key, value in space.items() if not isinstance(value, (list, dict))} & set(trial.params)
    assert suggest_cnn(optuna.trial.FixedTrial(trial.params), config, dataset) == network


@pytest.mark.slow  # 30-50 s of study processes or eager training; run with -m slow
@settings(max_examples=25, deadline=None)
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**31 - 1))
def test_optuna_random_sampler_proposals_fit_and_run(shape, seed):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(4):
        trial = study.ask()
        check_architecture(suggest(trial, StudyConfig(algo="dfa", model="cnn"), fake_dataset(shape)), shape)
        study.tell(trial, 0.5)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_tpe_study_never_sees_one_parameter_with_two_choice_sets(shape):
    """Restricted choices get their own parameter names, so Optuna's distribution check never fires."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = StudyConfig(algo="kp", model="cnn", sampler="tpe", seed=1)
    study = optuna.create_study(sampler=make_sampler(config))
    dataset = fake_dataset(shape)
    for i in range(40):
        trial = study.ask()
        check_architecture(suggest(trial, config, dataset), shape)
        study.tell(trial, float(i % 7))
    names = {name for t in study.trials for name in t.params}
    for name in names:
        distributions = {repr(t.distributions[name]) for t in study.trials if name in t.params}
        assert len(distributions) == 1, name


@pytest.mark.parametrize("shape,algo", list(zip(SHAPES, ["fa", "dfa", "kp", "bp"])))
def test_sampled_networks_really_run_forward(shape, algo):
    """One sampled architecture per input shape, executed on real arrays (each costs a compilation)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    config = suggest(study.ask(), StudyConfig(algo=algo, model="cnn"), fake_dataset(shape))
    model = make_model(config, 10)
    logits = jax.jit(lambda x: model.apply(model.init(jax.random.key(0), x), x))(x)
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))


def test_tiny_inputs_are_restricted_to_what_fits():
    """On a 3-long sequence VALID padding fits only kernel 3; on extent 1 only SAME is left (not even asked)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        layer = suggest_conv_layer(trial, 0, (3,), 1)
        assert layer.output_size(3) >= 1
        if layer.padding == "VALID":
            assert layer.kernel == 3 and layer.pool == "none"
        seen.update(trial.params)
        study.tell(trial, 0.0)
    assert "conv1_kernel" in seen and "conv1_pool" in seen
    trial = study.ask()
    layer = suggest_conv_layer(trial, 1, (1,), 8)
    assert layer.padding == "SAME" and layer.pool == "none"
    assert not any(name.startswith(("conv2_padding", "conv2_pool")) for name in trial.params)


def test_nothing_fits_prunes_at_once_with_the_reason():
    """A 512 x 512 map with 32 channels exceeds the compute budget for every choice: pruned, not crashed."""
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="conv1_channels"):
        suggest_conv_layer(trial, 0, (512, 512), 32)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert "fits the input" in study.trials[0].user_attrs["pruned_reason"]
    assert min(CONV_CHOICES["features"]) * 9 * 32 * 256 * 256 > MAX_CONV_MACS


def test_inputs_without_spatial_axes_are_a_usage_error():
    with pytest.raises(UsageError, match=r"--model cnn needs sequences .* shape \(20,\); use --model mlp"):
        check_dataset(StudyConfig(algo="bp", model="cnn"), fake_dataset((20,)))


LENET5_SPACE = {  # LeNet-5's form on 28x28 images: two 5x5 convolutions with max pooling, two dense layers after
    "conv_layers": 2, "conv_channels": [6, 16], "conv_kernel": 5, "conv_stride": 1, "conv_padding": ["SAME", "VALID"],
    "conv_pool": "max", "head_layers": 2, "head_width": [84, 120],
}


def test_a_space_expresses_lenet5_and_builds_its_network():
    """The CNN space reaches LeNet-5 (conv 6@5x5 SAME, pool, conv 16@5x5 VALID, pool: 16 x 5 x 5 = 400 features,
    then two dense layers) when a [space] asks for it; the default space keeps one dense layer."""
    study = StudyConfig(algo="fa", model="cnn", dataset="mnist-5k", epochs=1, space=LENET5_SPACE)
    params = {"conv1_channels": 6, "conv1_padding": "SAME", "conv2_channels": 16, "conv2_padding": "VALID",
              "head_width": 120, "optimizer": "adam", "lr_adam": 1e-3, "batch_size": 64,
              "feedback_distribution": "normal", "feedback_scale": 1.0}
    config = suggest(optuna.trial.FixedTrial(params), study, fake_dataset((28, 28, 1)))
    assert config.conv == (ConvLayer(features=6, kernel=5, padding="SAME", pool="max"),
                           ConvLayer(features=16, kernel=5, padding="VALID", pool="max"))
    assert config.hidden == (120, 120)
    model = make_model(config, 10)
    x = np.random.default_rng(0).standard_normal((2, 28, 28, 1)).astype(np.float32)
    variables = model.init(jax.random.key(0), x)
    assert variables["params"]["dense_0"]["kernel"].shape == (400, 120)  # the trunk leaves LeNet's 400 features
    assert variables["params"]["dense_1"]["kernel"].shape == (120, 120)
    default = suggest(optuna.create_study().ask(), StudyConfig(algo="fa", model="cnn"), fake_dataset((28, 28, 1)))
    assert len(default.hidden) == 1


def test_studies_stored_before_head_layers_resume_with_one_dense_layer(tmp_path):
    """A parameter added to a space after studies were stored reads, in their stored space, as the value they used
    (head_layers: 1): they resume with the default space, and a [space] that asks for other values is refused."""
    from hpo.record import write_study
    from hpo.space.overrides import record_space, stored_space

    config = StudyConfig(algo="fa", model="cnn", dataset="mnist1d")
    study = optuna.create_study()
    old = {name: spec for name, spec in stored_space(config).items() if name != "head_layers"}
    write_study(study, space=old)
    record_space(study, config, "memory")  # resumes
    deeper = StudyConfig(algo="fa", model="cnn", dataset="mnist1d", space={"head_layers": 2})
    with pytest.raises(UsageError, match="was created with space parameter head_layers fixed 1, got fixed 2"):
        record_space(study, deeper, "memory")

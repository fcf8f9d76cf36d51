"""Search spaces: every model family's hyperparameters as a table of ``Parameter``s, and the define-by-run functions
that turn an Optuna trial into that family's configuration (``models.rule_training.TrainConfig``,
``models.sd.SDConfig``), one ``Space`` per model (``hpo.space.algorithms`` says which algorithm uses which).

A parameter's default range or choices is data (``MLP_PARAMETERS``, ``CNN_PARAMETERS``, ``SD_PARAMETERS``); a study
may override any of them from its ``[space]`` tables (``hpo.space.overrides``): a list of choices, a ``{low, high,
log}`` range, or a fixed value that is then not searched at all. Every question a suggest function asks goes through
``EffectiveSpace.ask``, which applies the override: a fixed value makes no ``trial.suggest_*`` call, a narrowed range
or choice set is asked under the parameter's usual Optuna name. With no override the names and distributions are
exactly those of the default space, so studies stored before spaces became data read the same.

Parameters that change array shapes (width, depth, batch size) come from small sets, so compiled programs are
reused across trials; scalars (learning rate, momentum, decay, feedback scale) are continuous and traced.
Rule-specific parameters exist only for the rules that have them (``Rule.has_feedback_init``,
``Rule.trains_feedback``), and conditional ones are asked only when their condition holds (``momentum`` only with
sgd), so the space of each rule is exactly what that rule can use.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import optuna

from hpo.data import Dataset
from hpo.errors import UsageError
from hpo.record import write_trial
from hpo.space.parameters import (
    Choices,
    Condition,
    Domain,
    EffectiveSpace,
    Fixed,
    Parameter,
    Range,
    effective_space,
    show,
)
from models.networks import ACTIVATIONS, POOLS, ConvLayer
from models.rule_training import FEEDBACK_DISTRIBUTIONS as FEEDBACK_INITS
from models.rule_training import OPTIMIZERS, TrainConfig
from models.rules.conv import PADDINGS
from models.sd import MAX_RATE_PER_STEP, SDConfig


class StudySettings(Protocol):
    """What a space reads of the study's configuration (``hpo.config.StudyConfig``)."""

    algo: str
    model: str
    epochs: int
    folds: int
    space: Mapping[str, Any]  # the study's overrides: parameter name -> value, [choices] or {low, high, log}


# The default spaces. The constants are the default ranges and choices; the tables below say what each one is.

WIDTHS = (64, 128, 256, 512)  # hidden-layer width (all hidden layers share it)
DEPTHS = (1, 3)  # inclusive range of hidden layers
BATCH_SIZES = (32, 64, 128)
ACTIVATION_CHOICES = ("relu", "tanh")
OPTIMIZER_CHOICES = ("adam", "sgd")  # sgd: heavy-ball momentum
ADAM_LR = (1e-4, 1e-2)  # log-uniform
# log-uniform; down to 1e-4 so SGD with momentum 0.9 reaches DRTP's published rate (README, published regimes)
SGD_LR = (1e-4, 3e-1)
# from 0 (plain SGD, as Lillicrap et al. 2016 and Akrout et al. 2019's MNIST code) to heavy-ball 0.99
MOMENTUM = (0.0, 0.99)
FEEDBACK_DISTRIBUTIONS = ("normal", "uniform")
FEEDBACK_SCALE = (0.1, 10.0)  # log-uniform multiplier of the 1/fan_in-variance initialisation
# Kolen-Pollack's decay as the per-step shrink factor p = lr x weight_decay of W - B (log-uniform): W and B receive
# the same update, so W - B is multiplied by exactly (1 - p) every step, whatever the optimiser and learning rate.
# With S steps per run, (1 - p)^S of the initial difference is left: on mnist-5k (3 folds, 10 epochs, S = 200 at
# batch 128 to 830 at batch 32) 1e-5 leaves > 99% (no alignment beyond fa's), 1e-3 44-82%, 1e-2 0.02-13%. Measured
# there (784-256-10, Adam 1e-3, batch 64): final W-B angles 68, 60, 3-5 and 0.001 degrees at p = 1e-5, 1e-3, 1e-2,
# 3e-2 (README), so the range reaches past Akrout et al.'s few degrees instead of ending on them.
KP_DECAY_PER_STEP = (1e-5, 3e-2)

POSITIVE = Domain(low=0.0, low_open=True)
AT_LEAST_ONE = Domain(low=1)
OPTIMIZER_SGD = Condition("optimizer", lambda v: v == "sgd", "optimizer = sgd")
OPTIMIZER_ADAM = Condition("optimizer", lambda v: v == "adam", "optimizer = adam")

TRAINING_PARAMETERS = (
    Parameter("optimizer", str, Choices(OPTIMIZER_CHOICES), Domain(values=OPTIMIZERS),
              "adam, or sgd with heavy-ball momentum"),
    Parameter("lr_adam", float, Range(*ADAM_LR, log=True), POSITIVE, "Adam's learning rate", OPTIMIZER_ADAM),
    Parameter("lr_sgd", float, Range(*SGD_LR, log=True), POSITIVE, "SGD's learning rate", OPTIMIZER_SGD),
    Parameter("momentum", float, Range(*MOMENTUM), Domain(low=0.0, high=1.0, high_open=True), "SGD's momentum",
              OPTIMIZER_SGD),
    Parameter("batch_size", int, Choices(BATCH_SIZES), AT_LEAST_ONE, "mini-batch size"),
    Parameter("feedback_distribution", str, Choices(FEEDBACK_DISTRIBUTIONS), Domain(values=tuple(FEEDBACK_INITS)),
              "feedback matrices: truncated normal or uniform, variance 1/fan_in", rules="has_feedback_init"),
    Parameter("feedback_scale", float, Range(*FEEDBACK_SCALE, log=True), POSITIVE,
              "multiplies every initial feedback matrix", rules="has_feedback_init"),
    Parameter("kp_decay_per_step", float, Range(*KP_DECAY_PER_STEP, log=True),
              Domain(low=0.0, high=1.0, high_open=True),
              "fraction of W and B (so of W - B) decayed per step; weight_decay = this / learning rate",
              rules="trains_feedback"),
)

MLP_PARAMETERS = (
    Parameter("depth", int, Range(*DEPTHS), AT_LEAST_ONE, "hidden layers"),
    Parameter("width", int, Choices(WIDTHS), AT_LEAST_ONE, "units of every hidden layer"),
    Parameter("activation", str, Choices(ACTIVATION_CHOICES), Domain(values=tuple(ACTIVATIONS)), "hidden nonlinearity"),
    *TRAINING_PARAMETERS,
)

CONV_LAYERS = (1, 3)  # inclusive range of convolutional layers
CONV_CHOICES: dict[str, tuple] = {  # ConvLayer field -> default choices, asked in this order
    "features": (8, 16, 32),  # output channels
    "padding": ("SAME", "VALID"),
    "kernel": (3, 5),  # window extent along every spatial axis
    "stride": (1, 2),
    "pool": ("none", "max", "avg"),  # 2-wide pooling after the activation
}
CONV_PARAM_NAMES = {"features": "channels"}  # Optuna parameter names where they differ from the field
MAX_CONV_MACS = 1_000_000  # multiply-adds per example of one conv layer: bounds a CNN trial's time on a CPU
HEAD_WIDTHS = (64, 128)  # width of the one dense hidden layer between trunk and output
CNN_ACTIVATION = "relu"  # not searched by default (CNN studies so far used relu); a [space] table may search it

CONV_FIELD_TYPES = {"features": int, "padding": str, "kernel": int, "stride": int, "pool": str}
CONV_FIELD_DOMAINS = {"features": AT_LEAST_ONE, "padding": Domain(values=PADDINGS), "kernel": AT_LEAST_ONE,
                      "stride": AT_LEAST_ONE, "pool": Domain(values=POOLS)}
CONV_FIELD_HELP = {"features": "output channels", "padding": "SAME or VALID", "kernel": "window extent",
                   "stride": "convolution step", "pool": "2-wide pooling after the activation"}


def conv_parameter_name(field_name: str) -> str:
    """The [space] key of a ConvLayer field: ``conv_channels``, ``conv_kernel``, ..."""
    return f"conv_{CONV_PARAM_NAMES.get(field_name, field_name)}"


CNN_PARAMETERS = (
    Parameter("conv_layers", int, Range(*CONV_LAYERS), AT_LEAST_ONE, "convolutional layers"),
    *(
        Parameter(conv_parameter_name(f), CONV_FIELD_TYPES[f], Choices(CONV_CHOICES[f]), CONV_FIELD_DOMAINS[f],
                  CONV_FIELD_HELP[f], per_layer=f"conv{{}}_{CONV_PARAM_NAMES.get(f, f)}", ranges=False)
        for f in CONV_CHOICES
    ),
    Parameter("head_width", int, Choices(HEAD_WIDTHS), AT_LEAST_ONE, "units of the dense layer after the trunk"),
    Parameter("activation", str, Fixed(CNN_ACTIVATION), Domain(values=tuple(ACTIVATIONS)), "nonlinearity"),
    *TRAINING_PARAMETERS,
)

# Segregated dendrites (models.sd). Ranges are centred on the paper's Table 1 values (in brackets).
SD_WIDTHS = (100, 250, 500)  # per hidden layer [500]
SD_DEPTHS = (1, 3)  # inclusive range of hidden layers [1]
SD_FORWARD_LR = (0.05, 0.6)  # log-uniform, per layer [0.21]; mean update over SD_BATCH_SIZE streams: 0.8+ fails to learn
SD_FEEDBACK_LR = (1e-4, 1e-1)  # log-uniform, per hidden layer, when feedback weights learn [fixed]
SD_DT = (0.5, 1.0)  # ms [1]; Euler steps beyond ~1.2 ms are unstable under the teaching conductances
SD_PHASES = (30.0, 50.0)  # forward and target phase lengths, ms [50]
SD_SETTLE = (5.0, 10.0, 20.0)  # ms not averaged at the start of a phase [30; rates settle within ~5 ms]
SD_TEST_PHASE = 100.0  # ms of the scoring forward phase [250, to average out spike noise]; fixed: no recompiles
SD_PHI_MAX = (0.1, 0.4)  # spikes/ms [0.2]
SD_TAU_S = (1.5, 5.0)  # ms [3]
SD_TAU_L = (6.0, 20.0)  # ms [10]; the leak conductance is g_l = 1/tau_l as in the authors' code
SD_CONDUCTANCE = (0.3, 1.2)  # g_b and g_d [0.6]
SD_APICAL_CONDUCTANCE = 0.05  # g_a of the paper's variant with a non-segregated apical dendrite
# Independent example streams per update (1 = the paper's online learning). Measured on mnist-5k (784-500-10,
# lr 0.21, paper phases, 1 epoch, 3 folds): batch 1 ~0.8 accuracy in ~30 s, batch 4 ~0.62 in ~8 s, batch 16
# ~0.27 in ~5 s (the mean update of a batch moves the weights less per example). Fixed by default.
SD_BATCH_SIZE = 8

BOOLEAN = Domain(values=(False, True))
MS = Domain(low=0.0, low_open=True)
SD_LEARNS_FEEDBACK = Condition("sd_learn_feedback", bool, "sd_learn_feedback = true")
SD_DEEP = Condition("sd_depth", lambda depth: depth > 1, "sd_depth > 1")


def _sd_float(name: str, bounds: tuple[float, float], help: str, log: bool = False, **kwargs: Any) -> Parameter:
    return Parameter(name, float, Range(*bounds, log=log), POSITIVE, help, **kwargs)


def _sd_switch(name: str, choices: tuple[bool, bool], help: str) -> Parameter:
    return Parameter(name, bool, Choices(choices), BOOLEAN, help)


SD_PARAMETERS = (
    Parameter("sd_depth", int, Range(*SD_DEPTHS), AT_LEAST_ONE, "hidden layers"),
    Parameter("sd_width", int, Choices(SD_WIDTHS), AT_LEAST_ONE, "units of hidden layer i", per_layer="sd_width{}"),
    _sd_float("sd_lr_forward", SD_FORWARD_LR, "forward learning rate of layer i (0: first hidden)", log=True,
              per_layer="sd_lr_forward{}"),
    _sd_switch("sd_learn_feedback", (False, True), "feedback weights learn"),
    _sd_float("sd_lr_feedback", SD_FEEDBACK_LR, "feedback learning rate of hidden layer i", log=True,
              when=SD_LEARNS_FEEDBACK, per_layer="sd_lr_feedback{}"),
    Parameter("sd_phase", float, Choices(SD_PHASES), MS, "forward phase, ms"),
    _sd_float("sd_tau_l", SD_TAU_L, "leak time constant, ms (g_l = 1/tau_l)"),
    Parameter("sd_dt", float, Choices(SD_DT), MS, "time step, ms"),
    Parameter("sd_target_phase", float, Choices(SD_PHASES), MS, "target phase, ms"),
    Parameter("sd_settle", float, Choices(SD_SETTLE), MS, "ms not averaged at the start of a phase"),
    _sd_float("sd_phi_max", SD_PHI_MAX, "maximal rate, spikes/ms"),
    _sd_float("sd_tau_s", SD_TAU_S, "synaptic time constant, ms"),
    _sd_float("sd_g_b", SD_CONDUCTANCE, "basal conductance"),
    _sd_float("sd_g_d", SD_CONDUCTANCE, "dendritic conductance"),
    _sd_switch("sd_apical_conductance", (False, True), f"non-segregated apical dendrite (g_a = {SD_APICAL_CONDUCTANCE})"),
    _sd_switch("sd_spiking_feedback", (True, False), "spiking (not rate) feedback"),
    Parameter("sd_broadcast", bool, Choices((True, False)), BOOLEAN, "feedback from the output to every hidden layer",
              when=SD_DEEP),
    _sd_switch("sd_sparse_feedback", (False, True), "sparse feedback weights"),
    _sd_switch("sd_feedback_bias", (True, False), "feedback bias"),
    Parameter("sd_batch_size", int, Fixed(SD_BATCH_SIZE), AT_LEAST_ONE, "independent example streams per update"),
)


# Multilayer perceptrons and the training parameters every rule network shares.


def suggest_training(trial: Any, space: EffectiveSpace) -> dict[str, Any]:
    """Optimiser, batch size and rule-specific feedback parameters, shared by every network family."""
    params: dict[str, Any] = {"optimizer": space.ask(trial, "optimizer")}
    if params["optimizer"] == "adam":
        params["learning_rate"] = space.ask(trial, "lr_adam")
    else:
        params["learning_rate"] = space.ask(trial, "lr_sgd")
        params["momentum"] = space.ask(trial, "momentum")
    params["batch_size"] = space.ask(trial, "batch_size")
    if "feedback_distribution" in space.parameters:
        params["feedback_distribution"] = space.ask(trial, "feedback_distribution")
        params["feedback_scale"] = space.ask(trial, "feedback_scale")
    if "kp_decay_per_step" in space.parameters:
        # the shrink per step of W - B is lr x weight_decay (decoupled decay after the optimiser's scaling)
        params["weight_decay"] = space.ask(trial, "kp_decay_per_step") / params["learning_rate"]
    return params


def suggest_mlp(trial: Any, study: StudySettings, dataset: Dataset) -> TrainConfig:
    """Search space of multilayer perceptrons.

    Every activation and optimiser the study's space offers is served by one compiled program
    (``activation_choices``, ``optimizer_choices``): trials that differ only there share programs, a quarter as
    many compilations in the default space. The price, computing the candidates' activations and optimiser updates
    that a trial does not use, is a few percent of an MLP's arithmetic (``benchmarks/study.py`` measures it); CNN
    trials are nearly all new architectures anyway, so their space keeps one activation and optimiser per program.
    A study that fixes them compiles just the one it uses.
    """
    space = MLP_SPACE.effective(study)
    depth = space.ask(trial, "depth")
    width = space.ask(trial, "width")
    activation = space.ask(trial, "activation")
    return TrainConfig(
        rule=study.algo,
        hidden=(width,) * depth,
        activation=activation,
        epochs=study.epochs,
        loss=dataset.loss,
        activation_choices=tuple(space.values("activation")),
        optimizer_choices=tuple(space.values("optimizer")),
        **suggest_training(trial, space),
    )


# Convolutional networks, valid by construction for any choices a study allows.

ConvChoices = tuple[tuple[str, tuple[Any, ...]], ...]  # ((ConvLayer field, allowed values), ...) in asking order


def conv_choices(space: EffectiveSpace) -> ConvChoices:
    """The values each ConvLayer field may take in this space, in the order they are asked."""
    return tuple((f, space.values(conv_parameter_name(f))) for f in CONV_CHOICES)


def _suggest_fitting(trial: Any, name: str, choices: tuple, fits: Callable[[Any], bool]) -> Any:
    """Ask ``name`` among the ``choices`` for which ``fits(choice)`` holds, so no proposal is ever invalid.

    Optuna ties a categorical's choices to its name, so a restricted set of choices is asked under its own name
    (``conv2_channels[8|16]``) and a single remaining choice is taken without asking. If nothing fits, the trial
    is pruned at once with the reason stored (``check_cnn`` refuses, before a study starts, a space in which the
    first layer cannot fit; later layers always can, see ``suggest_conv_layer``).
    """
    allowed = [c for c in choices if fits(c)]
    if not allowed:
        reason = f"no value of {name} among {list(choices)} fits the input left by the layers before it"
        write_trial(trial, pruned_reason=reason)
        raise optuna.TrialPruned(reason)
    if len(allowed) == 1:
        return allowed[0]
    if len(allowed) < len(choices):
        name = f"{name}[{'|'.join(map(str, allowed))}]"
    return trial.suggest_categorical(name, allowed)


def layer_fits(layer: ConvLayer, spatial: tuple[int, ...], in_channels: int) -> bool:
    """The layer leaves every spatial extent >= 1 and costs at most ``MAX_CONV_MACS`` per example."""
    return min(layer.output_size(n) for n in spatial) >= 1 and layer.macs(spatial, in_channels) <= MAX_CONV_MACS


def _after(layer: ConvLayer, spatial: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(layer.output_size(n) for n in spatial)


@functools.lru_cache(maxsize=65536)
def _fitting_layers(spatial: tuple[int, ...], in_channels: int, choices: ConvChoices) -> tuple[ConvLayer, ...]:
    fields = [f for f, _ in choices]
    layers = (ConvLayer(**dict(zip(fields, values))) for values in itertools.product(*(v for _, v in choices)))
    return tuple(layer for layer in layers if layer_fits(layer, spatial, in_channels))


@functools.lru_cache(maxsize=65536)
def can_stack(spatial: tuple[int, ...], in_channels: int, layers: int, choices: ConvChoices) -> bool:
    """Some ``layers`` conv layers built from ``choices`` fit one after another on inputs of extents ``spatial``."""
    if layers == 0:
        return True
    return any(
        can_stack(_after(layer, spatial), layer.features, layers - 1, choices)
        for layer in _fitting_layers(spatial, in_channels, choices)
    )


def suggest_conv_layer(
    trial: Any, index: int, spatial: tuple[int, ...], in_channels: int, choices: ConvChoices | None = None,
    layers_after: int = 0,
) -> ConvLayer:
    """One conv layer that fits (``layer_fits``) the extents ``spatial`` left by the layers before it, and leaves
    room for ``layers_after`` more.

    The fields are asked in the order of ``choices`` (default: ``CONV_CHOICES``); each keeps exactly the values for
    which some choice of the fields still to come makes a fitting layer on which ``layers_after`` further layers
    can be stacked (the sets are small, so every completion is tried). Hence the trunk that comes out always fits,
    whatever the sampler proposes and whatever choices a study allows. With the default choices the look-ahead
    removes nothing (8 channels, kernel 3, stride 2 and "SAME" padding fit after any layer), so default studies ask
    exactly what they asked before it existed.
    """
    choices = choices if choices is not None else tuple(CONV_CHOICES.items())
    fields = [f for f, _ in choices]
    values_of = dict(choices)
    chosen: dict[str, Any] = {}
    for i, field_name in enumerate(fields):
        later = fields[i + 1 :]

        def feasible(value: Any, field_name: str = field_name, later: list[str] = later) -> bool:
            for rest in itertools.product(*(values_of[f] for f in later)):
                layer = ConvLayer(**chosen, **{field_name: value}, **dict(zip(later, rest)))
                if layer_fits(layer, spatial, in_channels) and can_stack(
                    _after(layer, spatial), layer.features, layers_after, choices
                ):
                    return True
            return False

        name = f"conv{index + 1}_{CONV_PARAM_NAMES.get(field_name, field_name)}"
        chosen[field_name] = _suggest_fitting(trial, name, values_of[field_name], feasible)
    return ConvLayer(**chosen)


def stackable_depths(space: EffectiveSpace, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The values of ``conv_layers`` for which a whole trunk fits inputs of ``shape`` (the same in every trial)."""
    spatial, channels = shape[:-1], shape[-1]
    choices = conv_choices(space)
    return tuple(n for n in space.values("conv_layers") if can_stack(spatial, channels, n, choices))


def suggest_cnn(trial: Any, study: StudySettings, dataset: Dataset) -> TrainConfig:
    """Search space of convolutional networks: 1-D convolutions for sequences, 2-D for images.

    Every sampled architecture fits the dataset's input shape by construction (``suggest_conv_layer``).
    """
    space = CNN_SPACE.effective(study)
    shape = dataset.input_shape
    spatial, channels = shape[:-1], shape[-1]
    choices = conv_choices(space)
    depths = stackable_depths(space, shape) or space.values("conv_layers")[:1]  # none: the first layer prunes
    layers: list[ConvLayer] = []
    depth = space.ask_among(trial, "conv_layers", depths)
    for i in range(depth):
        layers.append(suggest_conv_layer(trial, i, spatial, channels, choices, depth - i - 1))
        spatial, channels = _after(layers[-1], spatial), layers[-1].features
    width = space.ask(trial, "head_width")
    return TrainConfig(
        rule=study.algo,
        hidden=(width,),
        conv=tuple(layers),
        activation=space.ask(trial, "activation"),
        epochs=study.epochs,
        loss=dataset.loss,
        **suggest_training(trial, space),
    )


def check_cnn(study: StudySettings, dataset: Dataset) -> None:
    """Refuse data without spatial axes, and conv choices from which no trunk of the asked depth can be built."""
    shape = dataset.input_shape
    if len(shape) not in (2, 3):
        raise UsageError(
            f"--model cnn needs sequences (length, channels) or images (height, width, channels), but dataset "
            f"{dataset.name!r} has inputs of shape {shape}; use --model mlp"
        )
    space = CNN_SPACE.effective(study)
    if stackable_depths(space, shape):
        return
    keys = [key for key in ("conv_layers", *map(conv_parameter_name, CONV_CHOICES)) if key in study.space]
    # name the overridden keys whose default alone would let a trunk fit
    culprits = [key for key in keys if stackable_depths(_without(study, key), shape)] or keys
    shown = ", ".join(f"{key} {space.shown(key)}" for key in culprits)
    raise UsageError(
        f"space parameter{'s' if len(culprits) > 1 else ''} {shown} cannot build {min(space.values('conv_layers'))} "
        f"conv layer(s) that fit inputs of shape {shape} of dataset {dataset.name!r} (each layer must leave every "
        f"extent >= 1 and cost <= {MAX_CONV_MACS} multiply-adds); allow smaller kernels, SAME padding, fewer channels "
        "or fewer layers"
    )


def _without(study: StudySettings, key: str) -> EffectiveSpace:
    return CNN_SPACE.effective_of(study.algo, study.model, {k: v for k, v in study.space.items() if k != key})


# Segregated dendrites (Guerguiev et al. 2017).


def suggest_sd(trial: Any, study: StudySettings, dataset: Dataset) -> SDConfig:
    """Search space of segregated-dendrites networks (Guerguiev et al. 2017), covering what the seed searched.

    Feedforward transmission uses rates, not spikes (as the seed's runs did): with spiking inputs every time
    step pushes a fresh input vector through the first layer, which makes a trial ~10x slower. Feedback may
    be spiking or rate-based. Mini-batches of ``SD_BATCH_SIZE`` streams keep a 30-trial study to ~10-20 minutes.
    """
    space = SD_SPACE.effective(study)
    depth = space.ask(trial, "sd_depth")
    hidden = tuple(space.ask(trial, "sd_width", i + 1) for i in range(depth))
    forward_lr = tuple(space.ask(trial, "sd_lr_forward", i) for i in range(depth + 1))
    feedback_lr = None
    if space.ask(trial, "sd_learn_feedback"):
        feedback_lr = tuple(space.ask(trial, "sd_lr_feedback", i) for i in range(depth))
    phase = space.ask(trial, "sd_phase")
    tau_l = space.ask(trial, "sd_tau_l")
    return SDConfig(
        hidden=hidden,
        forward_learning_rates=forward_lr,
        feedback_learning_rates=feedback_lr,
        epochs=study.epochs,
        batch_size=space.ask(trial, "sd_batch_size"),
        dt=space.ask(trial, "sd_dt"),
        forward_phase=phase,
        target_phase=space.ask(trial, "sd_target_phase"),
        test_phase=SD_TEST_PHASE,
        settle_time=space.ask(trial, "sd_settle"),
        phi_max=space.ask(trial, "sd_phi_max"),
        tau_s=space.ask(trial, "sd_tau_s"),
        tau_l=tau_l,
        g_l=1.0 / tau_l,
        g_b=space.ask(trial, "sd_g_b"),
        g_d=space.ask(trial, "sd_g_d"),
        g_a=SD_APICAL_CONDUCTANCE if space.ask(trial, "sd_apical_conductance") else 0.0,
        spiking_feedforward=False,
        spiking_feedback=space.ask(trial, "sd_spiking_feedback"),
        # with one hidden layer the layer above is the output layer: both choices are the same network
        broadcast=space.ask(trial, "sd_broadcast") if depth > 1 else True,
        sparse_feedback=space.ask(trial, "sd_sparse_feedback"),
        feedback_bias=space.ask(trial, "sd_feedback_bias"),
    )


# The paper's network and Table 1 constants, as the first trial of every sd study: its space is wide and only a
# narrow region learns at all, so random start-up trials alone rarely find it. Phases of 30 ms with 5 ms of
# settling (instead of 50/30) and the learning rate for mean updates over SD_BATCH_SIZE streams (0.21 is the
# online rate) were measured on mnist-5k: 0.61 validation accuracy after 2 epochs.
SD_PAPER_START = {
    "sd_depth": 1, "sd_width1": 500, "sd_lr_forward0": 0.4, "sd_lr_forward1": 0.4, "sd_learn_feedback": False,
    "sd_phase": 30.0, "sd_target_phase": 30.0, "sd_settle": 5.0, "sd_dt": 1.0, "sd_phi_max": 0.2, "sd_tau_s": 3.0,
    "sd_tau_l": 10.0, "sd_g_b": 0.6, "sd_g_d": 0.6, "sd_apical_conductance": False, "sd_spiking_feedback": True,
    "sd_sparse_feedback": False, "sd_feedback_bias": True,
}


def check_sd(study: StudySettings, dataset: Dataset) -> None:
    """Classification data only, and no two allowed values that together make an invalid model (``SDConfig``)."""
    if dataset.task != "classification":
        raise UsageError(f"--algo sd is classification-only, but dataset {dataset.name!r} is {dataset.task}")
    space = SD_SPACE.effective(study)
    settle = space.largest("sd_settle")
    for phase in ("sd_phase", "sd_target_phase"):
        if space.smallest(phase) <= settle:
            raise UsageError(
                f"space parameters {phase} {space.shown(phase)} and sd_settle {space.shown('sd_settle')}: every "
                "phase must be longer than every settling time"
            )
    if SD_TEST_PHASE <= settle:
        raise UsageError(f"space parameter sd_settle reaches {show(settle)} ms, not shorter than the {show(SD_TEST_PHASE)} ms test phase")
    rate = space.largest("sd_phi_max") * space.largest("sd_dt")
    if rate > MAX_RATE_PER_STEP:
        raise UsageError(
            f"space parameters sd_phi_max and sd_dt reach phi_max x dt = {show(rate)} spikes per step, more than "
            f"{MAX_RATE_PER_STEP}; lower the largest sd_phi_max or sd_dt"
        )


@dataclass(frozen=True)
class Space:
    """A model's search space: the parameter table, the define-by-run sampler that asks it, and the dataset check."""

    suggest: Callable[[Any, StudySettings, Dataset], Any]  # (trial, study, dataset) -> the model family's config
    parameters: tuple[Parameter, ...]  # every parameter of the family, in the order of reports
    batch_parameter: str  # the parameter that is the mini-batch size (bounds --evals-per-epoch)
    check: Callable[[StudySettings, Dataset], None] | None = None  # UsageError when the dataset cannot be used

    def effective_of(self, algo: str, model: str, overrides: Mapping[str, Any]) -> EffectiveSpace:
        return effective_space(self.parameters, algo, model, overrides)

    def effective(self, study: StudySettings) -> EffectiveSpace:
        """The study's space: its algorithm's parameters with its overrides (``study.space``)."""
        return self.effective_of(study.algo, study.model, study.space)

    def largest_batch_size(self, study: StudySettings) -> int:
        return self.effective(study).largest(self.batch_parameter)

    def check_dataset(self, study: StudySettings, dataset: Dataset) -> None:
        """UsageError when the study cannot run on ``dataset`` (checked before any storage is written)."""
        if self.check is not None:
            self.check(study, dataset)
        folds = study.folds
        per_fold = len(dataset.x_train) * (folds - 1) // folds
        largest = self.largest_batch_size(study)
        if largest > per_fold:
            raise UsageError(
                f"space parameter {self.batch_parameter!r} reaches {largest}, more than the {per_fold} training "
                f"examples of a fold of {dataset.name!r} ({folds} folds)"
            )


MLP_SPACE = Space(suggest_mlp, MLP_PARAMETERS, "batch_size")
CNN_SPACE = Space(suggest_cnn, CNN_PARAMETERS, "batch_size", check_cnn)
SD_SPACE = Space(suggest_sd, SD_PARAMETERS, "sd_batch_size", check_sd)

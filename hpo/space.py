"""Search spaces: define-by-run functions that turn an Optuna trial into a model family's configuration
(``models.rule_training.TrainConfig``, ``models.sd.SDConfig``), one ``Space`` per model (``hpo.algorithms``
says which algorithm uses which).

Parameters that change array shapes (width, depth, batch size) come from small sets, so compiled programs are
reused across trials; scalars (learning rate, momentum, decay, feedback scale) are continuous and traced.
Rule-specific parameters are asked only when the rule has them (``Rule.has_feedback_init``,
``Rule.trains_feedback``), so the space of each rule is exactly what that rule can use.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import optuna

from hpo.dataset import Dataset
from hpo.errors import UsageError
from models.networks import ConvLayer
from models.rule_training import TrainConfig
from models.rules import get_rule
from models.sd import SDConfig


class StudySettings(Protocol):
    """What a space reads of the study's configuration (``hpo.config.StudyConfig``)."""

    algo: str
    model: str
    epochs: int

WIDTHS = (64, 128, 256, 512)  # hidden-layer width (all hidden layers share it)
DEPTHS = (1, 3)  # inclusive range of hidden layers
BATCH_SIZES = (32, 64, 128)
ACTIVATIONS = ("relu", "tanh")
OPTIMIZER_CHOICES = ("adam", "sgd")  # sgd: heavy-ball momentum
ADAM_LR = (1e-4, 1e-2)  # log-uniform
SGD_LR = (1e-3, 3e-1)  # log-uniform
MOMENTUM = (0.5, 0.99)
FEEDBACK_DISTRIBUTIONS = ("normal", "uniform")
FEEDBACK_SCALE = (0.1, 10.0)  # log-uniform multiplier of the 1/fan_in-variance initialisation
KP_DECAY = (1e-4, 1.0)  # log-uniform decoupled weight decay (times the learning rate) of W and B


def suggest_training(trial: Any, study: StudySettings) -> dict[str, Any]:
    """Optimiser, batch size and rule-specific feedback parameters, shared by every network family."""
    rule = get_rule(study.algo)
    params: dict[str, Any] = {"optimizer": trial.suggest_categorical("optimizer", list(OPTIMIZER_CHOICES))}
    if params["optimizer"] == "adam":
        params["learning_rate"] = trial.suggest_float("lr_adam", *ADAM_LR, log=True)
    else:
        params["learning_rate"] = trial.suggest_float("lr_sgd", *SGD_LR, log=True)
        params["momentum"] = trial.suggest_float("momentum", *MOMENTUM)
    params["batch_size"] = trial.suggest_categorical("batch_size", list(BATCH_SIZES))
    if rule.has_feedback_init:
        params["feedback_distribution"] = trial.suggest_categorical(
            "feedback_distribution", list(FEEDBACK_DISTRIBUTIONS)
        )
        params["feedback_scale"] = trial.suggest_float("feedback_scale", *FEEDBACK_SCALE, log=True)
    if rule.trains_feedback:
        params["weight_decay"] = trial.suggest_float("kp_decay", *KP_DECAY, log=True)
    return params


def suggest_mlp(trial: Any, study: StudySettings, dataset: Dataset) -> TrainConfig:
    """Search space of multilayer perceptrons.

    Every activation and optimiser the space offers is served by one compiled program (``activation_choices``,
    ``optimizer_choices``): trials that differ only there share programs, a quarter as many compilations. The
    price, computing the candidates' activations and optimiser updates that a trial does not use, is a few
    percent of an MLP's arithmetic (``benchmarks/study.py`` measures it); CNN trials are nearly all new
    architectures anyway, so their space keeps one activation and optimiser per program.
    """
    depth = trial.suggest_int("depth", *DEPTHS)
    width = trial.suggest_categorical("width", list(WIDTHS))
    activation = trial.suggest_categorical("activation", list(ACTIVATIONS))
    return TrainConfig(
        rule=study.algo,
        hidden=(width,) * depth,
        activation=activation,
        epochs=study.epochs,
        loss=dataset.loss,
        activation_choices=tuple(ACTIVATIONS),
        optimizer_choices=OPTIMIZER_CHOICES,
        **suggest_training(trial, study),
    )


CONV_LAYERS = (1, 3)  # inclusive range of convolutional layers
CONV_CHOICES: dict[str, tuple] = {  # ConvLayer field -> choices, asked in this order
    "features": (8, 16, 32),  # output channels
    "padding": ("SAME", "VALID"),
    "kernel": (3, 5),  # window extent along every spatial axis
    "stride": (1, 2),
    "pool": ("none", "max", "avg"),  # 2-wide pooling after the activation
}
CONV_PARAM_NAMES = {"features": "channels"}  # Optuna parameter names where they differ from the field
MAX_CONV_MACS = 1_000_000  # multiply-adds per example of one conv layer: bounds a CNN trial's time on a CPU
HEAD_WIDTHS = (64, 128)  # width of the one dense hidden layer between trunk and output


def _suggest_fitting(trial: Any, name: str, choices: tuple, fits: Callable[[Any], bool]) -> Any:
    """Ask ``name`` among the ``choices`` for which ``fits(choice)`` holds, so no proposal is ever invalid.

    Optuna ties a categorical's choices to its name, so a restricted set of choices is asked under its own name
    (``conv2_channels[8|16]``) and a single remaining choice is taken without asking. If nothing fits, the trial
    is pruned at once with the reason stored (with the choices above it cannot happen for inputs up to 32 x 32:
    8 channels, kernel 3, stride 2 and "SAME" padding always fit, within the budget).
    """
    allowed = [c for c in choices if fits(c)]
    if not allowed:
        reason = f"no value of {name} among {list(choices)} fits the input left by the layers before it"
        trial.set_user_attr("pruned_reason", reason)
        raise optuna.TrialPruned(reason)
    if len(allowed) == 1:
        return allowed[0]
    if len(allowed) < len(choices):
        name = f"{name}[{'|'.join(map(str, allowed))}]"
    return trial.suggest_categorical(name, allowed)


def layer_fits(layer: ConvLayer, spatial: tuple[int, ...], in_channels: int) -> bool:
    """The layer leaves every spatial extent >= 1 and costs at most ``MAX_CONV_MACS`` per example."""
    return min(layer.output_size(n) for n in spatial) >= 1 and layer.macs(spatial, in_channels) <= MAX_CONV_MACS


def suggest_conv_layer(trial: Any, index: int, spatial: tuple[int, ...], in_channels: int) -> ConvLayer:
    """One conv layer that fits (``layer_fits``) the extents ``spatial`` left by the layers before it.

    The fields are asked in the order of ``CONV_CHOICES``; each keeps exactly the values for which some choice of
    the fields still to come makes a fitting layer (the sets are tiny, so every completion is tried). Hence the
    layer that comes out always fits, whatever the sampler proposes.
    """
    fields = list(CONV_CHOICES)
    chosen: dict[str, Any] = {}
    for i, field in enumerate(fields):
        later = fields[i + 1 :]

        def feasible(value: Any, field: str = field, later: list[str] = later) -> bool:
            return any(
                layer_fits(ConvLayer(**chosen, **{field: value}, **dict(zip(later, rest))), spatial, in_channels)
                for rest in itertools.product(*(CONV_CHOICES[f] for f in later))
            )

        name = f"conv{index + 1}_{CONV_PARAM_NAMES.get(field, field)}"
        chosen[field] = _suggest_fitting(trial, name, CONV_CHOICES[field], feasible)
    return ConvLayer(**chosen)


def suggest_cnn(trial: Any, study: StudySettings, dataset: Dataset) -> TrainConfig:
    """Search space of convolutional networks: 1-D convolutions for sequences, 2-D for images.

    Every sampled architecture fits the dataset's input shape by construction (``suggest_conv_layer``).
    """
    shape = dataset.input_shape
    spatial, channels = shape[:-1], shape[-1]
    layers: list[ConvLayer] = []
    for i in range(trial.suggest_int("conv_layers", *CONV_LAYERS)):
        layers.append(suggest_conv_layer(trial, i, spatial, channels))
        spatial, channels = tuple(layers[-1].output_size(n) for n in spatial), layers[-1].features
    width = trial.suggest_categorical("head_width", list(HEAD_WIDTHS))
    return TrainConfig(
        rule=study.algo,
        hidden=(width,),
        conv=tuple(layers),
        epochs=study.epochs,
        loss=dataset.loss,
        **suggest_training(trial, study),
    )


def check_cnn(study: StudySettings, dataset: Dataset) -> None:
    shape = dataset.input_shape
    if len(shape) not in (2, 3):
        raise UsageError(
            f"--model cnn needs sequences (length, channels) or images (height, width, channels), but dataset "
            f"{dataset.name!r} has inputs of shape {shape}; use --model mlp"
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
# ~0.27 in ~5 s (the mean update of a batch moves the weights less per example).
SD_BATCH_SIZE = 8


def suggest_sd(trial: Any, study: StudySettings, dataset: Dataset) -> SDConfig:
    """Search space of segregated-dendrites networks (Guerguiev et al. 2017), covering what the seed searched.

    Feedforward transmission uses rates, not spikes (as the seed's runs did): with spiking inputs every time
    step pushes a fresh input vector through the first layer, which makes a trial ~10x slower. Feedback may
    be spiking or rate-based. Mini-batches of ``SD_BATCH_SIZE`` streams keep a 30-trial study to ~10-20 minutes.
    """
    depth = trial.suggest_int("sd_depth", *SD_DEPTHS)
    hidden = tuple(trial.suggest_categorical(f"sd_width{i + 1}", list(SD_WIDTHS)) for i in range(depth))
    forward_lr = tuple(trial.suggest_float(f"sd_lr_forward{i}", *SD_FORWARD_LR, log=True) for i in range(depth + 1))
    feedback_lr = None
    if trial.suggest_categorical("sd_learn_feedback", [False, True]):
        feedback_lr = tuple(trial.suggest_float(f"sd_lr_feedback{i}", *SD_FEEDBACK_LR, log=True) for i in range(depth))
    phase = trial.suggest_categorical("sd_phase", list(SD_PHASES))
    tau_l = trial.suggest_float("sd_tau_l", *SD_TAU_L)
    return SDConfig(
        hidden=hidden,
        forward_learning_rates=forward_lr,
        feedback_learning_rates=feedback_lr,
        epochs=study.epochs,
        batch_size=SD_BATCH_SIZE,
        dt=trial.suggest_categorical("sd_dt", list(SD_DT)),
        forward_phase=phase,
        target_phase=trial.suggest_categorical("sd_target_phase", list(SD_PHASES)),
        test_phase=SD_TEST_PHASE,
        settle_time=trial.suggest_categorical("sd_settle", list(SD_SETTLE)),
        phi_max=trial.suggest_float("sd_phi_max", *SD_PHI_MAX),
        tau_s=trial.suggest_float("sd_tau_s", *SD_TAU_S),
        tau_l=tau_l,
        g_l=1.0 / tau_l,
        g_b=trial.suggest_float("sd_g_b", *SD_CONDUCTANCE),
        g_d=trial.suggest_float("sd_g_d", *SD_CONDUCTANCE),
        g_a=SD_APICAL_CONDUCTANCE if trial.suggest_categorical("sd_apical_conductance", [False, True]) else 0.0,
        spiking_feedforward=False,
        spiking_feedback=trial.suggest_categorical("sd_spiking_feedback", [True, False]),
        # with one hidden layer the layer above is the output layer: both choices are the same network
        broadcast=trial.suggest_categorical("sd_broadcast", [True, False]) if depth > 1 else True,
        sparse_feedback=trial.suggest_categorical("sd_sparse_feedback", [False, True]),
        feedback_bias=trial.suggest_categorical("sd_feedback_bias", [True, False]),
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
    if dataset.task != "classification":
        raise UsageError(f"--algo sd is classification-only, but dataset {dataset.name!r} is {dataset.task}")


@dataclass(frozen=True)
class Space:
    """A model's search space: the define-by-run sampler and what the study must know about it in advance."""

    suggest: Callable[[Any, StudySettings, Dataset], Any]  # (trial, study, dataset) -> the model family's config
    batch_sizes: tuple[int, ...]  # every batch size it may propose (bounds --evals-per-epoch)
    check: Callable[[StudySettings, Dataset], None] | None = None  # UsageError when the dataset cannot be used

    def check_dataset(self, study: StudySettings, dataset: Dataset) -> None:
        if self.check is not None:
            self.check(study, dataset)


MLP_SPACE = Space(suggest_mlp, BATCH_SIZES)
CNN_SPACE = Space(suggest_cnn, BATCH_SIZES, check_cnn)
SD_SPACE = Space(suggest_sd, (SD_BATCH_SIZE,), check_sd)

"""The parameters every network of rule layers shares (optimiser, learning rates, batch size, feedback
initialisation, Kolen-Pollack's decay) and the multilayer perceptrons' space."""

from __future__ import annotations

from typing import Any, Mapping, Protocol

from hpo.data import Dataset
from hpo.space.parameters import (
    Choices,
    Condition,
    Domain,
    EffectiveSpace,
    Parameter,
    Range,
    effective_space,
)
from models.networks import ACTIVATIONS
from models.rule_training import FEEDBACK_DISTRIBUTIONS as FEEDBACK_INITS
from models.rule_training import TrainConfig


class StudySettings(Protocol):
    """What a space reads of the study's configuration (``hpo.config.StudyConfig``, frozen: read-only here)."""

    @property
    def algo(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def epochs(self) -> int: ...

    @property
    def folds(self) -> int: ...

    @property
    def space(self) -> Mapping[str, Any]:  # the study's overrides: parameter name -> value, [choices] or {low, high, log}
        ...


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
# Sizes beyond these build no network a study could train (the largest fits no machine's memory, or takes days per
# epoch): a [space] value above one is refused at once, with one line, before anything is created. Within them, the
# memory the largest network of a space needs is checked against the machine's (``hpo.space.families``).
MAX_WIDTH = 16384  # units of a hidden layer
MAX_DEPTH = 32  # hidden layers
MAX_BATCH = 65536  # examples per mini-batch
WIDTH = Domain(low=1, high=MAX_WIDTH)
DEPTH = Domain(low=1, high=MAX_DEPTH)
BATCH = Domain(low=1, high=MAX_BATCH)
OPTIMIZER_SGD = Condition("optimizer", lambda v: v == "sgd", "optimizer = sgd")
OPTIMIZER_ADAM = Condition("optimizer", lambda v: v == "adam", "optimizer = adam")

TRAINING_PARAMETERS = (
    # models.rule_training's sgd_l2 (PyTorch's SGD) serves fixed protocols (benchmarks.biotorch_lenet), not a space
    Parameter("optimizer", str, Choices(OPTIMIZER_CHOICES), Domain(values=OPTIMIZER_CHOICES),
              "adam, or sgd with heavy-ball momentum"),
    Parameter("lr_adam", float, Range(*ADAM_LR, log=True), POSITIVE, "Adam's learning rate", OPTIMIZER_ADAM),
    Parameter("lr_sgd", float, Range(*SGD_LR, log=True), POSITIVE, "SGD's learning rate", OPTIMIZER_SGD),
    Parameter("momentum", float, Range(*MOMENTUM), Domain(low=0.0, high=1.0, high_open=True), "SGD's momentum",
              OPTIMIZER_SGD),
    Parameter("batch_size", int, Choices(BATCH_SIZES), BATCH, "mini-batch size"),
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
    Parameter("depth", int, Range(*DEPTHS), DEPTH, "hidden layers"),
    Parameter("width", int, Choices(WIDTHS), WIDTH, "units of every hidden layer"),
    Parameter("activation", str, Choices(ACTIVATION_CHOICES), Domain(values=tuple(ACTIVATIONS)), "hidden nonlinearity"),
    *TRAINING_PARAMETERS,
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
    space = mlp_space(study)
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


def mlp_space(study: StudySettings) -> EffectiveSpace:
    """The study's space of multilayer perceptrons: the parameters of its rule, with its overrides."""
    return effective_space(MLP_PARAMETERS, study.algo, study.model, study.space)

"""Convolutional networks' search space: valid by construction for any choices a study allows."""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable

import optuna

from hpo.data import Dataset
from hpo.errors import UsageError
from hpo.record import write_trial
from hpo.space.parameters import Choices, Domain, EffectiveSpace, Fixed, Parameter, Range, effective_space
from hpo.space.training import TRAINING_PARAMETERS, WIDTH, StudySettings, suggest_training
from models.networks import ACTIVATIONS, POOLS, ConvLayer
from models.rule_training import TrainConfig
from models.rules.convolution import PADDINGS

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
HEAD_WIDTHS = (64, 128)  # width of the dense hidden layers between trunk and output
HEAD_LAYERS = 1  # dense hidden layers between trunk and output: one unless a [space] asks for more (LeNet-5: 2)
MAX_HEAD_LAYERS = 8
CNN_ACTIVATION = "relu"  # not searched by default (CNN studies so far used relu); a [space] table may search it

CONV_FIELD_TYPES = {"features": int, "padding": str, "kernel": int, "stride": int, "pool": str}
MAX_CHANNELS = 4096  # output channels of a conv layer
MAX_WINDOW = 64  # kernel extent and stride
MAX_CONV_LAYERS = 16
CONV_FIELD_DOMAINS = {"features": Domain(low=1, high=MAX_CHANNELS), "padding": Domain(values=PADDINGS),
                      "kernel": Domain(low=1, high=MAX_WINDOW), "stride": Domain(low=1, high=MAX_WINDOW),
                      "pool": Domain(values=POOLS)}
CONV_FIELD_HELP = {"features": "output channels", "padding": "SAME or VALID", "kernel": "window extent",
                   "stride": "convolution step", "pool": "2-wide pooling after the activation"}


def conv_parameter_name(field_name: str) -> str:
    """The [space] key of a ConvLayer field: ``conv_channels``, ``conv_kernel``, ..."""
    return f"conv_{CONV_PARAM_NAMES.get(field_name, field_name)}"


CNN_PARAMETERS = (
    Parameter("conv_layers", int, Range(*CONV_LAYERS), Domain(low=1, high=MAX_CONV_LAYERS), "convolutional layers"),
    *(
        Parameter(conv_parameter_name(f), CONV_FIELD_TYPES[f], Choices(CONV_CHOICES[f]), CONV_FIELD_DOMAINS[f],
                  CONV_FIELD_HELP[f], per_layer=f"conv{{}}_{CONV_PARAM_NAMES.get(f, f)}", ranges=False)
        for f in CONV_CHOICES
    ),
    Parameter("head_layers", int, Fixed(HEAD_LAYERS), Domain(low=1, high=MAX_HEAD_LAYERS),
              "dense hidden layers after the trunk, each head_width wide", before=HEAD_LAYERS),
    Parameter("head_width", int, Choices(HEAD_WIDTHS), WIDTH, "units of each dense layer after the trunk"),
    Parameter("activation", str, Fixed(CNN_ACTIVATION), Domain(values=tuple(ACTIVATIONS)), "nonlinearity"),
    *TRAINING_PARAMETERS,
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
    space = cnn_space(study)
    shape = dataset.input_shape
    spatial, channels = shape[:-1], shape[-1]
    choices = conv_choices(space)
    depths = stackable_depths(space, shape) or space.values("conv_layers")[:1]  # none: the first layer prunes
    layers: list[ConvLayer] = []
    depth = space.ask_among(trial, "conv_layers", depths)
    for i in range(depth):
        layers.append(suggest_conv_layer(trial, i, spatial, channels, choices, depth - i - 1))
        spatial, channels = _after(layers[-1], spatial), layers[-1].features
    head_layers = space.ask(trial, "head_layers")
    width = space.ask(trial, "head_width")
    return TrainConfig(
        rule=study.algo,
        hidden=(width,) * head_layers,
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
    space = cnn_space(study)
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
    return effective_space(CNN_PARAMETERS, study.algo, study.model, {k: v for k, v in study.space.items() if k != key})


def cnn_space(study: StudySettings) -> EffectiveSpace:
    """The study's space of convolutional networks: the parameters of its rule, with its overrides."""
    return effective_space(CNN_PARAMETERS, study.algo, study.model, study.space)

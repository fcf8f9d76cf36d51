"""Segregated dendrites' search space (Guerguiev et al. 2017): ranges centred on the paper's Table 1."""

from __future__ import annotations

from typing import Any

from hpo.data import Dataset
from hpo.errors import UsageError
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
from hpo.space.training import POSITIVE, WIDTH, StudySettings
from models.sd import MAX_RATE_PER_STEP, SDConfig

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
SD_MAX_DEPTH = 8  # hidden layers: every one is simulated in time for every example
SD_MAX_STREAMS = 4096  # independent example streams per update

BOOLEAN = Domain(values=(False, True))
MS = Domain(low=0.0, low_open=True)
SD_LEARNS_FEEDBACK = Condition("sd_learn_feedback", bool, "sd_learn_feedback = true")
SD_DEEP = Condition("sd_depth", lambda depth: depth > 1, "sd_depth > 1")


def _sd_float(name: str, bounds: tuple[float, float], help: str, log: bool = False, **kwargs: Any) -> Parameter:
    return Parameter(name, float, Range(*bounds, log=log), POSITIVE, help, **kwargs)


def _sd_switch(name: str, choices: tuple[bool, bool], help: str) -> Parameter:
    return Parameter(name, bool, Choices(choices), BOOLEAN, help)


SD_PARAMETERS = (
    Parameter("sd_depth", int, Range(*SD_DEPTHS), Domain(low=1, high=SD_MAX_DEPTH), "hidden layers"),
    Parameter("sd_width", int, Choices(SD_WIDTHS), WIDTH, "units of hidden layer i", per_layer="sd_width{}"),
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
    Parameter("sd_batch_size", int, Fixed(SD_BATCH_SIZE), Domain(low=1, high=SD_MAX_STREAMS),
              "independent example streams per update"),
)


# Segregated dendrites (Guerguiev et al. 2017).


def suggest_sd(trial: Any, study: StudySettings, dataset: Dataset) -> SDConfig:
    """Search space of segregated-dendrites networks (Guerguiev et al. 2017), covering what the seed searched.

    Feedforward transmission uses rates, not spikes (as the seed's runs did): with spiking inputs every time
    step pushes a fresh input vector through the first layer, which makes a trial ~10x slower. Feedback may
    be spiking or rate-based. Mini-batches of ``SD_BATCH_SIZE`` streams keep a 30-trial study to ~10-20 minutes.
    """
    space = sd_space(study)
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
    space = sd_space(study)
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


def sd_space(study: StudySettings) -> EffectiveSpace:
    """The study's space of segregated-dendrites networks: the parameters of its rule, with its overrides."""
    return effective_space(SD_PARAMETERS, study.algo, study.model, study.space)

"""A segregated-dendrites network's configuration (``SDConfig``), its state, and the model family that the
cross-validation core trains it with (``models.train.ModelFamily``); the equations are ``models.sd.dynamics``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from models.sd.dynamics import (
    MAX_RATE_PER_STEP,
    Array,
    Neurons,
    SDParams,
    Structure,
    evaluate,
    train_example,
    zero_neurons,
)
from models.train import EVAL_CHUNK as TRAIN_EVAL_CHUNK
from models.train import FoldData, masked_means

SPIKING_EVAL_CHUNK = 64  # validation examples simulated together when input spikes are generated (bounds memory)


@dataclass(frozen=True)
class SDConfig:
    """A segregated-dendrites network and its training. Defaults: the paper's Table 1 and the authors' code."""

    hidden: tuple[int, ...] = (500,)  # hidden-layer widths (paper: 500 for one hidden layer)
    forward_learning_rates: tuple[float, ...] = (0.21, 0.21)  # eta of W, b per layer (hidden..., output)
    feedback_learning_rates: tuple[float, ...] | None = None  # eta of Y per hidden layer; None: Y fixed (paper)
    epochs: int = 10  # passes over each fold's training part
    batch_size: int = 1  # 1: online, one example at a time (paper); > 1: independent streams, mean update
    dt: float = 1.0  # integration time step (ms)
    forward_phase: float = 50.0  # forward-phase length (ms)
    target_phase: float = 50.0  # target-phase length (ms)
    test_phase: float = 250.0  # forward-phase length when scoring validation examples (ms)
    settle_time: float = 30.0  # start of each phase not averaged, while the network settles (ms)
    phi_max: float = 0.2  # maximal firing rate (spikes/ms, i.e. 200 Hz)
    tau_s: float = 3.0  # PSP kernel rise (synaptic) time constant (ms)
    tau_l: float = 10.0  # PSP kernel decay (leak) time constant (ms)
    g_l: float = 0.1  # leak conductance (1/ms; = 1/tau_L)
    g_b: float = 0.6  # basal-to-soma conductance of hidden neurons
    g_a: float = 0.0  # apical-to-soma conductance (0: segregated apical dendrite; paper variant 0.05)
    g_d: float = 0.6  # dendrite-to-soma conductance of output neurons
    e_exc: float = 8.0  # excitatory reversal potential of the teaching current
    e_inh: float = -8.0  # inhibitory reversal potential of the teaching current
    spiking_feedforward: bool = True  # inputs and hidden layers transmit Poisson spikes (else rates)
    spiking_feedback: bool = True  # apical input is a spike-train PSP (else the source's rate)
    broadcast: bool = True  # every hidden layer's feedback comes from the output layer (else the layer above)
    sparse_feedback: bool = False  # silence 80% of feedback weights, scale the rest by 5
    feedback_bias: bool = True  # apical potentials receive the random bias c (else c = 0)

    def __post_init__(self) -> None:
        depth = len(self.hidden)
        if depth < 1 or any(w < 1 for w in self.hidden):
            raise ValueError(f"hidden must list at least one width >= 1, got {self.hidden}")
        if len(self.forward_learning_rates) != depth + 1:
            raise ValueError(
                f"forward_learning_rates needs {depth + 1} values (hidden layers and output), "
                f"got {self.forward_learning_rates}"
            )
        if self.feedback_learning_rates is not None and len(self.feedback_learning_rates) != depth:
            raise ValueError(f"feedback_learning_rates needs {depth} values, got {self.feedback_learning_rates}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        positive = ("dt", "phi_max", "tau_s", "tau_l", "g_l", "g_b", "g_d")
        if any(not getattr(self, name) > 0 for name in positive) or self.g_a < 0:
            raise ValueError(f"{', '.join(positive)} must be > 0 and g_a >= 0, got {self}")
        if self.tau_s == self.tau_l:
            raise ValueError(f"tau_s and tau_l must differ (the PSP kernel divides by their difference), got {self.tau_s}")
        if self.phi_max * self.dt > MAX_RATE_PER_STEP:
            raise ValueError(f"phi_max * dt must be <= {MAX_RATE_PER_STEP}, got {self.phi_max * self.dt}")
        for name in ("forward_phase", "target_phase", "test_phase"):
            if self.steps(getattr(self, name)) <= self.steps(self.settle_time):
                raise ValueError(f"{name} ({getattr(self, name)} ms) must be longer than settle_time ({self.settle_time} ms)")

    def steps(self, milliseconds: float) -> int:
        """Number of time steps of a duration."""
        return int(round(milliseconds / self.dt))

    @property
    def learns_feedback(self) -> bool:
        return self.feedback_learning_rates is not None

    @property
    def family(self) -> SegregatedDendrites:
        return SEGREGATED_DENDRITES


def structure_of(config: SDConfig, n_in: int, out_features: int) -> Structure:
    return Structure(
        (n_in, *config.hidden, out_features), config.batch_size, config.steps(config.forward_phase),
        config.steps(config.target_phase), config.steps(config.test_phase), config.steps(config.settle_time),
        float(config.g_a), config.spiking_feedforward, config.spiking_feedback, config.broadcast,
        config.learns_feedback,
    )


def hyperparameters(config: SDConfig) -> dict[str, np.ndarray]:
    """The traced scalars: changing them never recompiles."""
    names = ("dt", "phi_max", "tau_s", "tau_l", "g_l", "g_b", "g_d", "e_exc", "e_inh")
    h = {n: np.asarray(getattr(config, n), np.float32) for n in names}
    h["forward_lr"] = np.asarray(config.forward_learning_rates, np.float32)
    h["feedback_lr"] = np.asarray(config.feedback_learning_rates or (0.0,) * len(config.hidden), np.float32)
    return h


def init_params(config: SDConfig, n_in: int, out_features: int, rng: np.random.Generator) -> SDParams:
    """Initial weights as in the authors' code (``use_weight_optimization``): uniform weights whose mean and
    spread give somatic potentials of mean ~3 and sd ~3 for inputs at a quarter of the maximal rate slope;
    broadcast feedback Y^l is a product of random matrices down from the output layer.
    """
    sizes = (n_in, *config.hidden, out_features)
    depth = len(config.hidden)
    v_avg, v_sd, b_avg, b_sd = 3.0, 3.0, 0.8, 0.001
    nu = config.phi_max * config.dt * 0.25  # the code's rates are per step (phi_max * dt)
    v_sm = v_sd**2 + v_avg**2
    spread = np.sqrt(12.0)  # uniform(-0.5, 0.5) * sqrt(12) has unit variance (the code writes 3.465)
    w: list[np.ndarray] = [np.empty(0)] * (depth + 1)  # each filled below, output layer first
    b: list[np.ndarray] = [np.empty(0)] * (depth + 1)
    y: list[np.ndarray] = [np.empty(0)] * depth
    c: list[np.ndarray] = [np.empty(0)] * depth
    y_above = np.eye(out_features)
    for m in range(depth, -1, -1):
        n, fan_in = sizes[m + 1], sizes[m]
        w_avg = (v_avg - b_avg) / (nu * fan_in * v_avg)
        w_sm = (
            v_sm + nu**2 * (fan_in - fan_in**2) * w_avg**2 * v_avg**2 - 2 * fan_in * nu * b_avg * v_avg * w_avg - b_avg**2
        ) / (fan_in * nu**2 * v_sm)
        w_sd = np.sqrt(w_sm - w_avg**2)
        w[m] = w_avg + spread * w_sd * (rng.uniform(size=(n, fan_in)) - 0.5)
        b[m] = b_avg + spread * b_sd * (rng.uniform(size=n) - 0.5)
        if m == 0:
            continue
        if config.broadcast:
            y[m - 1] = spread * w_sd * (rng.uniform(size=(fan_in, n)) - 0.5) @ y_above
            c[m - 1] = y[m - 1] @ (spread * w_sd * (rng.uniform(size=out_features) - 0.5))
            y_above = y[m - 1]
        else:
            y[m - 1] = w_avg + spread * w_sd * (rng.uniform(size=(fan_in, n)) - 0.5)
            c[m - 1] = w_avg + spread * w_sd * (rng.uniform(size=fan_in) - 0.5)
    masks = [np.ones_like(m) for m in y]
    if config.sparse_feedback:
        for i, matrix in enumerate(y):
            silenced = rng.choice(matrix.size, int(0.8 * matrix.size), replace=False)
            masks[i].ravel()[silenced] = 0.0
            y[i] = matrix * masks[i] * 5.0
    if not config.feedback_bias:
        c = [np.zeros_like(v) for v in c]
    def as32(arrays: list[np.ndarray]) -> Any:  # host arrays, as the other families initialise; the program takes them
        return tuple(np.asarray(a, np.float32) for a in arrays)

    return SDParams(as32(w), as32(b), as32(y), as32(c), as32(masks))


# ----------------------------------------------------------------------------------------------------------
# The model family


class SDState(NamedTuple):
    params: SDParams
    neurons: Neurons


def input_rates01(x: Array | np.ndarray, train_idx: np.ndarray) -> np.ndarray:
    """Inputs as fractions of the maximal rate: flattened and affinely mapped to [0, 1] with the minimum and
    maximum over the training rows (for datasets standardised with global statistics, such as the bundled
    MNIST, this recovers pixel intensity / 255 exactly); values outside are clipped, since rates are >= 0.
    """
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    train = x[np.unique(train_idx)]
    low, high = float(train.min()), float(train.max())
    if not high > low:
        raise ValueError("inputs are constant over the training rows; cannot map them to firing rates")
    return np.clip((x - low) / (high - low), 0.0, 1.0).astype(np.float32)


class SegregatedDendrites:
    """The model family of ``SDConfig`` for the cross-validation core (``models.train.ModelFamily``).

    Classification only (integer labels); score = accuracy of the test-length forward phase, loss = mean squared
    error of the output rates (as fractions of phi_max) against the one-hot target. Training metrics are those of
    each example's forward phase, measured before its update. Inputs are mapped to fractions of the maximal rate
    once per cross-validation (``input_rates01``). The backprop-alignment diagnostics do not apply: the local
    phase updates of this model have no backprop counterpart of the same network.
    """

    name = "segregated-dendrites"
    has_diagnostics = False

    def program_spec(self, config: SDConfig, sample_x: Any, out_features: int) -> Structure:
        return structure_of(config, int(np.prod(np.shape(sample_x)[1:])), out_features)

    def hyperparameters(self, config: SDConfig, epoch: int = 0) -> dict[str, np.ndarray]:
        return hyperparameters(config)  # the same every epoch: no schedule

    def epochs(self, config: SDConfig) -> int:
        return config.epochs

    def batch_size(self, config: SDConfig) -> int:
        return config.batch_size

    def prepare(self, config: SDConfig, data: FoldData) -> FoldData:
        if np.ndim(data.y) != 1 or not np.issubdtype(np.asarray(data.y).dtype, np.integer):
            raise ValueError("segregated-dendrites training needs integer class labels (classification only)")
        x01 = input_rates01(data.x, np.asarray(data.train_idx))
        return data._replace(x=jnp.asarray(x01), y=jnp.asarray(data.y, jnp.int32))

    def init(self, config: SDConfig, spec: Structure, sample_x: Any, rng: np.random.Generator) -> SDState:
        params = init_params(config, spec.sizes[0], spec.sizes[-1], rng)
        neurons = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, np.float32), zero_neurons(spec, spec.batch_size))
        return SDState(params, neurons)

    def needs_key(self, spec: Structure) -> bool:
        return True  # spike trains (and the initial phases' noise) draw from it

    def count_params(self, spec: Structure, state: SDState) -> int:
        sizes = spec.sizes
        return int(sum(sizes[i] * sizes[i + 1] + sizes[i + 1] for i in range(len(sizes) - 1)))

    def train_step(self, spec: Structure, hyper: dict, state: SDState, key, x01, y, idx):
        x_rate = x01[idx] * hyper["phi_max"]
        params, neurons, (loss, correct) = train_example(spec, hyper, state.params, state.neurons, x_rate, y[idx], key)
        return SDState(params, neurons), (loss.mean(), correct.mean())

    def evaluate(self, spec: Structure, hyper: dict, state: SDState, key, x01, y, val_idx, val_mask):
        """The test-length forward phase of every validation example, ``SPIKING_EVAL_CHUNK`` examples at a time when
        input spike trains are generated (they are held for a whole phase: this bounds memory), else
        ``models.train``'s ``EVAL_CHUNK``."""
        x_rate = x01 * hyper["phi_max"]
        return masked_means(lambda idx, k: evaluate(spec, hyper, state.params, x_rate[idx], y[idx], k), val_idx,
                            val_mask, SPIKING_EVAL_CHUNK if spec.spiking_feedforward else TRAIN_EVAL_CHUNK, key)

    def strategy_class(self, spec: Structure) -> str:
        return "spiking" if spec.spiking_feedforward else "rates"

    def hosting(self, host: Structure, spec: Structure) -> str | None:
        return None  # spike trains and noise are drawn at each layer's shape: a padded layer's draws differ

    def hosted_points(self, host: Structure, spec: Structure, points: dict) -> dict:
        return points  # never hosted (``hosting``)

    def saved_state(self, state: SDState) -> SDState:
        return state._replace(neurons=None)  # type: ignore[arg-type]  # the weights; the neurons' traces are reset for every example anyway

    def diagnose(self, spec, hyper, state, before, key, x, y, idx) -> dict:
        return {}


SEGREGATED_DENDRITES = SegregatedDendrites()

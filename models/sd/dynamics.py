"""Segregated-dendrites dynamics (rule ``sd``): the neurons, a phase, the local updates, compiled with JAX.

Guerguiev J, Lillicrap TP, Richards BA (2017). Towards deep learning with segregated dendrites.
eLife 6:e22901. https://doi.org/10.7554/eLife.22901 (authors' code: github.com/jordan-g/Segregated-Dendrite-Deep-Learning)

The model (paper's Methods, equation numbers as in the paper where they exist):

- Hidden neuron i of layer l has a basal compartment B, an apical compartment A and a soma C::

      B(t) = W^l s^{l-1}(t) + b^l                          basal potential (feedforward input)
      A(t) = Y^l s^{fb}(t) + c^l                           apical potential (feedback input)
      dC/dt = -g_l C + g_b (B - C) + g_a (A - C)           somatic potential (g_a = 0: apical segregated)
      phi(C) = phi_max sigmoid(C)                          firing rate, Poisson spikes of rate phi(C)

  ``s(t) = sum_k kappa(t - t_k)`` is the postsynaptic potential of a presynaptic spike train, with
  ``kappa(t) = (exp(-t/tau_L) - exp(-t/tau_s)) / (tau_L - tau_s)``; with rate (non-spiking) transmission
  ``s = phi(C)`` instead. The feedback source is the output layer (``broadcast``) or the layer above.
- Output neuron: ``dU/dt = -g_l U + g_d (V - U) + I``, ``V = W^L s^{L-1} + b^L``, and in the target phase the
  teaching current ``I = g_E (E_E - U) + g_I (E_I - U)`` with ``g_E`` = one-hot target, ``g_I = 1 - g_E``.
- Each example is shown for a forward phase (no teaching current) and a target phase (teaching current).
  Variables are averaged over each phase after a settling time; the apical average gives the plateau
  potential ``alpha = sigmoid(mean A)`` of each phase.
- Local updates at the end of the target phase (``P^0 = 20/phi_max``, ``P^1 = 20/phi_max^2``)::

      output:  W^L += eta^L P^1 (mean phi(U)^t - phi(mean U^f)) k_d phi'(mean U^f) (mean s^{L-1,f})^T
      hidden:  W^l += eta^l P^0 (alpha^t - alpha^f) k_b phi'(mean C^f) (mean s^{l-1,f})^T
      (biases likewise without the presynaptic factor; k_b = g_b/(g_l+g_b+g_a), k_d = g_d/(g_l+g_d))

  Feedback weights Y are fixed and random by default; the optional feedback learning of the authors' code
  (``update_feedback_weights``) is ``Y^l += eta_fb^l (phi(mean C^f) - alpha^f) phi'(mean A^f) (mean s^{fb,f})^T``.

Units: time in ms, rates in spikes/ms; a spike train emits Poisson(phi dt) spikes per step. Rate mode and
spiking mode then carry the same mean signal for any ``dt`` (the authors' code, written for dt = 1, measures
rates per step; at dt = 1 both agree). Differences from the authors' code, kept on purpose: the PSP kernel is
the paper's full kernel (two exponential traces) rather than a 10-step truncated history; phase lengths are
fixed (the paper adds a small Wald-distributed jitter, mean 2 ms); when feedback weights are learned under
sparse feedback, the zeroed weights stay zero but survivors are not rescaled again after every update.

Speed: the layer-0 basal drive ``W^0 s^in(t)`` does not depend on the network's state, so a phase's input
spike trains are generated first and pushed through ``W^0`` as one matrix product; the remaining per-step
work (``jax.lax.scan`` over time steps) is small. The loop over examples is a ``jax.lax.scan`` too, and one
epoch of every fold is one compiled program. ``batch_size > 1`` runs the same equations for a mini-batch of
independent example streams and averages their updates (not in the paper; much faster on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
POISSON_MAX_SPIKES = 8  # spikes per neuron per step are capped here: P(more) < 1e-8 for phi_max * dt <= 0.5
MAX_RATE_PER_STEP = 0.5  # phi_max * dt must not exceed this (keeps the cap above negligible)
UNROLL = 10  # time steps per loop iteration: XLA:CPU's per-iteration overhead dominates small layers


# ----------------------------------------------------------------------------------------------------------
# Compartment equations (one time step each; the tests check them by hand)


def rate(v: Array, phi_max: Array) -> Array:
    """Firing rate phi(v) = phi_max * sigmoid(v) (spikes/ms)."""
    return phi_max * jax.nn.sigmoid(v)


def rate_slope(v: Array, phi_max: Array) -> Array:
    """phi'(v) = phi_max * sigmoid(v) * (1 - sigmoid(v))."""
    s = jax.nn.sigmoid(v)
    return phi_max * s * (1.0 - s)


def basal_potential(presynaptic: Array, w: Array, b: Array) -> Array:
    """B = W s + b for a batch of presynaptic activities (batch, n_in); ``w`` is (n, n_in)."""
    return presynaptic @ w.T + b


def apical_potential(feedback: Array, y: Array, c: Array) -> Array:
    """A = Y s_fb + c; ``y`` is (n, n_fb)."""
    return feedback @ y.T + c


def hidden_soma_step(c: Array, basal: Array, apical: Array | None, h: dict, g_a: float) -> Array:
    """Forward-Euler step of dC/dt = -g_l C + g_b (B - C) + g_a (A - C)."""
    dc = -h["g_l"] * c + h["g_b"] * (basal - c)
    if g_a and apical is not None:
        dc = dc + g_a * (apical - c)
    return c + h["dt"] * dc


def teaching_current(u: Array, target: Array, h: dict) -> Array:
    """I = g_E (E_E - U) + g_I (E_I - U) with g_E = target, g_I = 1 - target."""
    return target * (h["e_exc"] - u) + (1.0 - target) * (h["e_inh"] - u)


def output_soma_step(u: Array, basal: Array, current: Array, h: dict) -> Array:
    """Forward-Euler step of dU/dt = -g_l U + g_d (V - U) + I."""
    return u + h["dt"] * (-h["g_l"] * u + h["g_d"] * (basal - u) + current)


def psp_decays(h: dict) -> tuple[Array, Array]:
    """Per-step decay factors of the kernel's slow (tau_L) and fast (tau_s) exponentials."""
    return jnp.exp(-h["dt"] / h["tau_l"]), jnp.exp(-h["dt"] / h["tau_s"])


def psp_step(slow: Array, fast: Array, spikes: Array, h: dict) -> tuple[Array, Array, Array]:
    """Add this step's spikes to the two exponential traces; return them and the PSP s = sum_k kappa(t - t_k).

    A spike emitted in this step already contributes kappa(dt), as in the authors' code.
    """
    decay_slow, decay_fast = psp_decays(h)
    slow = decay_slow * (slow + spikes)
    fast = decay_fast * (fast + spikes)
    return slow, fast, (slow - fast) / (h["tau_l"] - h["tau_s"])


def plateau(mean_apical: Array) -> Array:
    """Plateau potential of a phase: alpha = sigmoid(mean apical potential)."""
    return jax.nn.sigmoid(mean_apical)


def _hash32(x: Array) -> Array:
    """lowbias32 integer hash (C. Wellons, "Prospecting for hash functions", 2018): a bijection of uint32."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def fast_uniform(key: Array, shape: tuple[int, ...]) -> Array:
    """Uniform [0, 1) variates from a counter-based integer hash seeded by ``key``.

    Spike trains need one variate per neuron and time step (~80,000 per example for MNIST inputs); XLA:CPU's
    threefry generator spends ~100 ns on each, more than the simulation itself. Hashing the element counter
    twice with two seeds drawn from ``key`` costs a few integer operations that fuse with the Poisson sampling;
    its statistics are ample for Poisson spike generation (it is not a cryptographic generator).
    """
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    counter = jax.lax.iota(jnp.uint32, int(np.prod(shape))).reshape(shape)
    bits = _hash32(_hash32(counter ^ seeds[0]) + seeds[1])
    return (bits >> 8).astype(jnp.float32) * np.float32(2.0**-24)


def poisson_spikes(uniform: Array, expected: Array) -> Array:
    """Poisson counts with the given means from uniform variates, by inverse-transform sampling (exact up to
    POISSON_MAX_SPIKES counts).

    ``jax.random.poisson`` runs a rejection loop that is ~100x slower on the CPU for these small means, and
    taking the variates as input lets a phase draw all of them in one call before its time loop.
    """
    p = jnp.exp(-expected)
    cdf = p
    count = jnp.zeros_like(expected)
    for k in range(POISSON_MAX_SPIKES):
        count = count + (uniform > cdf)
        p = p * expected / (k + 1)
        cdf = cdf + p
    return count


# ----------------------------------------------------------------------------------------------------------
# Network state


class SDParams(NamedTuple):
    """Synaptic weights: W, b per layer (hidden..., output); Y, c per hidden layer; Y's sparsity mask."""

    w: tuple[Array, ...]
    b: tuple[Array, ...]
    y: tuple[Array, ...]
    c: tuple[Array, ...]
    y_mask: tuple[Array, ...]  # 1 where a feedback weight exists (all ones without sparse feedback)


class Neurons(NamedTuple):
    """Dynamic state of a batch of example streams; carried across phases and examples, as in the paper."""

    soma: tuple[Array, ...]  # (batch, n) somatic potential of each layer (hidden..., output)
    slow: tuple[Array, ...]  # PSP slow traces of each population (input, hidden..., output)
    fast: tuple[Array, ...]  # PSP fast traces, same layout


class PhaseAverages(NamedTuple):
    """Averages over a phase's integration window (after settling)."""

    soma: tuple[Array, ...]  # mean C (hidden) / U (output), each (batch, n)
    presynaptic: tuple[Array, ...]  # mean basal input s^{l-1} of each layer
    apical: tuple[Array, ...]  # mean A of each hidden layer (empty when not simulated)
    feedback: tuple[Array, ...]  # mean feedback input s^fb of each hidden layer (for feedback learning)
    output_rate: Array  # mean phi(U)


@dataclass(frozen=True)
class Structure:
    """The static part of an SDConfig: everything that fixes shapes and control flow (the compile key)."""

    sizes: tuple[int, ...]  # input, hidden..., output
    batch_size: int
    forward_steps: int
    target_steps: int
    test_steps: int
    settle_steps: int
    g_a: float
    spiking_feedforward: bool
    spiking_feedback: bool
    broadcast: bool
    learns_feedback: bool

    @property
    def depth(self) -> int:
        return len(self.sizes) - 2

    def spikes(self, layer: int) -> bool:
        """Whether layer ``layer`` (0-based over hidden..., output) emits spike trains someone listens to."""
        if layer == self.depth:
            return self.spiking_feedback
        feeds_back = (not self.broadcast) and self.spiking_feedback and layer >= 1
        return self.spiking_feedforward or feeds_back


def zero_neurons(structure: Structure, batch: int) -> Neurons:
    sizes = structure.sizes
    soma = tuple(jnp.zeros((batch, n)) for n in sizes[1:])
    traces = tuple(jnp.zeros((batch, n)) for n in sizes)
    return Neurons(soma, traces, traces)


# ----------------------------------------------------------------------------------------------------------
# One phase


def run_phases(
    s: Structure,
    h: dict,
    params: SDParams,
    neurons: Neurons,
    x_rate: Array,
    target: Array,
    key: Array,
    n_forward: int,
    n_target: int,
    with_apical: bool = True,
) -> tuple[Neurons, PhaseAverages, PhaseAverages | None]:
    """Simulate a forward phase of ``n_forward`` steps, then a target phase of ``n_target`` steps (0: none).

    ``x_rate`` (batch, n_in) are the input rates (spikes/ms) and ``target`` (batch, n_out) the one-hot targets
    that drive the teaching current in the target phase. Both phases run in one ``jax.lax.scan`` (one loop
    body to compile); per-step weights select each phase's integration window. Within a step layers are
    updated bottom-up, so feedforward input is this step's and feedback input the previous step's, as in the
    authors' code. Returns the new state and the forward and target phase averages (the target phase's
    carry only what the updates use: apical potentials and output rates).
    """
    depth = s.depth
    dt = h["dt"]
    n_steps = n_forward + n_target
    t = jnp.arange(n_steps)
    in_forward = (t >= s.settle_steps) & (t < n_forward)
    in_target = t >= n_forward + s.settle_steps
    weight_f = in_forward / (n_forward - s.settle_steps)
    weight_t = in_target / max(n_target - s.settle_steps, 1)
    nudge = (t >= n_forward).astype(jnp.float32)
    key_in, key_net = jax.random.split(key)
    slow, fast = list(neurons.slow), list(neurons.fast)

    if s.spiking_feedforward:
        # Input spike trains do not depend on the network: generate the phases' trains, filter them, and push
        # them through W^0 as one matrix product instead of one matrix-vector product per step.
        uniform = fast_uniform(key_in, (n_steps, *x_rate.shape))
        spikes = poisson_spikes(uniform, x_rate * dt)

        def filter_step(traces, spikes_t):
            sl, fa, psp = psp_step(*traces, spikes_t, h)
            return (sl, fa), psp

        (slow[0], fast[0]), psp_in = jax.lax.scan(filter_step, (slow[0], fast[0]), spikes)
        drive0 = basal_potential(psp_in, params.w[0], params.b[0])  # (n_steps, batch, n_0)
        mean_input = jnp.tensordot(weight_f, psp_in, 1)
        drive_xs = drive0
    else:
        drive0 = basal_potential(x_rate, params.w[0], params.b[0])
        mean_input = x_rate
        drive_xs = None

    def previous_activity(layer, soma, slow, fast):
        """What layer ``layer`` sends as feedback: last step's PSP or rate."""
        if s.spiking_feedback:
            return (slow[layer + 1] - fast[layer + 1]) / (h["tau_l"] - h["tau_s"])
        return rate(soma[layer], h["phi_max"])

    def step(carry, xs):
        soma, slow, fast, acc, acc_t = carry
        w_f, w_t, nudge_t, uniform_t, drive_t = xs
        soma, slow, fast = list(soma), list(slow), list(fast)
        acc = [list(a) for a in acc]
        acc_t = [list(a) for a in acc_t]
        feedback = [None] * depth
        if with_apical:
            for i in range(depth):
                source = depth if s.broadcast else i + 1
                feedback[i] = previous_activity(source, soma, slow, fast)
        presynaptic = None
        for i in range(depth + 1):
            if i == 0:
                basal = drive_t if s.spiking_feedforward else drive0
            else:
                basal = basal_potential(presynaptic, params.w[i], params.b[i])
                acc[1][i] = acc[1][i] + w_f * presynaptic
            if i < depth:
                apical = apical_potential(feedback[i], params.y[i], params.c[i]) if with_apical else None
                soma[i] = hidden_soma_step(soma[i], basal, apical, h, s.g_a)
                if with_apical:
                    acc[2][i] = acc[2][i] + w_f * apical
                    acc[3][i] = acc[3][i] + w_f * feedback[i]
                    if n_target:
                        acc_t[0][i] = acc_t[0][i] + w_t * apical
            else:
                current = nudge_t * teaching_current(soma[i], target, h) if n_target else 0.0
                soma[i] = output_soma_step(soma[i], basal, current, h)
            acc[0][i] = acc[0][i] + w_f * soma[i]
            phi = rate(soma[i], h["phi_max"])
            if i == depth:
                acc[4][0] = acc[4][0] + w_f * phi
                if n_target:
                    acc_t[1][0] = acc_t[1][0] + w_t * phi
            presynaptic = phi
            if s.spikes(i):
                spikes_l = poisson_spikes(uniform_t[i], phi * dt)
                slow[i + 1], fast[i + 1], psp = psp_step(slow[i + 1], fast[i + 1], spikes_l, h)
                if s.spiking_feedforward:
                    presynaptic = psp
        pack = lambda a: tuple(tuple(v) for v in a)
        return (tuple(soma), tuple(slow), tuple(fast), pack(acc), pack(acc_t)), None

    batch = x_rate.shape[0]
    zeros = lambda sizes: tuple(jnp.zeros((batch, n)) for n in sizes)
    hidden_sizes = s.sizes[1:-1]
    fb_sizes = tuple(s.sizes[-1] if s.broadcast else s.sizes[i + 2] for i in range(depth))
    acc0 = (
        zeros(s.sizes[1:]),
        (jnp.zeros(()),) + zeros(hidden_sizes),  # layer 0's presynaptic average is computed outside the loop
        zeros(hidden_sizes) if with_apical else (),
        zeros(fb_sizes) if with_apical else (),
        zeros(s.sizes[-1:]),
    )
    acc0_t = (zeros(hidden_sizes) if with_apical and n_target else (), zeros(s.sizes[-1:]) if n_target else ())
    # Every step's variates in one call per layer: random-number generation inside the loop costs more than
    # the step's arithmetic for small layers.
    layer_keys = jax.random.split(key_net, depth + 1)
    variates = {
        i: fast_uniform(layer_keys[i], (n_steps, batch, s.sizes[i + 1])) for i in range(depth + 1) if s.spikes(i)
    }
    xs = (weight_f, weight_t, nudge, variates, drive_xs)
    carry = (neurons.soma, tuple(slow), tuple(fast), acc0, acc0_t)
    (soma, slow_end, fast_end, acc, acc_t), _ = jax.lax.scan(step, carry, xs, unroll=UNROLL)
    forward = PhaseAverages(acc[0], (mean_input,) + acc[1][1:], acc[2], acc[3], acc[4][0])
    target_avg = None
    if n_target:
        # only what the updates read from the target phase
        target_avg = PhaseAverages((), (), acc_t[0], (), acc_t[1][0])
    return Neurons(soma, slow_end, fast_end), forward, target_avg


# ----------------------------------------------------------------------------------------------------------
# Learning


def update(s: Structure, h: dict, params: SDParams, forward: PhaseAverages, target: PhaseAverages) -> SDParams:
    """The paper's local updates from one example's (or a batch's mean) forward and target phase averages."""
    depth = s.depth
    phi_max = h["phi_max"]
    g_a = s.g_a
    k_b = h["g_b"] / (h["g_l"] + h["g_b"] + g_a)
    k_d = h["g_d"] / (h["g_l"] + h["g_d"])
    p_hidden, p_final = 20.0 / phi_max, 20.0 / phi_max**2
    batch = forward.output_rate.shape[0]
    w, b, y = list(params.w), list(params.b), list(params.y)

    u_f = forward.soma[depth]
    err = (target.output_rate - rate(u_f, phi_max)) * k_d * rate_slope(u_f, phi_max)
    step = h["forward_lr"][depth] * p_final
    w[depth] = w[depth] + step * err.T @ forward.presynaptic[depth] / batch
    b[depth] = b[depth] + step * err.mean(0)

    for i in range(depth):
        alpha_f, alpha_t = plateau(forward.apical[i]), plateau(target.apical[i])
        c_f = forward.soma[i]
        err = (alpha_t - alpha_f) * k_b * rate_slope(c_f, phi_max)
        step = h["forward_lr"][i] * p_hidden
        w[i] = w[i] + step * err.T @ forward.presynaptic[i] / batch
        b[i] = b[i] + step * err.mean(0)
        if s.learns_feedback:
            err_fb = (rate(c_f, phi_max) - alpha_f) * rate_slope(forward.apical[i], phi_max)
            y[i] = (y[i] + h["feedback_lr"][i] * err_fb.T @ forward.feedback[i] / batch) * params.y_mask[i]
    return params._replace(w=tuple(w), b=tuple(b), y=tuple(y))


def output_loss(averages: PhaseAverages, labels: Array, phi_max: Array) -> tuple[Array, Array]:
    """Per-example loss (mean squared error of phi(mean U) / phi_max against the one-hot target) and correctness.

    The prediction is the output neuron with the largest mean somatic potential, as in the authors' tests.
    """
    u = averages.soma[-1]
    one_hot = jax.nn.one_hot(labels, u.shape[-1])
    loss = jnp.mean((rate(u, phi_max) / phi_max - one_hot) ** 2, axis=-1)
    return loss, (jnp.argmax(u, -1) == labels).astype(u.dtype)


def train_example(
    s: Structure, h: dict, params: SDParams, neurons: Neurons, x_rate: Array, labels: Array, key: Array
) -> tuple[SDParams, Neurons, tuple[Array, Array]]:
    """Forward phase, target phase and weight update of one example (or one mini-batch of streams).

    Returns the new weights, the new neuron state and the per-example (loss, correct) of the forward phase.
    """
    one_hot = jax.nn.one_hot(labels, s.sizes[-1])
    neurons, forward, target = run_phases(s, h, params, neurons, x_rate, one_hot, key, s.forward_steps, s.target_steps)
    assert target is not None  # a target phase of s.target_steps > 0 steps ran
    metrics = output_loss(forward, labels, h["phi_max"])
    return update(s, h, params, forward, target), neurons, metrics


def evaluate(s: Structure, h: dict, params: SDParams, x_rate: Array, labels: Array, key: Array):
    """Test-length forward phase from a silent network for every example; per-example (loss, correct)."""
    zero = zero_neurons(s, x_rate.shape[0])
    _, averages, _ = run_phases(
        s, h, params, zero, x_rate, jnp.zeros((x_rate.shape[0], s.sizes[-1])), key, s.test_steps, 0,
        with_apical=bool(s.g_a),
    )
    return output_loss(averages, labels, h["phi_max"])

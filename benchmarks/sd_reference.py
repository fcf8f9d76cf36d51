"""A direct NumPy implementation of segregated-dendrites learning, one example and one time step at a time.

This is how the seed project (and the authors' code, github.com/jordan-g/Segregated-Dendrite-Deep-Learning)
ran the model: Python loops over examples and time steps, every step recomputing each layer's basal potential
with a matrix-vector product. It implements the same equations as ``models.sd`` (see its docstring), written
out plainly with column-free 1-D vectors, so that the tests can check the compiled model against it and the
speed benchmark can time it.
"""

from __future__ import annotations

import numpy as np

from models.sd import POISSON_MAX_SPIKES, SDConfig, SDParams


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


class NumpySD:
    """One network (float64), trained online: ``train_example(x_rate, label)`` updates the weights in place."""

    def __init__(self, config: SDConfig, params: SDParams, rng: np.random.Generator | None = None):
        self.cfg = config
        self.w = [np.array(a, np.float64) for a in params.w]
        self.b = [np.array(a, np.float64) for a in params.b]
        self.y = [np.array(a, np.float64) for a in params.y]
        self.c = [np.array(a, np.float64) for a in params.c]
        self.y_mask = [np.array(a, np.float64) for a in params.y_mask]
        self.rng = rng or np.random.default_rng(0)
        self.depth = len(self.w) - 1
        sizes = [self.w[0].shape[1]] + [w.shape[0] for w in self.w]
        self.soma = [np.zeros(n) for n in sizes[1:]]
        self.slow = [np.zeros(n) for n in sizes]  # PSP traces: input, hidden..., output
        self.fast = [np.zeros(n) for n in sizes]

    def phi(self, v):
        return self.cfg.phi_max * sigmoid(v)

    def phi_slope(self, v):
        return self.cfg.phi_max * sigmoid(v) * (1.0 - sigmoid(v))

    def spikes(self, layer: int) -> bool:
        """Same rule as ``models.sd.Structure.spikes``."""
        cfg = self.cfg
        if layer == self.depth:
            return cfg.spiking_feedback
        return cfg.spiking_feedforward or ((not cfg.broadcast) and cfg.spiking_feedback and layer >= 1)

    def emit(self, population: int, rate):
        """Poisson spikes of this step, added to the population's PSP traces; returns the PSP."""
        cfg = self.cfg
        count = np.minimum(self.rng.poisson(rate * cfg.dt), POISSON_MAX_SPIKES)
        self.slow[population] = np.exp(-cfg.dt / cfg.tau_l) * (self.slow[population] + count)
        self.fast[population] = np.exp(-cfg.dt / cfg.tau_s) * (self.fast[population] + count)
        return self.psp(population)

    def psp(self, population: int):
        return (self.slow[population] - self.fast[population]) / (self.cfg.tau_l - self.cfg.tau_s)

    def feedback_source(self, layer: int):
        """Previous step's activity of the layer that feeds back to hidden layer ``layer``."""
        source = self.depth if self.cfg.broadcast else layer + 1
        return self.psp(source + 1) if self.cfg.spiking_feedback else self.phi(self.soma[source])

    def phase(self, x_rate, target, n_steps: int):
        """Simulate one phase (``target`` None: no teaching current); return the integration-window means."""
        cfg = self.cfg
        settle = cfg.steps(cfg.settle_time)
        n_avg = n_steps - settle
        mean = {"soma": [0.0] * (self.depth + 1), "pre": [0.0] * (self.depth + 1), "apical": [0.0] * self.depth,
                "fb": [0.0] * self.depth, "rate": 0.0}
        for t in range(n_steps):
            w_t = 1.0 / n_avg if t >= settle else 0.0
            feedback = [self.feedback_source(i) for i in range(self.depth)]
            pre = self.emit(0, x_rate) if cfg.spiking_feedforward else x_rate
            for i in range(self.depth + 1):
                basal = self.w[i] @ pre + self.b[i]
                mean["pre"][i] = mean["pre"][i] + w_t * pre
                c = self.soma[i]
                if i < self.depth:
                    apical = self.y[i] @ feedback[i] + self.c[i]
                    dc = -cfg.g_l * c + cfg.g_b * (basal - c) + cfg.g_a * (apical - c)
                    mean["apical"][i] = mean["apical"][i] + w_t * apical
                    mean["fb"][i] = mean["fb"][i] + w_t * feedback[i]
                else:
                    current = 0.0
                    if target is not None:
                        current = target * (cfg.e_exc - c) + (1 - target) * (cfg.e_inh - c)
                    dc = -cfg.g_l * c + cfg.g_d * (basal - c) + current
                self.soma[i] = c + cfg.dt * dc
                mean["soma"][i] = mean["soma"][i] + w_t * self.soma[i]
                rate = self.phi(self.soma[i])
                if i == self.depth:
                    mean["rate"] = mean["rate"] + w_t * rate
                pre = rate
                if self.spikes(i):
                    psp = self.emit(i + 1, rate)
                    if cfg.spiking_feedforward:
                        pre = psp
        return mean

    def train_example(self, x_rate, label: int) -> tuple[float, bool]:
        """Forward phase, target phase, update. Returns the forward phase's (loss, correct)."""
        cfg = self.cfg
        target = np.zeros(self.w[-1].shape[0])
        target[label] = 1.0
        fwd = self.phase(x_rate, None, cfg.steps(cfg.forward_phase))
        tgt = self.phase(x_rate, target, cfg.steps(cfg.target_phase))
        k_b = cfg.g_b / (cfg.g_l + cfg.g_b + cfg.g_a)
        k_d = cfg.g_d / (cfg.g_l + cfg.g_d)
        p_hidden, p_final = 20.0 / cfg.phi_max, 20.0 / cfg.phi_max**2
        etas = cfg.forward_learning_rates
        u_f = fwd["soma"][-1]
        err = (tgt["rate"] - self.phi(u_f)) * k_d * self.phi_slope(u_f)
        self.w[-1] += etas[-1] * p_final * np.outer(err, fwd["pre"][-1])
        self.b[-1] += etas[-1] * p_final * err
        for i in range(self.depth):
            alpha_f, alpha_t = sigmoid(fwd["apical"][i]), sigmoid(tgt["apical"][i])
            err = (alpha_t - alpha_f) * k_b * self.phi_slope(fwd["soma"][i])
            self.w[i] += etas[i] * p_hidden * np.outer(err, fwd["pre"][i])
            self.b[i] += etas[i] * p_hidden * err
            if cfg.feedback_learning_rates is not None:
                err_fb = (self.phi(fwd["soma"][i]) - alpha_f) * self.phi_slope(fwd["apical"][i])
                self.y[i] += cfg.feedback_learning_rates[i] * np.outer(err_fb, fwd["fb"][i])
                self.y[i] *= self.y_mask[i]
        loss = float(np.mean((self.phi(u_f) / cfg.phi_max - target) ** 2))
        return loss, bool(np.argmax(u_f) == label)

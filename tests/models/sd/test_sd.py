"""Segregated-dendrites learning (models.sd): compartment equations by hand, one example's update against the
plain NumPy implementation in benchmarks/sd_reference.py, learning on mnist-5k, and the hpo integration."""

from __future__ import annotations

import math
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.sd_reference import NumpySD
from models import sd
from models.train import FoldData, Plan, cross_validate

H = {"dt": 0.5, "g_l": 0.1, "g_b": 0.6, "g_d": 0.6, "e_exc": 8.0, "e_inh": -8.0, "tau_l": 10.0, "tau_s": 3.0}


# ----------------------------------------------------------------------------------------------------------
# One time step of every compartment, computed by hand


def test_basal_and_apical_potentials():
    w = jnp.array([[1.0, 2.0], [-1.0, 0.5]])
    s = jnp.array([[0.1, 0.2]])
    # B = W s + b: (0.1 + 0.4 + 0.5, -0.1 + 0.1 - 1)
    np.testing.assert_allclose(sd.basal_potential(s, w, jnp.array([0.5, -1.0])), [[1.0, -1.0]], rtol=1e-6)
    y = jnp.array([[3.0], [-2.0]])
    np.testing.assert_allclose(sd.apical_potential(jnp.array([[0.5]]), y, jnp.array([0.25, 0.0])), [[1.75, -1.0]])


def test_hidden_soma_step():
    c, basal, apical = jnp.array(1.0), jnp.array(2.0), jnp.array(3.0)
    # segregated (g_a = 0): C + dt (-g_l C + g_b (B - C)) = 1 + 0.5 (-0.1 + 0.6) = 1.25
    assert float(sd.hidden_soma_step(c, basal, None, H, 0.0)) == pytest.approx(1.25)
    # with apical conductance 0.05: + 0.5 * 0.05 * (3 - 1) = 1.30
    assert float(sd.hidden_soma_step(c, basal, apical, H, 0.05)) == pytest.approx(1.30)


def test_output_soma_step_and_teaching_current():
    u = jnp.array([1.0, 1.0])
    target = jnp.array([1.0, 0.0])
    # I = g_E (E_E - U) + g_I (E_I - U): target 1 -> 8 - 1 = 7; target 0 -> -8 - 1 = -9
    current = sd.teaching_current(u, target, H)
    np.testing.assert_allclose(current, [7.0, -9.0])
    # U + dt (-g_l U + g_d (V - U) + I) with V = 2: 1 + 0.5 (-0.1 + 0.6 + 7) = 4.75 and 1 + 0.5 (0.5 - 9) = -3.25
    np.testing.assert_allclose(sd.output_soma_step(u, jnp.array([2.0, 2.0]), current, H), [4.75, -3.25], rtol=1e-6)


def test_psp_kernel_of_one_spike():
    h = {**H, "dt": 1.0}
    kappa = lambda t: (math.exp(-t / 10.0) - math.exp(-t / 3.0)) / (10.0 - 3.0)
    slow, fast, psp = sd.psp_step(jnp.zeros(1), jnp.zeros(1), jnp.ones(1), h)
    assert float(psp[0]) == pytest.approx(kappa(1.0), rel=1e-5)  # (e^-0.1 - e^-1/3) / 7 = 0.026901
    assert kappa(1.0) == pytest.approx(0.026901, abs=1e-6)
    _, _, psp = sd.psp_step(slow, fast, jnp.zeros(1), h)
    assert float(psp[0]) == pytest.approx(kappa(2.0), rel=1e-5)


def test_rate_plateau_and_poisson_counts():
    assert float(sd.rate(jnp.array(0.0), 0.2)) == pytest.approx(0.1)
    assert float(sd.rate_slope(jnp.array(0.0), 0.2)) == pytest.approx(0.05)
    assert float(sd.plateau(jnp.array(math.log(3.0)))) == pytest.approx(0.75)
    # mean 0.5: P(0) = e^-0.5 = 0.6065, P(<=1) = 0.9098, P(<=2) = 0.9856
    counts = sd.poisson_spikes(jnp.array([0.5, 0.7, 0.95, 0.99]), jnp.full(4, 0.5))
    np.testing.assert_array_equal(counts, [0, 1, 2, 3])


# ----------------------------------------------------------------------------------------------------------
# One example's weight update against the NumPy implementation of the paper's equations

SMALL = sd.SDConfig(
    hidden=(7, 5), forward_learning_rates=(0.3, 0.2, 0.1), dt=0.5, forward_phase=6.0, target_phase=5.0,
    test_phase=6.0, settle_time=2.0, spiking_feedforward=False, spiking_feedback=False,
)


def moderate_params(config: sd.SDConfig, n_in: int, n_out: int, seed: int) -> sd.SDParams:
    """``init_params``'s structure (masks, zero feedback bias) with weights that keep potentials O(1).

    The paper's initialisation is tuned for hundreds of inputs; with a handful it saturates every sigmoid and
    the updates vanish, which would make the comparison below vacuous.
    """
    params = sd.init_params(config, n_in, n_out, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    scaled = lambda a: (rng.normal(size=a.shape) * 10.0 / np.sqrt(a.shape[-1])).astype(np.float32)
    return params._replace(
        w=tuple(scaled(w) for w in params.w),
        b=tuple(rng.normal(size=b.shape).astype(np.float32) for b in params.b),
        y=tuple(scaled(y) * m for y, m in zip(params.y, params.y_mask)),
        c=tuple(rng.normal(size=c.shape).astype(np.float32) * (c != 0) for c in params.c),
    )


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"broadcast": False},
        {"g_a": 0.05, "feedback_learning_rates": (0.01, 0.02)},
        {"sparse_feedback": True, "feedback_bias": False, "hidden": (6,), "forward_learning_rates": (0.3, 0.1)},
    ],
    ids=["broadcast", "layer-above", "apical-conductance+feedback-learning", "sparse-one-layer"],
)
def test_update_matches_numpy(changes):
    config = replace(SMALL, **changes)
    n_in, n_out = 9, 4
    params = moderate_params(config, n_in, n_out, 3)
    reference = NumpySD(config, params)
    s = sd.structure_of(config, n_in, n_out)
    h = sd.hyperparameters(config)
    rng = np.random.default_rng(4)
    neurons = sd.zero_neurons(s, 1)
    jax_params = jax.tree_util.tree_map(jnp.asarray, params)
    for label in (2, 0):  # two examples: the network state carries over from the first to the second
        x_rate = rng.uniform(size=n_in) * config.phi_max
        loss, correct = reference.train_example(x_rate, label)
        with jax.disable_jit():  # a few dozen tiny steps: running them eagerly beats compiling them
            jax_params, neurons, (jax_loss, jax_correct) = sd.train_example(
                s, h, jax_params, neurons, jnp.asarray(x_rate[None], jnp.float32), jnp.array([label]), jax.random.key(0)
            )
        assert float(jax_loss[0]) == pytest.approx(loss, rel=1e-4)
        assert bool(jax_correct[0]) == correct
    for name in ("w", "b", "y"):
        for got, want, before in zip(getattr(jax_params, name), getattr(reference, name), getattr(params, name)):
            assert np.abs(want - before).max() > 1e-6 or name == "y"  # the update is not trivially zero
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)
    for got, want in zip(neurons.soma, reference.soma):
        np.testing.assert_allclose(got[0], want, rtol=2e-4, atol=2e-6)


def test_minibatch_of_one_stream_per_row_averages_updates():
    """batch_size 2 == the mean of two independent online updates from the same weights and fresh state."""
    config = replace(SMALL, hidden=(6,), forward_learning_rates=(0.3, 0.1))
    params = jax.tree_util.tree_map(jnp.asarray, sd.init_params(config, 9, 4, np.random.default_rng(0)))
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 9)) * config.phi_max, jnp.float32)
    labels = jnp.array([1, 3])
    h = sd.hyperparameters(config)
    s1, s2 = sd.structure_of(config, 9, 4), sd.structure_of(replace(config, batch_size=2), 9, 4)
    key = jax.random.key(0)
    with jax.disable_jit():
        both, _, _ = sd.train_example(s2, h, params, sd.zero_neurons(s2, 2), x, labels, key)
        singles = [
            sd.train_example(s1, h, params, sd.zero_neurons(s1, 1), x[i : i + 1], labels[i : i + 1], key)[0]
            for i in range(2)
        ]
    for got, a, b in zip(both.w, singles[0].w, singles[1].w):
        np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow  # 30-50 s of study processes or eager training; run with -m slow
def test_spiking_phases_emit_spikes_and_learn_finite_updates():
    """Spiking feedforward and feedback (the paper's default) through layer-above feedback, run eagerly."""
    config = sd.SDConfig(hidden=(8, 6), forward_learning_rates=(0.2, 0.2, 0.2), batch_size=3, forward_phase=12.0,
                         target_phase=12.0, test_phase=12.0, settle_time=4.0, broadcast=False)
    s = sd.structure_of(config, 20, 3)
    assert all(s.spikes(i) for i in range(3))
    params = jax.tree_util.tree_map(jnp.asarray, sd.init_params(config, 20, 3, np.random.default_rng(0)))
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 20)) * config.phi_max, jnp.float32)
    with jax.disable_jit():
        new, neurons, (loss, correct) = sd.train_example(
            s, sd.hyperparameters(config), params, sd.zero_neurons(s, 3), x, jnp.array([0, 1, 2]), jax.random.key(1)
        )
    assert all(float(jnp.abs(tr).sum()) > 0 for tr in neurons.slow)  # every population spiked
    assert all(bool(jnp.isfinite(w).all()) and float(jnp.abs(w - w0).max()) > 0 for w, w0 in zip(new.w, params.w))
    assert loss.shape == (3,) and bool(jnp.isfinite(loss).all())


@pytest.mark.slow  # 30-50 s of study processes or eager training; run with -m slow
def test_learns_mnist_well_above_chance():
    from hpo.data import load_dataset, make_folds

    dataset = load_dataset("mnist-5k")
    folds = make_folds(dataset, 3, 0)
    data = FoldData(
        jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train), folds.train_idx[:1, :2600],
        jnp.asarray(folds.val_idx[:1, :500]), jnp.asarray(folds.val_mask[:1, :500]),
    )
    # the paper's 784-500-10 network, learning rates and phases, online; rate-coded inputs, a shorter test phase
    config = sd.SDConfig(epochs=2, spiking_feedforward=False, test_phase=60.0)
    seen = []
    result = cross_validate(config, data, 10, seed=0, on_epoch=lambda epoch, m: seen.append(epoch))
    assert result.score > 0.6, result.curves  # chance is 0.1
    assert seen == [0, 1] and all(v.shape == (2, 1) and np.isfinite(v).all() for v in result.curves.values())
    assert result.n_params == 784 * 500 + 500 + 500 * 10 + 10


def test_hpo_rejects_sd_for_cnn_and_regression():
    import optuna

    from hpo.config import StudyConfig
    from hpo.data import load_dataset
    from hpo.errors import UsageError
    from hpo.space.algorithms import check_dataset, suggest

    with pytest.raises(UsageError, match="--algo sd exists only for --model mlp"):
        StudyConfig(algo="sd", model="cnn")
    with pytest.raises(UsageError, match="classification-only"):
        check_dataset(StudyConfig(algo="sd", dataset="sinreg"), load_dataset("sinreg"))
    trial = optuna.trial.FixedTrial({
        "sd_depth": 2, "sd_width1": 100, "sd_width2": 250, "sd_lr_forward0": 0.2, "sd_lr_forward1": 0.2,
        "sd_lr_forward2": 0.2, "sd_learn_feedback": False, "sd_phase": 30.0, "sd_tau_l": 10.0, "sd_dt": 1.0,
        "sd_target_phase": 50.0, "sd_settle": 10.0, "sd_phi_max": 0.2, "sd_tau_s": 3.0, "sd_g_b": 0.6,
        "sd_g_d": 0.6, "sd_apical_conductance": True, "sd_spiking_feedback": False, "sd_broadcast": False,
        "sd_sparse_feedback": True, "sd_feedback_bias": False,
    })
    config = suggest(trial, StudyConfig(algo="sd"), load_dataset("digits"))
    assert isinstance(config, sd.SDConfig)
    assert config.hidden == (100, 250) and config.g_a == 0.05 and not config.broadcast and config.g_l == 0.1


def test_fast_uniform_is_uniform_and_key_dependent():
    u = np.asarray(sd.fast_uniform(jax.random.key(0), (200, 500)))
    v = np.asarray(sd.fast_uniform(jax.random.key(1), (200, 500)))
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    assert abs(np.corrcoef(u.ravel(), v.ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 0.01  # neighbouring counters


def test_shares_the_cross_validation_core_with_evaluation_points_and_the_program_cache():
    """sd is a model family of models.train like the rule networks: curves at several points per epoch, and its
    compiled programs live in the one bounded cache, so a second run with a new learning rate compiles nothing."""
    from hpo.data import load_dataset, make_folds
    from models.compile import Compiler

    dataset = load_dataset("digits")
    folds = make_folds(dataset, 2, 0)
    data = FoldData(jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train), folds.train_idx[:, :400],
                    jnp.asarray(folds.val_idx[:, :100]), jnp.asarray(folds.val_mask[:, :100]))
    config = sd.SDConfig(hidden=(20,), forward_learning_rates=(0.3, 0.3), epochs=1, batch_size=8, forward_phase=8.0,
                         target_phase=8.0, test_phase=8.0, settle_time=2.0, spiking_feedforward=False)
    compiler = Compiler()
    result = cross_validate(config, data, 10, seed=0, plan=Plan("sequential", evals_per_epoch=2, diagnostics=True), compiler=compiler)
    assert result.points["val_score"].shape == (2, 2) and result.point_epochs.tolist() == [0.5, 1.0]
    assert set(result.points) == {"train_loss", "train_score", "val_loss", "val_score"}  # no diagnostics to add
    assert any(key[0] == "segregated-dendrites" for key in compiler.store._entries)
    again = cross_validate(replace(config, forward_learning_rates=(0.1, 0.1)), data, 10, seed=0, plan=Plan("sequential", evals_per_epoch=2),
                           compiler=compiler)
    assert again.compile_seconds == 0.0

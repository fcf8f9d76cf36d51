"""The compiled trainer: every rule learns, folds strategies agree, KP aligns, divergence is caught."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hpo.data import load_dataset, make_folds
from models.initializers import host_init
from models.networks import MLP
from models.rule_training import TrainConfig, make_optimizer
from models.rules import RULES
from models.train import DivergedError, FoldData, Plan, cross_validate, fit_and_score, masked_means


def fold_data(name, k=2, seed=0):
    data = load_dataset(name)
    folds = make_folds(data, k, seed)
    return data, FoldData(jnp.asarray(data.x_train), jnp.asarray(data.y_train), folds.train_idx,
                          jnp.asarray(folds.val_idx), jnp.asarray(folds.val_mask))


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_trains_well_above_chance(rule):
    data, folds = fold_data("mnist-5k", k=2)
    config = TrainConfig(rule=rule, hidden=(128,), learning_rate=1e-3, epochs=6, batch_size=64,
                         weight_decay=1e-2 if RULES[rule].trains_feedback else 0.0)
    result = cross_validate(config, folds, data.out_features, seed=0)
    assert result.fold_scores.shape == (2,)
    assert result.score > 0.8, result.fold_scores  # chance is 0.1
    assert result.curves["val_score"].shape == (6, 2)
    assert result.n_params == 784 * 128 + 128 + 128 * 10 + 10


def test_fold_strategies_give_the_same_result():
    data, folds = fold_data("digits", k=3)
    config = TrainConfig(rule="fa", hidden=(32,), learning_rate=3e-3, epochs=2)
    a = cross_validate(config, folds, 10, seed=1, plan=Plan("sequential"))
    b = cross_validate(config, folds, 10, seed=1, plan=Plan("vmap"))
    np.testing.assert_allclose(a.fold_scores, b.fold_scores, atol=2e-3)


def test_same_seed_same_result_and_new_learning_rate_reuses_compiled_programs():
    data, folds = fold_data("digits")
    config = TrainConfig(rule="kp", hidden=(16,), learning_rate=1e-3, epochs=1, weight_decay=0.1)
    first = cross_validate(config, folds, 10, seed=3)
    again = cross_validate(config, folds, 10, seed=3)
    np.testing.assert_array_equal(first.fold_scores, again.fold_scores)
    other_lr = cross_validate(TrainConfig(**{**config.__dict__, "learning_rate": 1e-2}), folds, 10, seed=3)
    assert other_lr.compile_seconds == 0.0  # traced hyperparameter: no recompilation


def test_regression_minimises_mse():
    data, folds = fold_data("sinreg")
    config = TrainConfig(rule="fa", hidden=(64,), learning_rate=3e-3, epochs=20, loss="mse", activation="tanh")
    result = cross_validate(config, folds, data.out_features, seed=0)
    assert result.score < 0.05  # the variance of sin(x) on [-pi, pi] is 0.5


def test_divergence_is_reported_with_epoch_and_fold():
    data, folds = fold_data("sinreg")
    config = TrainConfig(rule="bp", hidden=(64,), learning_rate=1e3, epochs=5, loss="mse", optimizer="sgd")
    with pytest.raises(DivergedError, match=r"non-finite training loss .* in epoch \d+, fold \d+"):
        cross_validate(config, folds, data.out_features, seed=0)


def test_on_epoch_can_stop_training():
    data, folds = fold_data("digits")
    seen = []

    def stop_after_two(epoch, metrics):
        seen.append(metrics.val_score.shape)
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cross_validate(TrainConfig(rule="dfa", hidden=(16,), learning_rate=1e-3, epochs=5), folds, 10, 0,
                       on_epoch=stop_after_two)
    assert seen == [(2,), (2,)]


def test_fit_and_score_uses_the_test_split():
    data = load_dataset("digits")
    config = TrainConfig(rule="bp", hidden=(64,), learning_rate=3e-3, epochs=5)
    score = fit_and_score(config, data, seeds=0).fold_scores[0]
    assert 0.85 < score <= 1.0


def angle_degrees(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(np.degrees(np.arccos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1))))


def test_kolen_pollack_feedback_aligns_with_forward_weights():
    """Identical updates plus decay on W and B: W - B shrinks by (1 - lr * decay) per step, so B -> W."""
    data = load_dataset("digits")
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    model = MLP((32,), 10, "kp", "tanh")
    params = host_init(model, x[:1], np.random.default_rng(0))["params"]
    tx = make_optimizer("sgd")(learning_rate=0.05, momentum=0.0, weight_decay=0.5)
    state = tx.init(params)

    @jax.jit
    def step(params, state, idx):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x[idx]), y[idx]).mean()
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    angles = []
    rng = np.random.default_rng(0)
    for i in range(301):
        if i % 100 == 0:
            angles.append(angle_degrees(params["output"]["kernel"], params["output"]["feedback"]))
        params, state = step(params, state, rng.choice(len(x), 32, replace=False))
    assert angles[0] > 60  # independent random initialisations are nearly orthogonal
    assert all(later < earlier for earlier, later in zip(angles, angles[1:])), angles
    assert angles[-1] < 15


def test_program_cache_is_bounded_and_least_recently_used():
    """Unbounded caches of XLA executables exhaust the kernel's memory-map limit in long studies."""
    from models.compile import ProgramStore

    cache, built = ProgramStore(max_entries=2), []
    build = lambda name: (lambda: built.append(name) or name)  # noqa: E731
    assert cache.get("a", build("a"))[0] == "a" and cache.get("b", build("b"))[0] == "b"
    assert cache.get("a", build("a!")) == ("a", 0.0)  # hit: nothing built, "a" becomes most recent
    cache.get("c", build("c"))  # evicts "b", the least recently used
    assert len(cache) == 2 and built == ["a", "b", "c"]
    assert cache.get("b", build("b2"))[0] == "b2" and cache.get("a", build("a3"))[0] == "a3"


def test_fit_and_score_over_seeds_trains_each_seed_as_if_alone():
    """Test scores over seeds (one program, one run per seed): a seed's run depends on that seed only."""
    data = load_dataset("digits")
    config = TrainConfig(rule="fa", hidden=(32,), learning_rate=3e-3, epochs=2)
    together = fit_and_score(config, data, seeds=[5, 6, 7])
    alone = fit_and_score(config, data, seeds=[6, 5])
    assert together.fold_scores.shape == (3,) and len(set(together.fold_scores.tolist())) > 1
    np.testing.assert_allclose(alone.fold_scores, together.fold_scores[[1, 0]], atol=1e-6)


def test_optimiser_state_made_on_the_host_is_its_init():
    from models.rule_training import initial_optimizer_state, optimizer

    x = np.zeros((1, 6), np.float32)
    for names in (("adam",), ("sgd",), ("sgd_l2",), ("sgd", "adam")):
        config = TrainConfig(rule="kp", hidden=(5,), learning_rate=0.1, optimizer=names[0], optimizer_choices=names)
        spec = config.family.program_spec(config, x, 3)
        hyper = config.family.hyperparameters(config)
        params = host_init(MLP((5,), 3, "kp"), x, np.random.default_rng(0))["params"]
        host = initial_optimizer_state(spec, hyper, params)
        real = optimizer(spec, hyper).init(params)
        assert jax.tree_util.tree_structure(host) == jax.tree_util.tree_structure(real)
        for a, b in zip(jax.tree_util.tree_leaves(host), jax.tree_util.tree_leaves(real)):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, np.asarray(b))


def test_one_program_for_several_activations_and_optimisers_trains_exactly_as_a_dedicated_one():
    data, folds = fold_data("digits")
    for activation, optimizer in (("tanh", "sgd"), ("relu", "adam")):
        config = TrainConfig(rule="fa", hidden=(16,), learning_rate=3e-2, epochs=2, activation=activation,
                             optimizer=optimizer)
        shared = TrainConfig(**{**config.__dict__, "activation_choices": ("relu", "tanh"),
                                "optimizer_choices": ("adam", "sgd")})
        np.testing.assert_array_equal(cross_validate(shared, folds, 10, seed=1).fold_scores,
                                      cross_validate(config, folds, 10, seed=1).fold_scores)


@pytest.mark.parametrize("fold_strategy", ["vmap", "sequential"])  # one program over the group, either mapping
def test_a_group_trains_each_member_as_alone_and_stops_members_on_their_own(fold_strategy):
    from models.train import Member, train_group

    data, folds = fold_data("digits")
    configs = [TrainConfig(rule="dfa", hidden=(16,), learning_rate=lr, epochs=3, optimizer=opt,
                           optimizer_choices=("adam", "sgd")) for lr, opt in ((3e-3, "adam"), (5e-2, "sgd"), (1e-3, "adam"))]

    def member(config, seed, on_epoch=None):
        *runs, order = np.random.SeedSequence(seed).spawn(3)  # as cross_validate derives them
        rng = np.random.default_rng(order)
        return Member(config, runs, [rng, rng], on_epoch)

    seen = []

    def stop_after_one(epoch, metrics):
        seen.append(epoch)
        raise RuntimeError("stopped by its callback")

    outcomes = train_group([member(configs[0], 0), member(configs[1], 1, stop_after_one), member(configs[2], 2)], folds, 10,
                           plan=Plan(fold_strategy))
    assert isinstance(outcomes[1], RuntimeError) and seen == [0]  # stopped at once, the others went on
    for i in (0, 2):
        alone = cross_validate(configs[i], folds, 10, seed=i)
        np.testing.assert_allclose(outcomes[i].fold_scores, alone.fold_scores, atol=1e-6)
        assert outcomes[i].curves["val_score"].shape == (3, 2)


def test_evaluation_memory_does_not_grow_with_the_split():
    """A CNN evaluated on 6 chunks of validation images (Fashion-MNIST's folds hold 20000) keeps one chunk of
    activations: the compiled evaluation's temporaries are about those of a one-chunk split, not 6 times them."""
    from benchmarks.cnn_reference import standard_cnn
    from models.rule_training import RuleNetworks
    from models.train import EVAL_CHUNK

    family, config, rng = RuleNetworks(), standard_cnn("fa", epochs=1), np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((6 * EVAL_CHUNK, 28, 28, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, len(x)).astype(np.int32))
    spec = family.program_spec(config, x[:1], 10)
    state, hyper = family.init(config, spec, x[:1], rng), family.hyperparameters(config)

    def temporary_bytes(n):
        idx, mask = jnp.arange(n, dtype=jnp.int32), jnp.ones(n, bool)
        evaluate = jax.jit(lambda i, m: family.evaluate(spec, hyper, state, None, x, y, i, m))
        return evaluate.lower(idx, mask).compile().memory_analysis().temp_size_in_bytes

    one_chunk, six_chunks = temporary_bytes(EVAL_CHUNK), temporary_bytes(6 * EVAL_CHUNK)
    assert one_chunk > EVAL_CHUNK * 28 * 28 * 16 * 4  # it does hold a chunk's first-layer output
    assert six_chunks < 1.5 * one_chunk, (one_chunk, six_chunks)


@pytest.mark.parametrize("chunk", [100, 512, 5000])
def test_masked_means_in_chunks_are_the_masked_means(chunk):
    rng = np.random.default_rng(0)
    values = rng.standard_normal(5000).astype(np.float32)
    idx, mask = rng.permutation(5000)[:4321].astype(np.int32), rng.random(4321) > 0.1
    table = jnp.asarray(values)
    means = masked_means(lambda i: (table[i], table[i] ** 2), jnp.asarray(idx), jnp.asarray(mask), chunk)
    chosen = values[idx][mask]
    np.testing.assert_allclose(means, [chosen.mean(), (chosen ** 2).mean()], rtol=2e-5, atol=1e-6)


def test_sgd_l2_is_pytorchs_sgd_with_weight_decay():
    """PyTorch's SGD: d = g + wd * p (every parameter, biases too); buf = momentum * buf + d; p -= lr * buf."""
    lr, momentum, wd = 0.1, 0.9, 1e-2
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": rng.normal(size=(3, 2)), "bias": rng.normal(size=2)}}
    sgd = make_optimizer("sgd_l2")(learning_rate=lr, momentum=momentum, weight_decay=wd)
    state, current = sgd.init(params), params
    expected, buffers = params, jax.tree_util.tree_map(np.zeros_like, params)
    for step in range(3):
        grads = jax.tree_util.tree_map(lambda p, s=step: np.cos(p + s), current)
        updates, state = sgd.update(grads, state, current)
        current = optax.apply_updates(current, updates)
        buffers = jax.tree_util.tree_map(lambda b, g, p: momentum * b + g + wd * p, buffers, grads, expected)
        expected = jax.tree_util.tree_map(lambda p, b: p - lr * b, expected, buffers)
        for a, b in zip(jax.tree_util.tree_leaves(current), jax.tree_util.tree_leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    # the decoupled sgd decays after the momentum: a different optimiser whenever wd > 0
    decoupled = make_optimizer("sgd")(learning_rate=lr, momentum=momentum, weight_decay=wd)
    first = optax.apply_updates(params, decoupled.update(grads, decoupled.init(params), params)[0])
    coupled = optax.apply_updates(params, sgd.update(grads, sgd.init(params), params)[0])
    assert not np.allclose(first["dense"]["bias"], coupled["dense"]["bias"])  # sgd never decays biases


def test_a_learning_rate_milestone_changes_the_rate_from_that_epoch_on():
    """PyTorch's MultiStepLR, stepped once per epoch. A rate of zero from epoch 2 on leaves the network exactly as
    one epoch left it, whatever the second epoch's batches, under momentum too: the rate reaches the compiled
    program as a traced input, so the same program serves every epoch."""
    config = TrainConfig(rule="fa", hidden=(16,), learning_rate=3e-2, epochs=3, optimizer="sgd_l2",
                         weight_decay=1e-3, lr_milestones=(1, 2), lr_gamma=0.1)
    assert [config.learning_rate_at(e) for e in range(4)] == pytest.approx([3e-2, 3e-3, 3e-4, 3e-4])
    assert config.family.hyperparameters(config, 2)["learning_rate"] == np.float32(3e-4)
    data = load_dataset("digits")
    stopped = TrainConfig(**{**config.__dict__, "epochs": 2, "lr_milestones": (1,), "lr_gamma": 0.0})
    one = TrainConfig(**{**config.__dict__, "epochs": 1, "lr_milestones": ()})
    a = fit_and_score(stopped, data, seeds=[4], keep_state=True)
    b = fit_and_score(one, data, seeds=[4], keep_state=True)
    for x, y in zip(jax.tree_util.tree_leaves(a.state.params), jax.tree_util.tree_leaves(b.state.params)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.fold_scores, b.fold_scores)
    kept = fit_and_score(TrainConfig(**{**stopped.__dict__, "lr_gamma": 1.0}), data, seeds=[4], keep_state=True)
    assert not np.array_equal(jax.tree_util.tree_leaves(kept.state.params)[0],
                              jax.tree_util.tree_leaves(b.state.params)[0])  # without the milestone it trains on


@pytest.mark.parametrize("bad", [{"lr_milestones": (0,)}, {"lr_milestones": (3, 2)}, {"lr_milestones": [1]},
                                 {"lr_gamma": -0.1}])
def test_a_bad_schedule_is_refused(bad):
    with pytest.raises(ValueError, match="lr_"):
        TrainConfig(rule="bp", hidden=(4,), learning_rate=0.1, **bad)

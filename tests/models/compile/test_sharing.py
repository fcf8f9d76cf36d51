"""Narrower networks trained in a wider network's program (``models.compile.sharing``): exactly as in their own, and only
when the measured costs say padding is cheaper than compiling."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpo.data import load_dataset, make_folds
from models import train
from models.compile import Compiler
from models.compile.sharing import HostRecord, ProgramSharing, pad_state, unpad_state
from models.rule_training import RULE_NETWORKS, Spec, TrainConfig
from models.rules.registry import RULES
from models.train import FoldData, Plan, Static, cross_validate

EXACT_RULES = [name for name, rule in RULES.items() if rule.pads_exactly]
BASE = TrainConfig(rule="fa", hidden=(12, 12), learning_rate=3e-3, epochs=2, batch_size=32,
                   activation_choices=("relu", "tanh"), optimizer_choices=("adam", "sgd"))


def folds(k=2):
    data = load_dataset("digits")
    split = make_folds(data, k, 0)
    return FoldData(jnp.asarray(data.x_train), jnp.asarray(data.y_train), split.train_idx,
                    jnp.asarray(split.val_idx), jnp.asarray(split.val_mask))


@pytest.fixture
def fresh():
    """A new compiler (an empty program store and sharing record) for each call, so that what one part of a test
    compiled does not host another's."""
    return lambda enabled=True: Compiler(sharing=enabled)


def spec(**changes):
    return Spec(Static(dataclasses.replace(BASE, **changes)), 10)


# every rule that pads exactly, each optimiser and activation more than once, diagnostics with layer-to-layer
# and with direct feedback; the default run keeps a stored matrix with diagnostics (-m slow runs them all)
SLOW = pytest.mark.slow
CASES = [pytest.param("bp", "adam", "relu", False, marks=SLOW), ("fa", "sgd", "tanh", True),
         pytest.param("kp", "adam", "tanh", False, marks=SLOW), pytest.param("dfa", "sgd", "relu", True, marks=SLOW),
         pytest.param("frsf", "adam", "relu", False, marks=SLOW), pytest.param("drtp", "sgd", "tanh", False, marks=SLOW)]


def test_the_cases_cover_every_rule_that_pads_exactly():
    assert sorted(case.values[0] if hasattr(case, "values") else case[0] for case in CASES) == sorted(EXACT_RULES)


@pytest.mark.parametrize("host", [(20, 16), (20, 20, 20)], ids=["wider", "deeper"])
@pytest.mark.parametrize("rule,optimizer,activation,diagnostics", CASES)
def test_a_network_trained_in_a_wider_program_trains_as_in_its_own(fresh, rule, optimizer, activation, diagnostics,
                                                                   host):
    """Same losses, scores (and diagnostics) at every epoch and the same final weights, up to float rounding:
    the padded units and a switched-off extra layer stay silent however the rule sends its errors and whichever
    optimiser runs."""
    data = folds()
    config = dataclasses.replace(BASE, rule=rule, optimizer=optimizer, activation=activation,
                                 weight_decay=1e-2 if rule == "kp" else 0.0)
    compiler = fresh(enabled=False)
    own = cross_validate(config, data, 10, seed=3, plan=Plan("sequential", diagnostics=diagnostics), keep_state=True, compiler=compiler)
    assert own.shared_program == ""

    compiler = fresh()
    sharing = compiler.sharing
    wider = dataclasses.replace(config, hidden=host)
    cross_validate(wider, data, 10, seed=9, plan=Plan("sequential", diagnostics=diagnostics), compiler=compiler)  # the wider program trains once
    sharing.record_compile(RULE_NETWORKS.name, 1e9)  # compiling "costs" more than any padding
    hosted = cross_validate(config, data, 10, seed=3, plan=Plan("sequential", diagnostics=diagnostics), keep_state=True, compiler=compiler)
    assert hosted.shared_program == f"hidden (12, 12) in the program of {host}"
    assert 0 < hosted.padding_seconds < hosted.train_seconds
    assert len(compiler.store) == 1  # no program of its own was compiled
    assert hosted.n_params == own.n_params
    assert set(hosted.points) == set(own.points)
    assert any(k.startswith("update_angle/") for k in own.points) == diagnostics
    for name in own.points:
        np.testing.assert_allclose(hosted.points[name], own.points[name], rtol=2e-4, atol=2e-4, err_msg=name)
    np.testing.assert_allclose(hosted.fold_scores, own.fold_scores, atol=1 / 300)  # an example or two at most
    got, want = jax.tree_util.tree_leaves(hosted.state), jax.tree_util.tree_leaves(own.state)
    assert [a.shape for a in got] == [a.shape for a in want]  # the padding is cut off again
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_padding_a_state_and_cutting_it_back():
    state = {"w": np.arange(6.0).reshape(1, 2, 3), "count": np.array([4])}
    template = {"w": jax.ShapeDtypeStruct((3, 5), np.float64), "count": jax.ShapeDtypeStruct((), np.int64)}
    padded = pad_state(state, template)
    assert padded["w"].shape == (1, 3, 5) and padded["w"][0, :2, :3].tolist() == state["w"][0].tolist()
    assert padded["w"].sum() == state["w"].sum() and padded["count"].tolist() == [4]
    back = unpad_state(padded, state)
    np.testing.assert_array_equal(back["w"], state["w"])
    with pytest.raises(ValueError, match="smaller"):
        pad_state(padded, {"w": jax.ShapeDtypeStruct((2, 3), np.float64), "count": template["count"]})


def test_a_state_placed_in_a_deeper_hosts_tree_gets_zeros_where_it_has_no_leaf():
    state = {"dense_0": np.ones((2, 3)), "on": np.ones((2, 1), bool)}
    template = {"dense_0": jax.ShapeDtypeStruct((4,), np.float32), "dense_1": jax.ShapeDtypeStruct((4, 4), np.float32),
                "on": jax.ShapeDtypeStruct((2,), bool)}
    placed = pad_state(state, template)
    assert placed["dense_1"].shape == (2, 4, 4) and not placed["dense_1"].any()
    assert placed["on"].tolist() == [[True, False], [True, False]]  # the extra layer is off
    back = unpad_state(placed, state)
    assert set(back) == set(state) and back["dense_0"].tolist() == state["dense_0"].tolist()
    with pytest.raises(ValueError, match="no place"):
        pad_state({**state, "dense_9": np.ones((2, 1))}, template)


@pytest.mark.parametrize("change,why", [
    ({"hidden": (12, 40)}, None),  # narrower everywhere: yes
    ({"hidden": (8, 8)}, "narrower host"),
    ({"hidden": (20,)}, "shallower host"),
    ({"hidden": (20, 20, 20)}, None),  # deeper: its third layer switched off
    ({"hidden": (20, 16, 16, 16)}, None),
    ({"hidden": (20, 16, 30)}, "the layer to switch off changes the width"),
    ({"hidden": (8, 20, 20)}, "deeper but narrower at the first layer"),
    ({"batch_size": 64, "hidden": (20, 20)}, "other batch size"),
    ({"rule": "kp", "hidden": (20, 20)}, "other rule"),
])
def test_which_programs_can_host_a_network(change, why):
    host = spec(**change)
    described = RULE_NETWORKS.hosting(host, spec())
    assert (described is None) == (why is not None), why


@pytest.mark.parametrize("rule", [name for name, r in RULES.items() if not r.pads_exactly])
def test_rules_whose_feedback_depends_on_the_shape_never_share(rule):
    assert RULE_NETWORKS.hosting(spec(rule=rule, hidden=(20, 20)), spec(rule=rule)) is None


def test_activations_that_are_not_zero_at_zero_never_share():
    narrow = spec(activation_choices=("relu", "sigmoid"))
    assert RULE_NETWORKS.hosting(spec(activation_choices=("relu", "sigmoid"), hidden=(20, 20)), narrow) is None
    gelu = spec(activation_choices=("gelu",), activation="gelu")
    assert RULE_NETWORKS.hosting(spec(activation_choices=("gelu",), activation="gelu", hidden=(20, 20)), gelu)


class Family:
    """A family for the policy alone: every wider spec (an int: its width) hosts a narrower one."""

    name = "toy"

    def hosting(self, host, spec):
        return f"{spec} in {host}" if host >= spec else None


def sharing_with(hosts: dict[int, tuple[int, float]], compile_seconds=(5.0,)):
    """A ProgramSharing that has compiled ``compile_seconds`` and trained ``hosts``: width -> (n_params, s/epoch)."""
    sharing = ProgramSharing()
    for seconds in compile_seconds:
        sharing.record_compile("toy", seconds)
    for width, (n_params, epoch) in hosts.items():
        sharing._hosts.setdefault("ctx", {})[width] = HostRecord(width, None, n_params, [epoch, epoch * 3, epoch])
    return sharing


def test_ski_rental_pads_until_the_padding_paid_reaches_one_compilation():
    """Host: 1 s per epoch, half of it padding for the narrow shape; 4 epochs predict 2 s of padding; a
    compilation costs 5 s: the first two trainings pad (2 s, then 4 s paid), the third would pass 5 s."""
    sharing = sharing_with({128: (100, 1.0)})
    placements = []
    for _ in range(3):
        placement = sharing.choose(Family(), "ctx", 64, n_params=50, epochs=4)
        placements.append(placement)
        if placement is not None:
            assert placement.host == 128 and placement.padding_share == 0.5
            sharing.charge("ctx", 64, 4 * 1.0 * placement.padding_share)
    assert [p is not None for p in placements] == [True, True, False]
    assert sharing.padding_paid("ctx", 64) == 4.0
    # a pruned training pays for the epochs it trained only, so more trainings fit in one compilation
    assert sharing.choose(Family(), "ctx", 32, n_params=50, epochs=4) is not None


def test_the_cheapest_host_is_chosen_and_nothing_without_a_measured_compilation():
    sharing = sharing_with({128: (100, 1.0), 512: (1000, 1.0)})
    assert sharing.choose(Family(), "ctx", 64, n_params=50, epochs=4).host == 128  # 2 s of padding, not 3.8
    assert sharing.choose(Family(), "other context", 64, n_params=50, epochs=4) is None  # no host there
    assert sharing.choose(Family(), "ctx", 1024, n_params=2000, epochs=4) is None  # none wide enough
    assert sharing_with({128: (100, 1.0)}, compile_seconds=()).choose(Family(), "ctx", 64, 50, 4) is None
    assert sharing_with({128: (100, 1.0)}, compile_seconds=(1.0,)).choose(Family(), "ctx", 64, 50, 4) is None
    disabled = sharing_with({128: (100, 1.0)})
    disabled.enabled = False
    assert disabled.choose(Family(), "ctx", 64, 50, 4) is None


def test_costs_are_measured_as_trials_go_and_an_own_program_is_always_used(fresh):
    """What the decision reads comes from real runs: the compile seconds of each program built and the epoch
    seconds of each program trained, under the context of its runs and data shapes. And a shape whose own
    program is compiled already (here, or in the store on disk) trains in it however cheap padding would be."""
    data = folds()
    compiler = fresh()
    sharing = compiler.sharing
    assert sharing.compile_cost(RULE_NETWORKS.name) is None
    narrow = dataclasses.replace(BASE, epochs=1)
    first = cross_validate(narrow, data, 10, seed=0, compiler=compiler)  # its own program, compiled first
    assert 0 < sharing.compile_cost(RULE_NETWORKS.name) <= first.compile_seconds
    ((context, hosts),) = sharing._hosts.items()
    (record,) = hosts.values()
    assert record.n_params == first.n_params and len(record.epoch_seconds) == narrow.epochs
    assert sum(record.epoch_seconds) == pytest.approx(first.train_seconds)

    cross_validate(dataclasses.replace(narrow, hidden=(20, 20)), data, 10, seed=0, compiler=compiler)
    assert len(sharing._hosts[context]) == 2
    sharing.record_compile(RULE_NETWORKS.name, 1e9)
    again = cross_validate(narrow, data, 10, seed=1, compiler=compiler)
    assert again.shared_program == "" and again.compile_seconds == 0.0 and again.padding_seconds == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("head", [(20,), (20, 20)], ids=["wider", "deeper"])
@pytest.mark.parametrize("rule", ["fa", "dfa"])
def test_a_cnn_trained_in_the_program_of_a_wider_head_trains_as_in_its_own(fresh, rule, head):
    """Convolutional trunks must be equal; the dense head is padded (and its extra layer switched off), direct
    taps of the trunk are untouched."""
    from models.networks import ConvLayer

    digits = folds()
    data = digits._replace(x=digits.x.reshape(-1, 8, 8, 1))
    config = TrainConfig(rule=rule, hidden=(12,), learning_rate=3e-3, epochs=2, batch_size=32,
                         conv=(ConvLayer(4, 3, 1, "SAME", "max"),))
    compiler = fresh(enabled=False)
    own = cross_validate(config, data, 10, seed=3, plan=Plan("sequential", diagnostics=True), keep_state=True, compiler=compiler)
    compiler = fresh()
    sharing = compiler.sharing
    cross_validate(dataclasses.replace(config, hidden=head), data, 10, seed=9, plan=Plan("sequential", diagnostics=True), compiler=compiler)
    assert RULE_NETWORKS.hosting(spec(hidden=head, conv=config.conv), spec(hidden=(12,))) is None  # other trunk
    sharing.record_compile(RULE_NETWORKS.name, 1e9)
    hosted = cross_validate(config, data, 10, seed=3, plan=Plan("sequential", diagnostics=True), keep_state=True, compiler=compiler)
    assert hosted.shared_program == f"hidden (12,) in the program of {head}"
    assert set(hosted.points) == set(own.points)
    for name in own.points:
        np.testing.assert_allclose(hosted.points[name], own.points[name], rtol=2e-4, atol=2e-4, err_msg=name)
    for a, b in zip(jax.tree_util.tree_leaves(hosted.state), jax.tree_util.tree_leaves(own.state)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def member(config, seed, k=2):
    """The ``Member`` that ``cross_validate(config, ..., seed=seed)`` trains (the same seeds and batch orders)."""
    *run_seeds, order_seed = np.random.SeedSequence(seed).spawn(k + 1)
    return train.Member(config, run_seeds, [np.random.default_rng(order_seed)] * k)


@pytest.mark.slow
def test_a_trial_batch_trains_in_a_deeper_program_as_each_trial_alone_in_its_own(fresh):
    """Two trials of one shape trained as one group in a deeper, wider program: each member's diagnostics and
    final weights are those of the trial trained alone in its own program (the padding and the switched-off
    layer placed for the whole group, the host's extra layer dropped from each member's diagnostics)."""
    data = folds()
    configs = [dataclasses.replace(BASE, rule="dfa", learning_rate=lr) for lr in (3e-3, 1e-2)]
    compiler = fresh(enabled=False)
    alone = [cross_validate(c, data, 10, seed=s, plan=Plan("sequential", diagnostics=True), keep_state=True, compiler=compiler)
             for c, s in zip(configs, (3, 4))]
    compiler = fresh()
    sharing = compiler.sharing
    deeper = dataclasses.replace(BASE, rule="dfa", hidden=(20, 20, 20))
    # a group of as many runs, vmapped (a study trains a group whose runs are not vmapped trial by trial)
    train.train_group([member(deeper, 8), member(deeper, 9)], data, 10, plan=Plan("vmap", diagnostics=True),
                      compiler=compiler)
    sharing.record_compile(RULE_NETWORKS.name, 1e9)
    together = train.train_group([member(configs[0], 3), member(configs[1], 4)], data, 10,
                                 plan=Plan("vmap", diagnostics=True), keep_state=True, compiler=compiler)
    assert len(compiler.store) == 1  # the deeper program only
    for own, hosted in zip(alone, together):
        assert hosted.shared_program == "hidden (12, 12) in the program of (20, 20, 20)"
        assert set(hosted.points) == set(own.points) and "update_angle/dense_1" in own.points
        for name in own.points:
            np.testing.assert_allclose(hosted.points[name], own.points[name], rtol=2e-4, atol=2e-4, err_msg=name)
        for a, b in zip(jax.tree_util.tree_leaves(hosted.state), jax.tree_util.tree_leaves(own.state), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

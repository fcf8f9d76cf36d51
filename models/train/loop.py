"""The training loop: k independent runs of one configuration (or a group of configurations), every epoch one
compiled program, for every model family.

A *model family* (networks of rule layers, ``models.rule_training``; segregated dendrites, ``models.sd``) supplies
only what is its own (``models.train.types.ModelFamily``). Everything else lives here, once: seeds and per-run
initialisation, batch orders, the epoch loop with its evaluation points, the divergence check, learning curves and
``CVResult``. How the programs come to exist (stored, compiled, shared, fold strategy measured) is the
``models.compile.Compiler`` passed in (``compiler``; None: the process's ``default_compiler()``). How the epoch
program is laid out (fold strategy, evaluation points, diagnostics) is one ``Plan``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models.compile import Compiler, default_compiler, pad_state, unpad_state
from models.compile.compiler import device_arrays, shapes
from models.train.epoch import segment_layout
from models.train.types import (
    CVResult,
    DivergedError,
    EpochCallback,
    EpochMetrics,
    EpochProgram,
    FoldData,
    Member,
    ModelFamily,
    Plan,
    RunState,
    Split,
    Timing,
)

SEQUENTIAL = Plan("sequential")  # cross-validation's default: runs mapped one after another, one evaluation an epoch
VMAPPED = Plan("vmap")  # fit_and_score's default: its runs are seeds of one configuration, batched as one


def stack(trees: list) -> Any:
    """Stack equal-structure pytrees of host arrays along a new leading axis."""
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *trees)


def batch_orders(rngs: list[np.random.Generator], train_idx: np.ndarray, batch_size: int) -> np.ndarray:
    """One epoch's mini-batches per run: a fresh permutation of each training part (run i's from ``rngs[i]``; the
    same generator may serve several runs, one after another), cut into full batches."""
    n_batches = train_idx.shape[1] // batch_size
    if n_batches == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {train_idx.shape[1]} training examples per fold")
    orders = [rng.permutation(row)[: n_batches * batch_size] for rng, row in zip(rngs, train_idx, strict=True)]
    return np.stack(orders).reshape(len(train_idx), n_batches, batch_size).astype(np.int32)


def cross_validate(
    config: Any,
    data: FoldData,
    out_features: int,
    seed: int,
    *,
    plan: Plan = SEQUENTIAL,
    on_epoch: EpochCallback | None = None,
    keep_state: bool = False,
    compiler: Compiler | None = None,
) -> CVResult:
    """Train one fresh network per run (fold) of ``data`` and score each run's validation part.

    ``config`` is any model family's configuration (``config.family`` says which). All randomness
    (initialisation, batch order, random keys) derives from ``seed``. ``plan`` lays out the epoch program: its
    fold strategy, and its evaluation points per epoch, which give the learning curves in ``CVResult.points``,
    with the family's diagnostics where it asks for them (off, the compiled program is exactly the one without
    them); neither changes the training itself. ``on_epoch(epoch, metrics)`` is called after every epoch with
    per-run metrics (numpy arrays); it may raise to stop training early (the study's pruner does this). A
    non-finite training or validation loss raises ``DivergedError`` naming epoch and run. ``keep_state`` returns
    the runs' final states (``CVResult.state``). ``compiler`` keeps and makes the programs (``models.compile``).
    """
    n_runs = data.train_idx.shape[0]
    *run_seeds, order_seed = np.random.SeedSequence(seed).spawn(n_runs + 1)
    order_rng = np.random.default_rng(order_seed)  # one generator draws every fold's batch order in turn
    return train_member(Member(config, run_seeds, [order_rng] * n_runs, on_epoch), data, out_features, plan,
                        keep_state, compiler)


def train_member(member: Member, data: FoldData, out_features: int, plan: Plan, keep_state: bool = False,
                 compiler: Compiler | None = None) -> CVResult:
    """``train_group`` of one member: its result, or the exception that stopped it, raised."""
    (outcome,) = train_group([member], data, out_features, plan=plan, keep_state=keep_state, compiler=compiler)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


GroupKey = tuple[Any, ...]  # family name, program spec, batch size, epochs


def group_key(config: Any, data: FoldData, out_features: int) -> GroupKey:
    """Configurations with equal keys compile to the same programs and can be trained as one group."""
    family: ModelFamily = config.family
    spec = family.program_spec(config, data.x[:1], out_features)
    return family.name, spec, family.batch_size(config), family.epochs(config)


def could_host(host: GroupKey, key: GroupKey, family: ModelFamily, compiler: Compiler | None = None) -> bool:
    """Whether the networks of group ``key`` (``group_key``) could train in the program of group ``host``'s, a
    larger network's (``models.compile.sharing``; whether they will is decided as they train,
    ``ProgramSharing.choose``)."""
    compiler = compiler or default_compiler()
    return (compiler.sharing.enabled and host != key and host[0] == key[0] and host[2:] == key[2:]
            and family.hosting(host[1], key[1]) is not None)


def epoch_hyperparameters(members: list[Member], runs: int, epoch: int) -> dict:
    """The traced hyperparameters of epoch ``epoch`` of every run of ``members`` (``runs`` each): one value per run."""
    return stack([m.config.family.hyperparameters(m.config, epoch) for m in members for _ in range(runs)])


def _setup_group(members: list[Member], data: FoldData, out_features: int, plan: Plan) -> EpochProgram:
    """The program that trains every run of ``members`` together, with its first epoch's arguments."""
    first = members[0].config
    family: ModelFamily = first.family
    key_of_group = group_key(first, data, out_features)
    if any(group_key(m.config, data, out_features) != key_of_group for m in members[1:]):
        raise ValueError("members of a group must share their programs (models.train.group_key)")
    plan = dataclasses.replace(plan, diagnostics=plan.diagnostics and family.has_diagnostics)
    data = family.prepare(first, data)
    n_members, k = len(members), data.train_idx.shape[0]
    if n_members > 1:  # every member runs on the same folds, in its own slots
        data = data._replace(
            train_idx=np.tile(data.train_idx, (n_members, 1)), val_idx=jnp.tile(data.val_idx, (n_members, 1)),
            val_mask=jnp.tile(data.val_mask, (n_members, 1)),
        )
    sample_x = data.x[:1]
    spec = family.program_spec(first, sample_x, out_features)
    run_seeds = [s for m in members for s in m.run_seeds]
    state = stack([family.init(m.config, spec, sample_x, np.random.default_rng(s)) for m in members for s in m.run_seeds])
    # per-run keys from a child of each run's seed (the initialisation, drawn from the seed itself, is unchanged)
    key = np.stack([s.spawn(1)[0].generate_state(2) for s in run_seeds]) if family.needs_key(spec) else None
    hyper = epoch_hyperparameters(members, k, 0)
    batches = batch_orders([rng for m in members for rng in m.order_rngs], np.asarray(data.train_idx),
                           family.batch_size(first))
    return EpochProgram(family, spec, plan, state, key, batches, data, hyper)


def precompile(
    config: Any, data: FoldData, out_features: int, *, plan: Plan = SEQUENTIAL, members: int = 1,
    compiler: Compiler | None = None,
) -> float:
    """Compile (or load from disk) the programs a group of ``members`` configurations like ``config`` trains with,
    without training; the seconds it took (0 when they were in memory already).

    An ``auto`` fold strategy whose decision is due (``decide_fold_strategy``) is left to the trial that meets
    it: measured here, beside a training trial (the compile-ahead thread), its timings would be unfair; so
    nothing is compiled then (0 seconds). For the same reason nothing starts compiling while this process
    measures a decision."""
    compiler = compiler or default_compiler()
    compiler.store.wait_for_measurements()
    k = data.train_idx.shape[0]
    member = Member(config, np.random.SeedSequence(0).spawn(k), [np.random.default_rng(0)] * k)
    program = _setup_group([member] * members, data, out_features, plan)
    if program.plan.fold_strategy == "auto" and compiler.decision_status(program.family,
                                                                         compiler.auto_kind(program))[1]:
        return 0.0
    _, seconds, _ = compiler.compiled_programs(program)
    return seconds


def group_mapping(members: list[Member], data: FoldData, out_features: int, plan: Plan,
                  compiler: Compiler | None = None) -> str:
    """How the runs of one program for all ``members`` would be mapped (``train_group``): the fold strategy, or
    for ``auto`` the decision for the group's kind (its number of runs included, ``fold_kind``) or, undecided,
    the provisional mapping. Found without compiling, measuring or drawing from the members' generators."""
    if plan.fold_strategy != "auto":
        return plan.fold_strategy
    first = members[0].config
    family: ModelFamily = first.family
    plan = dataclasses.replace(plan, diagnostics=plan.diagnostics and family.has_diagnostics)
    data = family.prepare(first, data)
    spec = family.program_spec(first, data.x[:1], out_features)
    one_run = stack([family.init(first, spec, data.x[:1], np.random.default_rng(0))])
    runs = len(members) * data.train_idx.shape[0]
    layout = np.empty((runs, 0, family.batch_size(first)), np.int32)  # all a kind reads of the batches: their shape
    program = EpochProgram(family, spec, plan, one_run, None, layout, data, {})
    return (compiler or default_compiler()).mapping_of(program)


def train_group(
    members: list[Member],
    data: FoldData,
    out_features: int,
    *,
    plan: Plan = SEQUENTIAL,
    keep_state: bool = False,
    compiler: Compiler | None = None,
) -> list[CVResult | Exception]:
    """Train every member's runs of ``data`` together: one program over members x runs, one epoch loop. (A study
    trains a group of trials so only where its runs are vmapped, ``group_mapping``: mapped one after another, the
    program would do the lone trials' work, compiled anew for each group size; ``hpo.study.objective``.)

    Each member gets its own metrics after every epoch (``Member.on_epoch``) and is stopped on its own: when its
    callback raises, or its loss is not finite (``DivergedError``), that exception becomes its outcome and its
    runs are no longer looked at (they keep their slots in the program until the group ends; the loop ends when
    no member is left). The outcome of a member that trained every epoch is its ``CVResult``. The group's compile
    seconds are shared equally by its members, each epoch's seconds equally by the members still training.
    """
    compiler = compiler or default_compiler()
    asked_strategy = plan.fold_strategy  # "auto" stays so here; the plan the programs follow is concrete
    group = _setup_group(members, data, out_features, plan)
    family, spec, plan, state, key, batches, data, hyper = group
    n_members, k = len(members), len(members[0].run_seeds)
    order_rngs = [rng for m in members for rng in m.order_rngs]
    train_idx = np.asarray(data.train_idx)
    batch_size, epochs = family.batch_size(members[0].config), family.epochs(members[0].config)
    _, valid, _ = segment_layout(batches.shape[1], plan.evals_per_epoch)
    point_epochs = (np.arange(epochs)[:, None] + valid.sum(1).cumsum() / valid.sum()).ravel()
    timings = [Timing() if m.timing is None else m.timing for m in members]
    n_params = family.count_params(spec, jax.tree_util.tree_map(lambda a: a[0], state))

    # in a wider network's program when that is cheaper than compiling this one's (models.compile.sharing)
    native_state, program_spec, placement = state, spec, None
    context = (family.name, plan, shapes((key, batches, device_arrays(data), hyper)))
    if not compiler.program_exists(group):
        placement = compiler.sharing.choose(family, context, spec, n_params, epochs)
    if placement is not None:
        program_spec, state = placement.host, pad_state(state, placement.template)
        group = group._replace(spec=program_spec, state=state)
        for timing in timings:
            timing.shared_program = placement.description
    compiled, compile_seconds, group = compiler.compiled_programs(group)
    plan = group.plan
    for member, timing in zip(members, timings):
        timing.compile_seconds += compile_seconds / n_members
        if member.on_compiled is not None:
            member.on_compiled(timing.compile_seconds)
    padding_share = 0.0 if placement is None else placement.padding_share

    outcomes: list[CVResult | Exception | None] = [None] * n_members
    slots = [slice(i * k, (i + 1) * k) for i in range(n_members)]
    run_state = RunState(jax.device_put(state), key)
    history: list[EpochMetrics] = []
    point_history: list[dict[str, np.ndarray]] = []
    epoch_seconds: list[float] = []
    for epoch in range(epochs):
        start = time.perf_counter()
        if epoch:
            batches = batch_orders(order_rngs, train_idx, batch_size)
            hyper = epoch_hyperparameters(members, k, epoch)  # a learning-rate schedule's next value
        run_state, metrics, points = compiled.epoch(run_state, batches, data.x, data.y, data.val_idx, data.val_mask, hyper)
        metrics, points = jax.device_get((metrics, points))  # one transfer: each is a wait on a busy machine
        metrics = EpochMetrics(*(np.asarray(m) for m in metrics))
        history.append(metrics)
        point_history.append(points)
        training = [i for i in range(n_members) if outcomes[i] is None]
        epoch_seconds.append(time.perf_counter() - start)
        for i in training:
            timings[i].train_seconds += epoch_seconds[-1] / len(training)
            timings[i].padding_seconds += epoch_seconds[-1] * padding_share / len(training)
        for i in training:
            mine = EpochMetrics(*(m[slots[i]] for m in metrics))
            try:
                _check_finite(mine, epoch)
                callback = members[i].on_epoch
                if callback is not None:
                    callback(epoch, mine)
            except Exception as error:  # noqa: BLE001 -- the member's outcome; the group goes on
                outcomes[i] = error
        if all(outcome is not None for outcome in outcomes):
            break

    if asked_strategy == "auto":  # what a measured decision for this kind would be worth (Compiler.payback)
        compiler.count_training(group, sum(epoch_seconds), len(epoch_seconds))
    program_params = n_params if placement is None else family.count_params(
        program_spec, jax.tree_util.tree_map(lambda a: a[0], state))
    compiler.sharing.record_training(context, program_spec, state, program_params, epoch_seconds)
    if placement is not None:
        compiler.sharing.charge(context, spec, sum(epoch_seconds) * padding_share)
    final = jax.device_get(run_state.model) if keep_state else None
    if final is not None and placement is not None:
        final = unpad_state(final, native_state)
    point_names = point_history[0] if placement is None else family.hosted_points(program_spec, spec, point_history[0])
    for i in range(n_members):
        if outcomes[i] is not None:
            continue
        curves = {name: np.stack([getattr(m, name)[slots[i]] for m in history]) for name in EpochMetrics._fields}
        if point_history[0]:  # (runs, evals) per epoch -> (epochs * evals, k)
            points = {name: np.concatenate([p[name][slots[i]] for p in point_history], axis=1).T for name in point_names}
        else:  # one plain evaluation per epoch: the points are the epoch metrics
            points = dict(curves)
        run_state_i = None if final is None else jax.tree_util.tree_map(lambda a, s=slots[i]: a[s], final)
        timing = timings[i]
        outcomes[i] = CVResult(
            curves["val_score"][-1], curves, timing.compile_seconds, timing.train_seconds, n_params, points,
            point_epochs, run_state_i, plan.fold_strategy, timing.shared_program, timing.padding_seconds,
        )
    return [outcome for outcome in outcomes if outcome is not None]  # every member has one by now


def _check_finite(metrics: EpochMetrics, epoch: int) -> None:
    for name, values in (("training", metrics.train_loss), ("validation", metrics.val_loss)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise DivergedError(f"non-finite {name} loss ({values[bad[0]]}) in epoch {epoch + 1}, fold {bad[0] + 1}")


def split_as_runs(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, runs: int) -> FoldData:
    """A fixed train/test split as ``runs`` runs that each train on all of ``x_train`` and are scored on all of
    ``x_test`` (``fit_and_score``; ``models.saved`` scores a saved network through the same layout)."""
    n_train, n_test = len(x_train), len(x_test)
    return FoldData(
        x=jnp.asarray(np.concatenate([x_train, x_test])),
        y=jnp.asarray(np.concatenate([y_train, y_test])),
        train_idx=np.tile(np.arange(n_train, dtype=np.int32), (runs, 1)),
        val_idx=jnp.tile(jnp.arange(n_train, n_train + n_test, dtype=jnp.int32), (runs, 1)),
        val_mask=jnp.ones((runs, n_test), bool),
    )


def fit_and_score(
    config: Any,
    split: Split,
    seeds: int | list[int],
    *,
    plan: Plan = VMAPPED,
    on_epoch: EpochCallback | None = None,
    keep_state: bool = False,
    compiler: Compiler | None = None,
) -> CVResult:
    """Train on the whole training split of ``split`` and score its test split, once per seed, all seeds in one
    program.

    The cross-validation core with one run per seed whose validation part is the test split: ``fold_scores[i]``
    is seed i's test score. Each run's randomness comes from its own seed alone (initialisation from the first
    child of ``SeedSequence(seed)``, batch order from the second), so a seed's score does not depend on the
    other seeds it is trained with. ``plan``, ``on_epoch``, ``keep_state`` and ``compiler`` are those of
    ``cross_validate`` (the validation curves are then test-split curves; the diagnostics use training batches as
    always).
    """
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    data = split_as_runs(split.x_train, split.y_train, split.x_test, split.y_test, len(seeds))
    children = [np.random.SeedSequence(seed).spawn(2) for seed in seeds]
    member = Member(config, [init for init, _ in children], [np.random.default_rng(order) for _, order in children],
                    on_epoch)
    return train_member(member, data, split.out_features, plan, keep_state, compiler)

"""The seeds' ways of training a CNN under a learning rule, for ``benchmarks.objective``'s CNN rows.

* ``torch_cnn_reference`` -- the second seed's way: PyTorch, a Python loop over folds and mini-batches; every
  conv and dense layer is a ``torch.autograd.Function`` whose backward sends the error through the rule's matrix
  (``torch.nn.grad.conv{1,2}d_input`` with ``B``; ``W`` for bp, ``B`` for fa and kp) and computes the weight
  gradient with ``torch.nn.grad.conv{1,2}d_weight`` (kp: ``B`` receives it too); dfa's hidden layers get
  ``e @ B_l.T`` through zero-valued output taps and send nothing from layer to layer; Adam.
* ``jit_step_cnn_reference`` -- the first seed's way: our network of rule layers, but one jitted training step
  per mini-batch called from a Python loop, batches sliced on the host, folds one after another.

Both train what ``cnn_flops`` counts: conv layers of stride 1 with "SAME" padding and 2-wide max pooling, one
dense hidden layer, the output layer; inputs ``(n, *spatial, channels)`` with one or two spatial axes.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models.initializers import host_init
from models.networks import ConvLayer
from models.rule_training import TrainConfig, make_model, per_example_loss
from models.rules import get_rule

CNN_RULES = ("bp", "fa", "kp", "dfa")


def cnn_flops(config: TrainConfig, input_shape: tuple[int, ...], classes: int, train_examples: int, val_examples: int) -> float:
    """Floating-point operations (2 x multiply-adds) of one run's training and validation.

    Training examples cost a forward pass, the weight gradients (as many multiply-adds) and the input errors:
    every layer's but the first (its input is data) under bp, fa and kp; none under dfa, whose hidden layers
    instead get ``e @ B_l.T`` from the output error (``classes`` multiply-adds per hidden unit). Validation
    examples cost a forward pass. Pooling, activations and the optimiser are not counted.
    """
    spatial, channels = tuple(input_shape[:-1]), input_shape[-1]
    layer_macs, hidden_units = [], []
    for layer in config.conv:
        layer_macs.append(layer.macs(spatial, channels))
        hidden_units.append(math.prod(layer.conv_size(n) for n in spatial) * layer.features)
        spatial, channels = tuple(layer.output_size(n) for n in spatial), layer.features
    width = math.prod(spatial) * channels
    for units in (*config.hidden, classes):
        layer_macs.append(width * units)
        hidden_units.append(units)
        width = units
    hidden_units = hidden_units[:-1]  # the output layer is not a hidden layer
    forward = sum(layer_macs)
    if get_rule(config.rule).direct is None:
        errors = sum(layer_macs[1:])
    else:
        errors = sum(hidden_units) * classes
    return 2.0 * (train_examples * (2 * forward + errors) + val_examples * forward)


def torch_cnn_reference(dataset, folds, config: TrainConfig, threads: int):
    """The second seed's loop in PyTorch (see the module docstring); returns ``run() -> fold scores``."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    spatial = dataset.x_train.ndim - 2
    conv_fn = (F.conv1d, F.conv2d)[spatial - 1]
    conv_input = (torch.nn.grad.conv1d_input, torch.nn.grad.conv2d_input)[spatial - 1]
    conv_weight = (torch.nn.grad.conv1d_weight, torch.nn.grad.conv2d_weight)[spatial - 1]
    pool_fn = (F.max_pool1d, F.max_pool2d)[spatial - 1]
    rule = config.rule
    if any(layer.stride != 1 or layer.padding != "SAME" or layer.pool not in ("none", "max") for layer in config.conv):
        raise ValueError("the reference implements stride-1 SAME convolutions with max pooling only")

    class RuleConv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b, feedback):
            ctx.save_for_backward(x, w, feedback)
            return conv_fn(x, w, b, padding=w.shape[-1] // 2)

        @staticmethod
        def backward(ctx, dy):
            x, w, feedback = ctx.saved_tensors
            pad = w.shape[-1] // 2
            dw = conv_weight(x, w.shape, dy, padding=pad)
            db = dy.sum([d for d in range(dy.ndim) if d != 1])
            dx = None
            if ctx.needs_input_grad[0] and rule != "dfa":
                dx = conv_input(x.shape, w if rule == "bp" else feedback, dy, padding=pad)
            return dx, dw, db, (dw if rule == "kp" else None)

    class RuleLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b, feedback):
            ctx.save_for_backward(x, w, feedback)
            return x @ w.T + b

        @staticmethod
        def backward(ctx, dy):
            x, w, feedback = ctx.saved_tensors
            dw = dy.T @ x
            dx = None
            if ctx.needs_input_grad[0] and rule != "dfa":
                dx = dy @ (w if rule == "bp" else feedback)
            return dx, dw, dy.sum(0), (dw if rule == "kp" else None)

    class Tap(torch.autograd.Function):  # dfa: zeros forward, the output error through B backward
        @staticmethod
        def forward(ctx, hidden, feedback):
            ctx.save_for_backward(feedback)
            return hidden.new_zeros(hidden.shape[0], feedback.shape[1])

        @staticmethod
        def backward(ctx, error):
            (feedback,) = ctx.saved_tensors
            return error @ feedback.T, None

    channels_first = (0, spatial + 1, *range(1, spatial + 1))
    x_all = torch.from_numpy(np.ascontiguousarray(dataset.x_train.transpose(channels_first)))
    y_all = torch.from_numpy(dataset.y_train.astype(np.int64))
    gen = torch.Generator().manual_seed(0)
    classes = dataset.out_features

    def fan_in_normal(*shape):  # (out, in, *window) or (out, in): LeCun normal
        return torch.randn(*shape, generator=gen) / math.prod(shape[1:]) ** 0.5

    def build():
        convs, dense, taps = [], [], []
        channels, extent = dataset.x_train.shape[-1], dataset.x_train.shape[1:-1]
        for layer in config.conv:
            shape = (layer.features, channels) + (layer.kernel,) * spatial
            convs.append((fan_in_normal(*shape).requires_grad_(), torch.zeros(layer.features, requires_grad=True),
                          fan_in_normal(*shape).requires_grad_(rule == "kp"), layer.pool))
            taps.append(fan_in_normal(classes, math.prod(extent) * layer.features).T.contiguous())
            channels, extent = layer.features, tuple(layer.output_size(n) for n in extent)
        width = math.prod(extent) * channels
        for units in (*config.hidden, classes):
            dense.append((fan_in_normal(units, width).requires_grad_(), torch.zeros(units, requires_grad=True),
                          fan_in_normal(units, width).requires_grad_(rule == "kp")))
            taps.append(fan_in_normal(classes, units).T.contiguous())
            width = units
        trained = [p for w, b, fb, *_ in convs + dense for p in (w, b, fb) if p.requires_grad]
        return convs, dense, taps[:-1], trained

    def forward(x, convs, dense, taps, train):
        tapped = []
        for w, b, fb, pool in convs:
            x = torch.relu(RuleConv.apply(x, w, b, fb))
            tapped.append(x)
            if pool == "max":
                x = pool_fn(x, 2)
        x = x.flatten(1)
        for i, (w, b, fb) in enumerate(dense):
            x = RuleLinear.apply(x, w, b, fb)
            if i < len(dense) - 1:
                x = torch.relu(x)
                tapped.append(x)
        if train and rule == "dfa":
            x = x + sum(Tap.apply(h.flatten(1), feedback) for h, feedback in zip(tapped, taps))
        return x

    def run():
        scores = []
        for train, val, mask in zip(folds.train_idx, folds.val_idx, folds.val_mask):
            convs, dense, taps, trained = build()
            optimiser = torch.optim.Adam(trained, lr=config.learning_rate)
            train_t = torch.from_numpy(train.astype(np.int64))
            for _ in range(config.epochs):
                order = train_t[torch.randperm(len(train_t), generator=gen)]
                for start in range(0, len(order) - config.batch_size + 1, config.batch_size):
                    idx = order[start : start + config.batch_size]
                    optimiser.zero_grad()
                    loss = F.cross_entropy(forward(x_all[idx], convs, dense, taps, True), y_all[idx])
                    loss.backward()
                    optimiser.step()
                with torch.no_grad():
                    v = torch.from_numpy(val[mask].astype(np.int64))
                    scores.append(float((forward(x_all[v], convs, dense, taps, False).argmax(-1) == y_all[v]).float().mean()))
        return scores

    return run


def jit_step_cnn_reference(dataset, folds, config: TrainConfig):
    """The first seed's loop with our network: a jitted step per mini-batch, batches sliced on the host, folds in
    sequence. Returns ``(run, compile seconds)``."""
    model = make_model(config, dataset.out_features)
    rule = get_rule(config.rule)
    per_example = per_example_loss(config.loss)
    tx = optax.adam(config.learning_rate)
    x_all, y_all = dataset.x_train, dataset.y_train
    rng = np.random.default_rng(0)

    def init():
        variables = host_init(model, x_all[:1], rng)
        params = jax.tree_util.tree_map(jnp.asarray, variables.pop("params"))
        return params, jax.tree_util.tree_map(jnp.asarray, variables)

    @jax.jit
    def step(params, fixed, opt_state, x, y):
        def loss(p):
            return per_example(model.apply({"params": p, **fixed}, x, **rule.apply_kwargs(y, None)), y)[0].mean()

        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def accuracy(params, fixed, x, y):
        return (model.apply({"params": params, **fixed}, x).argmax(-1) == y).mean()

    def run():
        scores = []
        for train, val, mask in zip(folds.train_idx, folds.val_idx, folds.val_mask):
            params, fixed = init()
            opt_state = tx.init(params)
            for _ in range(config.epochs):
                order = rng.permutation(train)
                for start in range(0, len(order) - config.batch_size + 1, config.batch_size):
                    idx = order[start : start + config.batch_size]
                    params, opt_state = step(params, fixed, opt_state, x_all[idx], y_all[idx])
                scores.append(float(accuracy(params, fixed, x_all[val[mask]], y_all[val[mask]])))
        return scores

    start = time.perf_counter()  # warm-up: compile the step and the evaluation once
    params, fixed = init()
    step(params, fixed, tx.init(params), x_all[: config.batch_size], y_all[: config.batch_size])
    for val, mask in zip(folds.val_idx, folds.val_mask):
        accuracy(params, fixed, x_all[val[mask]], y_all[val[mask]])
    return run, time.perf_counter() - start


def standard_cnn(rule: str, epochs: int, batch_size: int = 64) -> TrainConfig:
    """The issue's CNN: conv(16, k5, SAME) + relu + max-pool, conv(32, k5, SAME) + relu + max-pool, dense 128,
    Adam lr 1e-3 (1-D or 2-D from the data)."""
    conv = (ConvLayer(16, 5, 1, "SAME", "max"), ConvLayer(32, 5, 1, "SAME", "max"))
    return TrainConfig(rule=rule, hidden=(128,), learning_rate=1e-3, batch_size=batch_size, epochs=epochs, conv=conv)

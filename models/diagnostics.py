"""Learning diagnostics: how a rule's updates compare with backpropagation's, as pure functions.

Everything here is traced inside the compiled training loop (``models.train``) at evaluation points only, and
is generic over the network and the rule: backprop's gradient is that of *the same network and parameters*
with the rule swapped for ``"bp"`` (``model.clone(rule="bp")``), so any rule in the registry, and any Flax
network with a ``rule`` field, gets the diagnostics without code of its own.

The trainer evaluates them at each evaluation point (``evals_per_epoch`` per epoch) on the last training batch
before that point, with the parameters after it: the "current batch", as in the seeds, at the cost of two extra
forward-backward passes of one batch per evaluation point.

A *layer* is a Flax module that owns trained forward parameters (leaves other than ``feedback``), named by its
module path (``"dense_0"``, ``"output"``; nested modules ``"block/conv"``), in the order of the parameter tree.

Metrics (all angles in degrees, between flattened arrays; see ``angle``):

* ``update_angle/<layer>`` and ``update_angle/total``: the rule's gradient (its update before the optimiser)
  against backprop's gradient on the same batch, over the layer's kernel and bias (total: every layer).
  The total weights layers by their gradient norms, so when the rule's and backprop's norms differ by layer
  (see ``norm_ratio``) it can exceed every per-layer angle: read it together with the per-layer ones.
* ``norm_ratio/<layer>``: ``||rule gradient|| / ||backprop gradient||`` of the layer.
* ``wb_angle/<layer>``: forward kernel ``W`` against the matrix ``B`` that carries the layer's error backwards,
  as the rule itself forms it (``Rule.backward``: fa's fixed matrix, kp's trained one, usf's and frsf's from the
  kernel's signs, brsf's expected matrix ``E|R| * sign(W)``, as a single draw is random). Rules without such a
  matrix (bp sends the error through ``W`` itself; dfa and drtp send none back) have none.
  Under fa the first layer's ``B`` is never used (no error is sent to the input), so it does not align.
* ``error_angle/<layer>`` for hidden layers: the error the rule delivers to the layer's output (its
  pre-activation, ``dL/da`` as the rule computes it: ``(e @ B.T) * f'(a)`` under dfa, the feedback chain
  under fa/kp) against backprop's ``dL/da`` on the same batch, over all examples of the batch. The output
  layer is left out: every rule hands it the true output error, so its angle is 0 by construction. The
  delivered errors are read from the gradient of a zero perturbation added, by a Flax method interceptor, to
  each layer's output, so no rule needs to expose them.
* ``weight_change/<layer>`` (computed by the trainer between evaluation points with ``relative_change``).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.rules.registry import FEEDBACK, Backward, get_rule

Array = jax.Array
BACKPROP = "bp"  # the rule every other rule is compared with


def _norm(leaves: list[Array]) -> Array:
    return jnp.sqrt(sum(jnp.vdot(v, v).real for v in leaves))


def angle(a: Any, b: Any) -> Array:
    """Angle in degrees between two arrays (or pytrees of equal structure) seen as flat vectors.

    Computed as ``2 * atan2(|u - v|, |u + v|)`` of the unit vectors ``u, v``, which is exact for identical
    inputs (0, where ``arccos`` of a rounded cosine is not) and accurate near 0 and 180 degrees. Undefined
    (NaN) when either input is all zeros.
    """
    a_leaves, b_leaves = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    na, nb = _norm(a_leaves), _norm(b_leaves)
    diff = _norm([x / na - y / nb for x, y in zip(a_leaves, b_leaves)])
    total = _norm([x / na + y / nb for x, y in zip(a_leaves, b_leaves)])
    return jnp.degrees(2.0 * jnp.arctan2(diff, total))


def norm_ratio(a: Any, b: Any) -> Array:
    """``||a|| / ||b||`` of two arrays or pytrees seen as flat vectors."""
    return _norm(jax.tree_util.tree_leaves(a)) / _norm(jax.tree_util.tree_leaves(b))


def relative_change(new: Any, old: Any) -> Array:
    """``||new - old|| / ||new||``: how far weights moved relative to their size."""
    new_leaves, old_leaves = jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(old)
    return _norm([n - o for n, o in zip(new_leaves, old_leaves)]) / _norm(new_leaves)


# ----------------------------------------------------------------------------------------------------------
# Layers of a parameter tree


def _key(entry: Any) -> Any:
    return getattr(entry, "key", entry)


def forward_params(params: dict) -> dict:
    """``params`` without feedback matrices: the parameters of the forward network (what bp would train)."""
    return {
        k: forward_params(v) if isinstance(v, dict) else v for k, v in params.items() if k != FEEDBACK
    }


def layers(params: dict) -> dict[str, dict]:
    """Layer name -> that layer's forward parameters (its leaves except ``feedback``), in tree order."""
    out: dict[str, dict] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(forward_params(params)):
        name = "/".join(str(_key(p)) for p in path[:-1])
        out.setdefault(name, {})[str(_key(path[-1]))] = leaf
    return out


def per_layer(fn: Callable[..., Array], *trees: dict) -> dict[str, Array]:
    """``fn`` applied to each layer's parameters across ``trees`` (same structure), keyed by layer name."""
    split = [layers(t) for t in trees]
    return {name: fn(*(s[name] for s in split)) for name in split[0]}


def _subtree(tree: dict, path: tuple[str, ...]) -> dict | None:
    for name in path:
        if not isinstance(tree, dict) or name not in tree:
            return None
        tree = tree[name]
    return tree if isinstance(tree, dict) else None


def feedback_pairs(params: dict, fixed: dict, backward: Backward) -> dict[str, tuple[Array, Array]]:
    """Layer name -> (kernel ``W``, the matrix ``B = backward(W, stored, None, None)`` carrying its error backwards).

    The stored feedback matrix of a layer is looked up beside its kernel in ``params`` (trained, kp) or at the same
    module path in the fixed ``"feedback"`` collection (fa, frsf); direct feedback matrices (dfa) live in their
    own modules with another shape, so they are never taken for a layer's.
    """
    pairs = {}
    for name, leaves in layers(params).items():
        if "kernel" not in leaves:
            continue
        path = tuple(name.split("/")) if name else ()
        stored = None
        for where in (_subtree(params, path), _subtree(fixed.get(FEEDBACK, {}), path)):
            b = None if where is None else where.get(FEEDBACK)
            if b is not None and b.shape == leaves["kernel"].shape:
                stored = b
                break
        matrix = backward(leaves["kernel"], stored, None, None)  # a sign scale changes no angle: LeCun's
        if matrix is not None:
            pairs[name] = (leaves["kernel"], matrix)
    return pairs


# ----------------------------------------------------------------------------------------------------------
# Gradients and delivered errors


LossFn = Callable[[Array, Array], Array]  # (network outputs, targets) -> scalar mean loss


def _output_taps(names: set[str], perturbations: dict[str, Array] | None, record: dict[str, Any]):
    """A Flax interceptor adding ``perturbations[name]`` to the output of each named layer's ``__call__``.

    Without perturbations it only records each layer's output shape and dtype (in call order).
    """

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "__call__":
            return out
        name = "/".join(context.module.path)
        if name not in names:
            return out
        if name in record:
            raise ValueError(f"layer {name!r} is called more than once; its delivered error is ambiguous")
        record[name] = jax.ShapeDtypeStruct(out.shape, out.dtype)
        return out if perturbations is None else out + perturbations[name]

    return interceptor


def _rule_inputs(model: nn.Module, y: Array, key: Array | None) -> dict[str, Any]:
    """What the model's rule needs besides the inputs (targets, a random key): ``Rule.apply_kwargs``."""
    if "rule" not in getattr(model, "__dataclass_fields__", {}):
        return {}
    return get_rule(model.rule).apply_kwargs(y, key)


def gradients_and_errors(
    model: nn.Module, params: dict, fixed: dict, x: Array, y: Array, loss: LossFn, key: Array | None = None,
    call_kwargs: dict[str, Any] | None = None,
) -> tuple[dict, dict[str, Array]]:
    """The gradient of ``loss`` w.r.t. ``params`` under the model's rule, and the error (cotangent) each layer's
    output receives, keyed by layer name in call order. ``key`` feeds rules with a random backward pass;
    ``call_kwargs`` are further arguments of the model's ``__call__`` (e.g. ``activation_index``)."""
    names = set(layers(params))
    inputs = {**_rule_inputs(model, y, key), **(call_kwargs or {})}

    def run(p, perturbations, record):
        with nn.intercept_methods(_output_taps(names, perturbations, record)):
            return loss(model.apply({"params": p, **fixed}, x, **inputs), y)

    shapes: dict[str, Any] = {}
    jax.eval_shape(lambda p: run(p, None, shapes), params)
    zeros = {name: jnp.zeros(s.shape, s.dtype) for name, s in shapes.items()}
    grads, errors = jax.grad(lambda p, z: run(p, z, {}), argnums=(0, 1))(params, zeros)
    return grads, {name: errors[name] for name in shapes}


def backprop_model(model: nn.Module) -> nn.Module:
    """The same network with every layer trained by backpropagation."""
    if "rule" not in getattr(model, "__dataclass_fields__", {}):
        raise ValueError(f"diagnostics need a network with a `rule` field to compare with backprop, got {model}")
    return model.clone(rule=BACKPROP)


def diagnose(
    model: nn.Module, params: dict, fixed: dict, x: Array, y: Array, loss: LossFn, key: Array | None = None,
    call_kwargs: dict[str, Any] | None = None,
) -> dict[str, Array]:
    """Every alignment metric of the module docstring on the batch ``(x, y)``, as a flat dict of scalars.

    ``key`` is the random key of rules whose backward pass is random (brsf: one draw of its feedback);
    ``call_kwargs`` are further arguments of the model's ``__call__``, given to both networks.
    """
    rule_grads, rule_errors = gradients_and_errors(model, params, fixed, x, y, loss, key, call_kwargs)
    bp_model = backprop_model(model)
    architecture = {k: v for k, v in fixed.items() if k != FEEDBACK}  # the same network: its layer switches too
    bp_grads, bp_errors = gradients_and_errors(bp_model, forward_params(params), architecture, x, y, loss, None,
                                               call_kwargs)
    rule_grads = forward_params(rule_grads)
    out = {f"update_angle/{k}": v for k, v in per_layer(angle, rule_grads, bp_grads).items()}
    out["update_angle/total"] = angle(rule_grads, bp_grads)
    out.update({f"norm_ratio/{k}": v for k, v in per_layer(norm_ratio, rule_grads, bp_grads).items()})
    rule = get_rule(model.rule)
    if rule.backward is not None and not rule.transports_weights:
        out.update({f"wb_angle/{k}": angle(w, b) for k, (w, b) in feedback_pairs(params, fixed, rule.backward).items()})
    hidden = list(rule_errors)[:-1]  # the last layer called is the output layer
    out.update({f"error_angle/{k}": angle(rule_errors[k], bp_errors[k]) for k in hidden})
    return out


def weight_change(new_params: dict, old_params: dict) -> dict[str, Array]:
    """``weight_change/<layer>``: relative change of each layer's forward parameters."""
    return {f"weight_change/{k}": v for k, v in per_layer(relative_change, new_params, old_params).items()}

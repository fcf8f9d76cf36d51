"""Convolution for rule layers: ``conv(x, kernel, bias, strides, padding)`` and its exact VJP, per backend.

On XLA:CPU the convolution and its VJP are written for the CPU (a gather of windows and matrix products, and
stride-1 forward convolutions where XLA's transpose rules are many times slower inside ``lax.scan``); elsewhere
XLA's own convolution and transpose rules run (cuDNN's kernels on a GPU). The choice is made when a program is
lowered, for the backend it is lowered for (``jax.lax.platform_dependent``). ``tests/models/rules/test_conv.py`` checks every
path against ``jax.vjp`` of ``lax.conv_general_dilated``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PADDINGS = ("SAME", "VALID")
LAYOUT = ("NHWC", "HWIO", "NHWC")  # lax.conv_general_dilated layouts (input, kernel, output); 1-D runs as H = 1




def conv(x: Array, kernel: Array, bias: Array, strides: tuple[int, ...], padding: str) -> Array:
    """``conv(x, kernel) + bias`` for ``x`` of shape ``(batch, *spatial, in)`` and kernel ``(*window, in, out)``.

    One or two spatial axes; a 1-D convolution is computed as a 2-D one over a height-1 image.
    """
    spatial = kernel.ndim - 2
    if spatial not in (1, 2) or x.ndim != spatial + 2 or len(strides) != spatial:
        raise ValueError(
            f"convolution needs 1 or 2 spatial axes with inputs (batch, *spatial, channels) and one stride per "
            f"axis; got input shape {x.shape}, kernel shape {kernel.shape} and strides {strides}"
        )
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
    if spatial == 1:
        return _conv2d(x[:, None], kernel[None], bias, (1, *strides), padding)[:, 0]
    return _conv2d(x, kernel, bias, tuple(strides), padding)


def _pads(x: Array, kernel: Array, strides: tuple[int, ...], padding: str) -> list[tuple[int, int]]:
    return jax.lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], strides, padding)


def _lax_conv2d(x: Array, kernel: Array, bias: Array, strides: tuple[int, int], padding: str) -> Array:
    pads = _pads(x, kernel, strides, padding)
    return jax.lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=LAYOUT) + bias


PATCH_CHANNELS = 4  # input channels up to which a CPU convolution is a gather of windows and one matrix product


def _correlate(lhs: Array, rhs: Array, bias: Array, strides: tuple[int, int], pads) -> Array:
    if rhs.shape[2] <= PATCH_CHANNELS and all(s == 1 for s in strides):
        return _patch_product(lhs, rhs, pads) + bias
    return jax.lax.conv_general_dilated(lhs, rhs, strides, pads, dimension_numbers=LAYOUT) + bias


def _patch_product(lhs: Array, rhs: Array, pads) -> Array:
    """A stride-1 convolution as ``patches @ kernel``: the windows of the padded input gathered into rows
    ``(n, y, x)`` of ``kh * kw * in`` values. XLA:CPU's convolution of a 1-channel image (the first layer) runs
    at a quarter of what it reaches with many channels (``benchmarks/cnn_profile.py``); the product does not."""
    if isinstance(pads, str):
        pads = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), pads)
    x_pad = jax.lax.pad(lhs, jnp.zeros((), lhs.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])
    window = rhs.shape[:2]
    out = [n - k + 1 for n, k in zip(x_pad.shape[1:3], window)]
    rows = [np.arange(o)[:, None] + np.arange(k)[None, :] for o, k in zip(out, window)]  # (o, k)
    patches = x_pad[:, rows[0][:, None, :, None], rows[1][None, :, None, :], :]  # (n, y, x, kh, kw, in)
    product = patches.reshape(-1, rhs.shape[0] * rhs.shape[1] * rhs.shape[2]) @ rhs.reshape(-1, rhs.shape[3])
    return product.reshape(lhs.shape[0], *out, rhs.shape[3])


def _cpu_correlate(lhs: Array, rhs: Array, strides: tuple[int, int], pads, bias: Array | None = None) -> Array:
    """``conv(lhs, rhs) + bias`` (a plain ``NHWC``/``HWIO`` convolution) whose batching over runs XLA:CPU runs fast.

    Under ``jax.vmap`` over runs (the folds, ``models.train.map_runs``) JAX batches a convolution whose input and
    kernel both carry the run axis into one grouped convolution (``feature_group_count`` = runs), which XLA:CPU
    runs 5-7x slower than the runs' convolutions one after another (``benchmarks/objective.py`` measures both).
    So on the CPU the run axis is made explicit: when only the input carries it, the runs' examples become one
    batch; when only the kernel (or bias) does, the runs' kernels become one kernel of runs x features outputs;
    when both do, the runs' convolutions run one after another (``lax.map``), the bias added inside each, where
    it is fused with the convolution. Each is the exact per-run computation. Not differentiable
    (``custom_vmap``): it is called only inside ``_conv2d``'s forward and VJP, never differentiated.
    """
    if bias is None:
        bias = jnp.zeros(rhs.shape[-1:], rhs.dtype)  # a zero added to a convolution is folded away by XLA
    f = jax.custom_batching.custom_vmap(partial(_correlate, strides=strides, pads=pads))

    @f.def_vmap
    def run_batched(axis_size, in_batched, lhs, rhs, bias):
        lhs_batched, rhs_batched, bias_batched = in_batched
        if lhs_batched and not (rhs_batched or bias_batched):  # the runs' examples as one batch
            out = f(lhs.reshape(-1, *lhs.shape[2:]), rhs, bias)
            return out.reshape(axis_size, -1, *out.shape[1:]), True
        rhs, bias = (a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))
                     for a, batched in ((rhs, rhs_batched), (bias, bias_batched)))
        if lhs_batched:
            return jax.lax.map(lambda args: f(*args), (lhs, rhs, bias)), True
        # the runs' kernels as one: output feature o * runs + r is run r's feature o
        out = f(lhs, jnp.moveaxis(rhs, 0, -1).reshape(*rhs.shape[1:-1], -1), bias.T.reshape(-1))
        return jnp.moveaxis(out.reshape(*out.shape[:-1], -1, axis_size), -1, 0), True

    return f(lhs, rhs, bias)


def _cpu_conv2d(x: Array, kernel: Array, bias: Array, strides: tuple[int, int], padding: str) -> Array:
    return _cpu_correlate(x, kernel, strides, _pads(x, kernel, strides, padding), bias)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv2d(x: Array, kernel: Array, bias: Array, strides: tuple[int, int], padding: str) -> Array:
    """2-D convolution (``NHWC`` input, ``HWIO`` kernel) plus bias. On XLA:CPU it and its VJP are written for the
    CPU (``_cpu_correlate``, ``_cpu_conv2d_vjp``); elsewhere XLA's own convolution and transpose rules run (cuDNN's
    kernels on a GPU). The choice is made when the program is lowered, for the backend it is lowered for."""
    return _platform_conv2d(x, kernel, bias, strides, padding)


def _platform_conv2d(x, kernel, bias, strides, padding):
    return jax.lax.platform_dependent(
        x, kernel, bias,
        cpu=partial(_cpu_conv2d, strides=strides, padding=padding),
        default=partial(_lax_conv2d, strides=strides, padding=padding),
    )


def _conv2d_fwd(x, kernel, bias, strides, padding):
    return _platform_conv2d(x, kernel, bias, strides, padding), (x, kernel)


def _conv2d_bwd(strides, padding, residuals, dy):
    """The exact VJP: on XLA:CPU written as stride-1 forward convolutions (``_cpu_conv2d_vjp``), elsewhere XLA's
    own transpose rules."""
    x, kernel = residuals
    return jax.lax.platform_dependent(
        x, kernel, dy,
        cpu=partial(_cpu_conv2d_vjp, strides, padding),
        default=partial(_xla_conv2d_vjp, strides, padding),
    )


def _xla_conv2d_vjp(strides, padding, x, kernel, dy):
    bias = jnp.zeros(kernel.shape[-1:], dy.dtype)  # the VJP does not depend on the bias's value
    return jax.vjp(partial(_lax_conv2d, strides=strides, padding=padding), x, kernel, bias)[1](dy)


MAX_WINDOW_COLUMNS = 1 << 26  # im2col columns (values) a kernel gradient may gather (256 MB of float32); above: a conv


def _cpu_conv2d_vjp(strides, padding, x, kernel, dy):
    """The exact VJP on XLA:CPU: forward convolutions and one matrix product, no dilated or transposed conv.

    JAX's own transpose rules express the input and kernel gradients as convolutions with permuted dimension
    numbers and dilations, which XLA:CPU runs many times slower inside ``lax.scan`` (jax-ml/jax#12868) -- and
    the training loop is a scan. Here:

    * ``dx = correlate(pad(dilate(dy)), flip(kernel) with in/out swapped)``: the strides become zeros inserted
      into ``dy`` (``lax.pad`` interior padding), so it is a stride-1 forward convolution (the fast path);
    * ``dkernel[h, w, i, o] = sum_{n, y, x} pad(x)[n, s y + h, s x + w, i] * dy[n, y, x, o]``: the windows of
      ``pad(x)`` gathered into columns and multiplied with ``dy`` (``_window_product``) -- measured 1.5x faster
      than the same sum written as a correlation with the batch as the contracted channel axis, which remains
      for layers whose columns would not fit in ``MAX_WINDOW_COLUMNS`` values (``benchmarks/objective.py``).

    ``tests/models/rules/test_conv.py`` checks both against ``jax.vjp`` of ``lax.conv_general_dilated``.
    """
    zero = jnp.zeros((), dy.dtype)
    pads = _pads(x, kernel, strides, padding)
    window, size, out = kernel.shape[:2], x.shape[1:3], dy.shape[1:3]
    full = [(k - 1 - lo, n + lo - (o - 1) * s - 1, s - 1) for k, n, o, s, (lo, _) in zip(window, size, out, strides, pads)]
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    if all(s == 1 for s in strides):  # the padding inside the convolution: measured faster than a padded input
        dx = _cpu_correlate(dy, flipped, (1, 1), [(lo, hi) for lo, hi, _ in full])
    else:
        dy_full = jax.lax.pad(dy, zero, [(0, 0, 0), *full, (0, 0, 0)])
        dx = _cpu_correlate(dy_full, flipped, (1, 1), "VALID")
    x_pad = jax.lax.pad(x, zero, [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])
    if dy.size // dy.shape[3] * kernel.size // kernel.shape[3] <= MAX_WINDOW_COLUMNS:
        dkernel = _window_product(x_pad, dy, window, strides)
    else:
        dkernel = _batch_correlation(x_pad, dy, window, strides)
    return dx, dkernel, dy.sum((0, 1, 2))


def _window_product(x_pad: Array, dy: Array, window: tuple[int, int], strides: tuple[int, int]) -> Array:
    """The kernel gradient ``sum_{n, y, x} x_pad[n, s y + h, s x + w, i] * dy[n, y, x, o]`` as one matrix product.

    The windows are gathered once (one gather, not a slice per offset) into rows ``(i, h, w)`` and columns
    ``(y, x, n)``: with the batch as the minor axis every gathered piece is a contiguous run of ``n`` values and
    the rows need no transpose. Under vmap over runs the gather and the product are batched as they are.
    """
    out, channels = dy.shape[1:3], x_pad.shape[3]
    rows = [np.arange(k)[:, None] + s * np.arange(o)[None, :] for k, o, s in zip(window, out, strides)]  # (k, o)
    x_t = _materialized(x_pad.transpose(3, 1, 2, 0))  # (i, h, w, n)
    cols = x_t[:, rows[0][:, None, :, None], rows[1][None, :, None, :], :]  # (i, kh, kw, y, x, n)
    dkernel = cols.reshape(channels * window[0] * window[1], -1) @ dy.transpose(1, 2, 0, 3).reshape(-1, dy.shape[3])
    return dkernel.reshape(channels, *window, dy.shape[3]).transpose(1, 2, 0, 3)


def _batch_correlation(x_pad: Array, dy: Array, window: tuple[int, int], strides: tuple[int, int]) -> Array:
    """The kernel gradient (as ``_window_product``) as a correlation of ``pad(x)`` with ``dilate(dy)`` in which
    the batch is the contracted channel axis and the input channels are the batch."""
    dy_dilated = jax.lax.pad(dy, jnp.zeros((), dy.dtype), [(0, 0, 0), *((0, 0, s - 1) for s in strides), (0, 0, 0)])
    dkernel = _cpu_correlate(x_pad.transpose(3, 1, 2, 0), dy_dilated.transpose(1, 2, 0, 3), (1, 1), "VALID")
    # (in, >= kh, >= kw, out): rows beyond the kernel come from input the strides never reach
    return dkernel[:, : window[0], : window[1]].transpose(1, 2, 0, 3)


@jax.custom_batching.custom_vmap
def _materialized(x: Array) -> Array:
    """``x``, written to memory before its consumers read it.

    XLA fuses cheap elementwise producers (bias, ReLU, pooling) into every consumer, a gather included, and then
    recomputes them for every gathered copy of a value (25 times for a 5 x 5 window): measured 3x slower than
    gathering from memory. A conditional is a fusion boundary, and one on ``x[0] == x[0]`` (False for NaN) is one
    XLA cannot fold away; both branches return ``x`` (the other as ``x + 0``: only a NaN first value takes it).
    Batched over runs, the whole batch is materialised at once, so the predicate stays one scalar.
    """
    first = x.reshape(-1)[0]
    return jax.lax.cond(first == first, lambda a: a, lambda a: a + 0, x)


@_materialized.def_vmap
def _materialized_batched(axis_size, in_batched, x):
    return _materialized(x), in_batched[0]


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)

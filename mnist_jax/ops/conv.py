"""`conv_general_dilated`: `lax.conv_general_dilated` with a strided-conv gradient XLA:CPU runs fast.

XLA:CPU lowers the input gradient of a strided convolution to an input-dilated convolution,
which multiplies by all the zeros the dilation inserts and ran 2-3.5x slower than the forward
pass (deotte's 5x5 stride-2 convs, experiments/bench_conv.py). On the CPU this module computes
the same gradient as stride-1 forward convolutions of the output gradient with the flipped,
in/out-swapped kernel, one per stride phase (sub-pixel form), interleaved back into the input's
layout. The forward pass, the kernel gradient and everything about stride-1 convs are lax's own
(measured as fast or faster once YNNPACK convolutions are off: see mnist_jax.platform.configure_cpu).

On other backends (`lax.platform_dependent`) and for anything but strided 2-D NHWC/HWIO
convolutions without dilation or groups, it is exactly `lax.conv_general_dilated`, gradient
included.

`bias_add` adds a conv's bias with the bias gradient as `norm.channel_sum` (a matmul on the CPU):
autodiff's per-channel reduction over batch x height x width became slow `reduce-window` loops on
XLA:CPU, about a sixth of a senet (32 filters) train step in a profile.

When the oneDNN extension is loaded (`mnist_jax.ops.onednn.available()`: built by `pip install` on
Linux x86-64, not turned off by `MNIST_JAX_ONEDNN=0`), NHWC/HWIO convolutions run on
oneDNN on the CPU instead, all three passes; everything above is then the fallback. The zoo uses
all of it through `conv2d` (`models.blocks.Conv`), which also gives the bias and a following
ReLU to oneDNN. bfloat16 goes to oneDNN only where its bfloat16 kernels are the fast ones
(`onednn.bf16_fast()`): on this project's Intel machine (AVX512_BF16, no AMX) they ran 1.2-1.8x
slower than its float32 ones and a bf16 train step was no faster with them than with XLA's, while
on an AMD Zen 4 they ran 1.3-2.1x faster than float32 (experiments/results/speed.md).
"""

from collections.abc import Sequence
import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp

from mnist_jax.ops import onednn
from mnist_jax.ops.norm import channel_sum

Pads = tuple[tuple[int, int], ...]

# flax.linen.Conv's dimension numbers for 2-D inputs: NHWC activations, HWIO kernels.
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))
_DN = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
    """Same arguments and result as `lax.conv_general_dilated`; a faster strided gradient on CPU."""
    lax_conv = functools.partial(
        lax.conv_general_dilated, window_strides=window_strides, padding=padding,
        lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
    supported = (
        jnp.ndim(lhs) == 4 and jnp.ndim(rhs) == 4
        and dimension_numbers is not None
        and lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), dimension_numbers) == _NHWC
        and all(d == 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
        and feature_group_count == 1 and batch_group_count == 1
        and len(window_strides) == 2)
    if not supported:
        return lax_conv(lhs, rhs)
    strides, pads = _strides_and_pads(lhs, rhs, window_strides, padding)
    plain = precision is None and preferred_element_type in (None, jnp.dtype(lhs.dtype))
    if plain and _on_onednn(lhs, rhs, strides, pads):
        return onednn.conv(lhs, rhs, None, strides, pads)
    if strides == (1, 1):
        return lax_conv(lhs, rhs)
    return _conv(lhs, rhs, strides, pads, precision, preferred_element_type)


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, strides: Sequence[int],
           padding: str | Sequence[tuple[int, int]], *, relu: bool = False) -> jax.Array:
    """NHWC x HWIO convolution plus an optional bias, then a ReLU if `relu`: one oneDNN
    primitive (bias and ReLU fused, bias gradient from the kernel-gradient primitive) when it
    can, else the functions above."""
    strides, pads = _strides_and_pads(x, kernel, strides, padding)
    if _on_onednn(x, kernel, strides, pads) and (bias is None or bias.dtype == x.dtype):
        return onednn.conv(x, kernel, bias, strides, pads, relu)
    y = conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DN)
    y = y if bias is None else bias_add(y, bias)
    return jax.nn.relu(y) if relu else y


def _strides_and_pads(x, w, strides, padding) -> tuple[tuple[int, int], Pads]:
    strides = tuple(int(s) for s in strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(jnp.shape(x)[1:3], jnp.shape(w)[:2], strides, padding)
    return strides, tuple((int(lo), int(hi)) for lo, hi in padding)


def _on_onednn(x, w, strides, pads) -> bool:
    fast_dtype = x.dtype == jnp.float32 or (x.dtype == jnp.bfloat16 and onednn.bf16_fast())
    return fast_dtype and onednn.available() and onednn.supports(x, w, strides, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads, precision: Any,
          out_dtype: Any) -> jax.Array:
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_DN,
                                    precision=precision, preferred_element_type=out_dtype)


def _conv_fwd(x, w, strides, pads, precision, out_dtype):
    return _conv(x, w, strides, pads, precision, out_dtype), (x, w)


def _conv_bwd(strides, pads, precision, out_dtype, residuals, g):
    x, w = residuals

    def lax_grads(x, w, g):
        lax_conv = functools.partial(lax.conv_general_dilated, window_strides=strides,
                                     padding=pads, dimension_numbers=_DN, precision=precision,
                                     preferred_element_type=out_dtype)
        return jax.vjp(lax_conv, x, w)[1](g)

    def cpu_grads(x, w, g):
        _, dw = lax_grads(x, w, g)  # XLA drops lax's input gradient, unused.
        dx = _input_grad(w, g.astype(x.dtype), x.shape[1:3], strides, pads, precision)
        return dx.astype(x.dtype), dw

    return lax.platform_dependent(x, w, g, cpu=cpu_grads, default=lax_grads)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _input_grad(w: jax.Array, g: jax.Array, in_size: Sequence[int], strides: tuple[int, int],
                pads: Pads, precision: Any) -> jax.Array:
    """d(conv)/d(input) as stride-1 forward convolutions, one per stride phase.

    Padded-input row r = p * s + i receives g[p] * w[i]; for the rows of phase a = r mod s only
    the kernel taps i = a, a + s, ... contribute, so each phase is a full correlation of g with
    that flipped sub-kernel. Phases are interleaved, then the padding is cropped off.
    """
    (sh, sw), (n, p, q, _), c = strides, g.shape, w.shape[2]
    # Padded-input extent rounded up to whole strides: m rows per phase.
    mh, mw = (-(-(size + lo + hi) // s) for size, (lo, hi), s in zip(in_size, pads, strides))
    phases = []
    for a in range(sh):
        row = []
        for b in range(sw):
            sub = w[a::sh, b::sw]
            th, tw = sub.shape[:2]
            if th == 0 or tw == 0:  # Kernel smaller than the stride: this phase sees no tap.
                row.append(jnp.zeros((n, mh, mw, c), g.dtype))
                continue
            sub = jnp.flip(sub, (0, 1)).transpose(0, 1, 3, 2)
            row.append(lax.conv_general_dilated(
                g, sub, (1, 1), ((th - 1, mh - p), (tw - 1, mw - q)), dimension_numbers=_DN,
                precision=precision, preferred_element_type=g.dtype))
        phases.append(jnp.stack(row, axis=3))  # [n, mh, mw, sw, c]
    dx = jnp.stack(phases, axis=2).reshape(n, mh * sh, mw * sw, c)
    # dx[h] = padded[h + lo]: crop (or zero-fill, for negative padding) back to the input.
    (lo_h, _), (lo_w, _) = pads
    return lax.pad(dx, jnp.zeros((), dx.dtype), (
        (0, 0, 0), (-lo_h, in_size[0] + lo_h - mh * sh, 0),
        (-lo_w, in_size[1] + lo_w - mw * sw, 0), (0, 0, 0)))


@jax.custom_vjp
def bias_add(y: jax.Array, bias: jax.Array) -> jax.Array:
    """`y + bias` over the last axis, with the bias gradient summed as `norm.channel_sum`."""
    return y + bias


def _bias_add_fwd(y, bias):
    return y + bias, bias


def _bias_add_bwd(bias, g):
    return g, channel_sum(g.astype(jnp.float32)).astype(bias.dtype)


bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)

"""`conv_general_dilated`: `lax.conv_general_dilated` with a backward pass XLA:CPU runs fast.

XLA:CPU runs a forward convolution well, but lowers the kernel gradient to a convolution whose
"window" is the whole output map (28x28), and a strided conv's input gradient to an
input-dilated convolution; both run several times slower than the forward pass. This module
keeps lax's forward pass bit for bit and, on CPU, computes the same gradients as

- input gradient of a strided conv: stride-1 forward convolutions of the output gradient with
  the flipped, in/out-swapped kernel, one per stride phase (sub-pixel form: no multiplications
  by the zeros a dilated gradient would hold), interleaved back into the input's layout
  (lax's own is as fast for stride 1, so it is kept there);
- kernel gradient: a matrix product of im2col patches of the input with the output gradient,
  summed over batch chunks small enough that the patches stay in cache (when the map is large
  enough for that to pay; lax's own gradient otherwise).

Pass it to flax: `nn.Conv(..., conv_general_dilated=conv.conv_general_dilated)`. On other
backends (`lax.platform_dependent`) and for anything but 2-D NHWC/HWIO convolutions without
dilation or groups, it is exactly `lax.conv_general_dilated`, gradient included.
"""

from collections.abc import Sequence
import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp

Pads = tuple[tuple[int, int], ...]

# flax.linen.Conv's dimension numbers for 2-D inputs: NHWC activations, HWIO kernels.
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))
_DN = ("NHWC", "HWIO", "NHWC")

# The im2col kernel gradient beats lax's from this many output pixels and in / out channels
# (measured with experiments/bench_conv.py; below, lax's is as fast or faster).
_IM2COL_MIN_PIXELS = 64
_IM2COL_MIN_FEATURES = 32
# Bytes of im2col patches per batch chunk: small enough to stay in a CPU's L2/L3 cache.
_CHUNK_BYTES = 2 ** 21


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
    """Same arguments and result as `lax.conv_general_dilated`; a faster gradient on CPU."""
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
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(jnp.shape(lhs)[1:3], jnp.shape(rhs)[:2], strides, padding)
    else:
        pads = padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    return _conv(lhs, rhs, strides, pads, precision, preferred_element_type)


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
        dx, dw = lax_grads(x, w, g)  # XLA drops whichever of these goes unused.
        g = g.astype(x.dtype)
        if strides != (1, 1):
            dx = _input_grad(w, g, x.shape[1:3], strides, pads, precision).astype(x.dtype)
        pixels, features = g.shape[1] * g.shape[2], min(w.shape[2:])
        if pixels >= _IM2COL_MIN_PIXELS and features >= _IM2COL_MIN_FEATURES:
            dw = _kernel_grad(x, g, w.shape[:2], strides, pads, precision).astype(w.dtype)
        return dx, dw

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


def _kernel_grad(x: jax.Array, g: jax.Array, window: Sequence[int], strides: tuple[int, int],
                 pads: Pads, precision: Any) -> jax.Array:
    """d(conv)/d(kernel) = im2col(x)^T @ g, accumulated in float32 over cache-sized batch chunks."""
    (kh, kw), (n, p, q, o), c = window, g.shape, x.shape[3]
    chunk = max(1, min(n, _CHUNK_BYTES // (p * q * kh * kw * c * x.dtype.itemsize)))
    steps = -(-n // chunk)
    # Zero images add nothing to the gradient: pad the batch to whole chunks.
    extra = ((0, steps * chunk - n),) + ((0, 0),) * 3
    xs = jnp.pad(x, extra).reshape(steps, chunk, *x.shape[1:])
    gs = jnp.pad(g, extra).reshape(steps, chunk, p, q, o)

    def step(acc, xg):
        cols = _im2col(xg[0], window, strides, pads, (p, q))
        return acc + lax.dot_general(cols, xg[1], (((0, 1, 2), (0, 1, 2)), ((), ())),
                                     precision=precision,
                                     preferred_element_type=jnp.float32), None

    acc = jnp.zeros((kh * kw * c, o), jnp.float32)
    if steps == 1:
        dw = step(acc, (xs[0], gs[0]))[0]
    else:
        dw = lax.scan(step, acc, (xs, gs))[0]
    return dw.reshape(kh, kw, c, o)


def _im2col(x: jax.Array, window: Sequence[int], strides: tuple[int, int], pads: Pads,
            out_size: tuple[int, int]) -> jax.Array:
    """Patches [n, p, q, kh * kw * c], ordered like an HWIO kernel's (kh, kw, c) axes."""
    (kh, kw), (sh, sw), (p, q) = window, strides, out_size
    n, c = x.shape[0], x.shape[3]
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    taps = [lax.slice(xp, (0, i, j, 0), (n, i + (p - 1) * sh + 1, j + (q - 1) * sw + 1, c),
                      (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
    return jnp.concatenate(taps, axis=-1)

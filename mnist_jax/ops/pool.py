"""Non-overlapping 2-D pooling as reshapes and reductions, with lax's gradients, fast on every backend.

`flax.linen.max_pool` lowers to `reduce_window`, whose gradient (select-and-scatter) XLA:CPU
rewrites into a scatter fed by four index-sized iotas: in a tiny20k train step on the CPU the
max-pool gradients took about half the step's time. With the window equal to the stride, each
output reads its own k x k block, so pooling is a reshape and a reduction, and the gradient is
elementwise and fuses with its neighbours.

`max_pool` keeps lax's gradient exactly, ties included: the whole gradient goes to the first
maximum of each window in row-major order (select-and-scatter with `>=`), where a plain
`max(axis=...)` would split it between tied entries (frequent after a ReLU: all-zero windows).
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp


def max_pool(x: jax.Array, window: int, *, ceil_mode: bool = False) -> jax.Array:
    """`nn.max_pool(x, (window, window), strides=(window, window))` on NHWC `x`, same gradient.

    A partial last window is dropped ("VALID"), or with `ceil_mode` (PyTorch's) pooled over the
    entries it has, as lax does with -inf padding.
    """
    if ceil_mode:
        pads = [(0, 0, 0)] + [(0, -x.shape[axis] % window, 0) for axis in (1, 2)] + [(0, 0, 0)]
        x = lax.pad(x, jnp.array(-jnp.inf, x.dtype), pads)
    return _max_pool(x, window)


def avg_pool(x: jax.Array, window: int) -> jax.Array:
    """`nn.avg_pool(x, (window, window), strides=(window, window))` on NHWC `x` ("VALID")."""
    return _blocks(x, window).mean(axis=(2, 4))


def _blocks(x: jax.Array, k: int) -> jax.Array:
    """[n, h, w, c] -> [n, h // k, k, w // k, k, c], dropping rows / columns past whole windows."""
    n, h, w, c = x.shape
    if h < k or w < k:
        raise ValueError(f"pooling window {k}x{k} is larger than the {h}x{w} feature map; "
                         "use larger images or a model with fewer pooling stages")
    return x[:, : h // k * k, : w // k * k].reshape(n, h // k, k, w // k, k, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x: jax.Array, k: int) -> jax.Array:
    return _blocks(x, k).max(axis=(2, 4))


def _max_pool_fwd(x, k):
    y = _max_pool(x, k)
    return y, (x, y)


def _max_pool_bwd(k, residuals, g):
    x, y = residuals
    blocks = _blocks(x, k)
    # Row-major position of each entry in its window; the first maximum takes the gradient.
    position = (lax.broadcasted_iota(jnp.int32, (1, 1, k, 1, k, 1), 2) * k
                + lax.broadcasted_iota(jnp.int32, (1, 1, k, 1, k, 1), 4))
    is_max = blocks == y[:, :, None, :, None, :]
    first = jnp.min(jnp.where(is_max, position, k * k), axis=(2, 4), keepdims=True)
    dx = jnp.where(position == first, g[:, :, None, :, None, :], 0).astype(x.dtype)
    n, h, w, c = x.shape
    dx = dx.reshape(n, h // k * k, w // k * k, c)
    return (jnp.pad(dx, ((0, 0), (0, h - dx.shape[1]), (0, w - dx.shape[2]), (0, 0))),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)

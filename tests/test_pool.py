"""mnist_jax.ops.pool: the same outputs and gradients as flax's pooling, ties and partial windows included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax.ops import pool


def _tied(shape, seed=0):
    """Random maps with many ties: zeros (as after a ReLU) and values on a coarse grid."""
    x = jax.random.normal(jax.random.key(seed), shape)
    return jnp.where(x < 0.3, 0.0, jnp.round(x * 2) / 2)


def _value_and_vjp(fn, x):
    out, vjp = jax.vjp(fn, x)
    cotangent = jax.random.normal(jax.random.key(1), out.shape)
    return out, vjp(cotangent)[0]


@pytest.mark.parametrize("shape", [(3, 8, 8, 4), (2, 7, 7, 3), (2, 5, 6, 2)])
@pytest.mark.parametrize("window", [2, 3])
def test_max_pool_matches_flax_with_ties(shape, window):
    x = _tied(shape)
    want = _value_and_vjp(lambda x: nn.max_pool(x, (window, window), strides=(window, window)), x)
    got = _value_and_vjp(lambda x: pool.max_pool(x, window), x)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])  # the first maximum takes the gradient.


@pytest.mark.parametrize("shape", [(2, 7, 7, 3), (2, 8, 5, 2)])
def test_max_pool_ceil_mode_matches_flax_with_minus_inf_padding(shape):
    x = _tied(shape) - 5.0  # all negative: the padding must never win.
    pads = [(0, -shape[axis] % 2) for axis in (1, 2)]
    want = _value_and_vjp(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding=pads), x)
    got = _value_and_vjp(lambda x: pool.max_pool(x, 2, ceil_mode=True), x)
    assert got[0].shape == (2, -(-shape[1] // 2), -(-shape[2] // 2), shape[3])
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("shape, window", [((3, 8, 8, 4), 2), ((2, 7, 7, 3), 2), ((2, 4, 4, 5), 4)])
def test_avg_pool_matches_flax(shape, window):
    x = _tied(shape)
    want = _value_and_vjp(lambda x: nn.avg_pool(x, (window, window), strides=(window, window)), x)
    got = _value_and_vjp(lambda x: pool.avg_pool(x, window), x)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6)


def test_max_pool_under_jit_and_vmap_matches_flax():
    x = _tied((3, 2, 6, 6, 4))
    flax_pool = jax.vmap(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)))
    ours = jax.jit(jax.vmap(lambda x: pool.max_pool(x, 2)))
    np.testing.assert_array_equal(_value_and_vjp(ours, x)[1], _value_and_vjp(flax_pool, x)[1])


def test_window_larger_than_map_is_a_clear_error():
    with pytest.raises(ValueError, match="larger than the 3x3 feature map"):
        pool.max_pool(jnp.zeros((1, 3, 3, 1)), 4)

"""mnist_jax.ops.norm.BatchNorm: the same outputs, statistics and gradients as flax's BatchNorm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax.ops import norm


def _run(module, x, variables, train, cotangent):
    """Output, new batch_stats and gradients (input, scale, bias) of sum(out * cotangent)."""
    def loss(params, x):
        out, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                    x, mutable=["batch_stats"])
        return jnp.sum(out.astype(jnp.float32) * cotangent), (out, updates["batch_stats"])

    (_, (out, stats)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        variables["params"], x)
    return out, stats, grads


def _both(x, *, train, dtype=jnp.float32, momentum=0.9, epsilon=1e-5, variables=None):
    kwargs = dict(use_running_average=not train, momentum=momentum, epsilon=epsilon, dtype=dtype)
    ours, theirs = norm.BatchNorm(**kwargs), nn.BatchNorm(**kwargs)
    if variables is None:
        variables = theirs.init(jax.random.key(0), x)
        # Non-trivial parameters and running statistics.
        c = x.shape[-1]
        keys = jax.random.split(jax.random.key(1), 4)
        variables = {
            "params": {"scale": 1 + 0.3 * jax.random.normal(keys[0], (c,)),
                       "bias": 0.2 * jax.random.normal(keys[1], (c,))},
            "batch_stats": {"mean": 0.1 * jax.random.normal(keys[2], (c,)),
                            "var": jax.random.uniform(keys[3], (c,), minval=0.5, maxval=2)}}
    assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(variables)
    cotangent = jax.random.normal(jax.random.key(2), x.shape)
    return (_run(ours, x, variables, train, cotangent),
            _run(theirs, x, variables, train, cotangent))


def _assert_close(got, want, rtol, atol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                                   rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", [(16, 12, 12, 8), (4, 5, 7, 3), (32, 10)])
@pytest.mark.parametrize("train", [True, False])
def test_matches_flax(shape, train):
    # An offset and scale far from 0 / 1, as conv outputs have: the statistics must hold up.
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(3), shape)
    got, want = _both(x, train=train)
    _assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_matches_flax_in_bfloat16():
    x = (1.0 + jax.random.normal(jax.random.key(4), (8, 6, 6, 4))).astype(jnp.bfloat16)
    got, want = _both(x, train=True, dtype=jnp.bfloat16)
    _assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_constant_channel_has_zero_gradient_not_nan():
    x = jnp.ones((4, 3, 3, 2)).at[..., 1].set(jax.random.normal(jax.random.key(5), (4, 3, 3)))
    got, want = _both(x, train=True)
    _assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(got))


def test_gradient_of_returned_statistics():
    # The training function also returns (mean, var); their gradients must be right too.
    x = jax.random.normal(jax.random.key(6), (5, 4, 3))
    scale, bias = jnp.full((3,), 1.5), jnp.full((3,), 0.5)

    def reference(x):
        mean = x.mean((0, 1))
        var = (x * x).mean((0, 1)) - mean * mean
        y = (x - mean) * jax.lax.rsqrt(var + 1e-3) * scale + bias
        return y, mean, var

    weights = [jax.random.normal(jax.random.key(7 + i), s) for i, s in
               enumerate([x.shape, (3,), (3,)])]
    loss = lambda fn: lambda x: sum(jnp.sum(w * o) for w, o in zip(weights, fn(x)))
    np.testing.assert_allclose(jax.grad(loss(lambda x: norm.batch_norm_train(
        x, scale, bias, 1e-3)))(x), jax.grad(loss(reference))(x), rtol=1e-4, atol=1e-5)


def test_vmapped_members_match_one_at_a_time():
    x = jax.random.normal(jax.random.key(8), (3, 8, 5, 5, 4))
    scale = 1 + jax.random.normal(jax.random.key(9), (3, 4))
    bias = jax.random.normal(jax.random.key(10), (3, 4))

    def loss(x, scale, bias):
        y, mean, var = norm.batch_norm_train(x, scale, bias, 1e-5)
        return jnp.sum(jnp.sin(y)) + jnp.sum(mean) + jnp.sum(var)

    grad = jax.grad(loss, argnums=(0, 1, 2))
    batched = jax.jit(jax.vmap(grad))(x, scale, bias)
    for m in range(3):
        _assert_close([g[m] for g in batched], grad(x[m], scale[m], bias[m]),
                      rtol=1e-4, atol=1e-5)


def test_sums_as_matmul_are_accurate():
    # The CPU path's per-channel sum (the other backends' is jnp.sum), against float64 sums: as
    # accurate as float32 summation gets (XLA's own reduction errs by 2e-6 here).
    a = 5.0 + jax.random.normal(jax.random.key(11), (4096, 7))
    exact = np.asarray(a, np.float64).sum(axis=0)
    np.testing.assert_allclose(norm._sum_as_matmul(a), exact, rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(a, axis=0), exact, rtol=1e-5)

"""conv.conv_general_dilated: lax's forward pass and kernel gradient exactly, lax's input gradient
to float32 rounding (its lax drop-in; with the oneDNN extension loaded the other tests here run
through oneDNN); conv.bias_add and models.blocks.Conv: flax's nn.Conv to float32 rounding."""


import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax.ops import conv, onednn
from mnist_jax.models import blocks

DN = ("NHWC", "HWIO", "NHWC")

# (batch, size, in, out, kernel, stride, padding): every kind of conv in the model zoo, small.
SHAPES = [
    (2, 12, 1, 8, 3, 1, "SAME"),  # tiny20k / baseline / senet stems.
    (3, 9, 32, 64, 3, 1, "VALID"),  # deotte, simple_m3.
    (2, 10, 32, 32, 5, 2, "SAME"),  # deotte's strided 5x5 (even input).
    (2, 7, 16, 24, 5, 2, "SAME"),  # ... and odd input: uneven SAME padding.
    (2, 4, 8, 16, 4, 1, "VALID"),  # deotte's last conv: 1x1 output.
    (2, 9, 4, 8, 7, 1, "VALID"),  # simple_m7.
    (2, 6, 128, 128, 3, 1, "SAME"),  # senet / resnet_committee, small spatial.
    (1, 11, 3, 5, 3, 2, "VALID"),
    (2, 8, 3, 6, 4, 2, ((2, 1), (0, 3))),  # Explicit, asymmetric padding.
    (2, 8, 3, 6, 3, 2, ((-1, 2), (1, 0))),  # Negative padding crops the input.
    (2, 9, 2, 3, 1, 2, "SAME"),  # Kernel smaller than the stride.
]


def _data(shape, dtype=jnp.float32):
    n, size, cin, cout, k, s, padding = shape
    kx, kw, kg = jax.random.split(jax.random.key(sum(shape[:6])), 3)
    x = jax.random.normal(kx, (n, size, size + 1, cin), dtype)  # Non-square on purpose.
    w = jax.random.normal(kw, (k, k, cin, cout), dtype) / float(np.sqrt(k * k * cin))
    y = lax.conv_general_dilated(x, w, (s, s), padding, dimension_numbers=DN)
    return x, w, jax.random.normal(kg, y.shape, dtype)


def _convs(shape):
    s, padding = shape[5], shape[6]
    ours = lambda x, w: conv.conv_general_dilated(x, w, (s, s), padding, dimension_numbers=DN)
    ref = lambda x, w: lax.conv_general_dilated(x, w, (s, s), padding, dimension_numbers=DN)
    return ours, ref


def _output_and_grads(f, x, w, g):
    """One compiled program per case: fast to test, and what training runs."""

    def run(x, w, g):
        y, vjp = jax.vjp(f, x, w)
        return y, vjp(g)

    return jax.jit(run)(x, w, g)


def _assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-4, atol=1e-5)


@pytest.fixture
def lax_drop_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lax path of ops/conv.py even where oneDNN is loaded (tests/test_onednn.py tests that)."""
    monkeypatch.setattr(onednn, "available", lambda: False)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradients_match_lax(shape, lax_drop_in):
    x, w, g = _data(shape)
    (y, grads), (y_ref, grads_ref) = (_output_and_grads(f, x, w, g) for f in _convs(shape))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
    for got, want in zip(grads, grads_ref):
        _assert_close(got, want)


def test_gradients_under_jit_and_vmap_over_members():
    shape = (2, 8, 3, 8, 5, 2, "SAME")
    (x, w, _), members = _data(shape), 3
    ws = jnp.stack([w * (m + 1) for m in range(members)])
    xs = jnp.stack([x + m for m in range(members)])

    def loss(f):
        return lambda x, w: jnp.sum(jnp.sin(f(x, w)))

    ours, ref = (jax.jit(jax.vmap(jax.grad(loss(f), argnums=(0, 1)))) for f in _convs(shape))
    for got, want in zip(ours(xs, ws), ref(xs, ws)):
        _assert_close(got, want)


def test_flax_conv_with_it_has_the_default_gradients():
    x = jax.random.normal(jax.random.key(0), (2, 10, 10, 3))
    fast = nn.Conv(16, (3, 3), strides=2, padding="SAME",
                   conv_general_dilated=conv.conv_general_dilated)
    default = nn.Conv(16, (3, 3), strides=2, padding="SAME")
    params = default.init(jax.random.key(1), x)

    def grads(model):
        loss = lambda p, x: jnp.sum(model.apply(p, x) ** 2)
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)

    for got, want in zip(jax.tree.leaves(grads(fast)), jax.tree.leaves(grads(default))):
        _assert_close(got, want)


def test_bfloat16_keeps_its_dtype():
    shape = (2, 8, 4, 8, 3, 2, "SAME")
    x, w, g = _data(shape, jnp.bfloat16)
    (y, (dx, dw)), (_, grads_ref) = (_output_and_grads(f, x, w, g) for f in _convs(shape))
    assert y.dtype == dx.dtype == dw.dtype == jnp.bfloat16
    for got, want in zip((dx, dw), grads_ref):
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   rtol=0.05, atol=0.05)


def test_unsupported_convolutions_are_lax():
    """NCHW layout, dilation and groups go straight to lax, gradient included (as stride 1 does)."""
    x = jax.random.normal(jax.random.key(0), (2, 4, 9, 9))
    w = jax.random.normal(jax.random.key(1), (6, 2, 3, 3))
    kwargs = dict(window_strides=(1, 1), padding="SAME", rhs_dilation=(2, 2),
                  feature_group_count=2)
    ours = lambda x, w: jnp.sum(conv.conv_general_dilated(x, w, **kwargs) ** 2)
    ref = lambda x, w: jnp.sum(lax.conv_general_dilated(x, w, **kwargs) ** 2)
    grads, grads_ref = (jax.jit(jax.grad(f, (0, 1)))(x, w) for f in (ours, ref))
    for got, want in zip(grads, grads_ref):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("fields", [
    {"features": 8, "kernel_size": (3, 3)},
    {"features": 8, "kernel_size": (5, 5), "strides": (2, 2), "padding": "SAME"},
    {"features": 8, "kernel_size": (3, 3), "strides": 2, "padding": ((1, 2), (0, 1))},
    {"features": 8, "kernel_size": (4, 4), "padding": "VALID", "use_bias": False},
], ids=str)
def test_zoo_conv_is_flax_conv(fields):
    """blocks.Conv: flax's parameters (names, shapes, initial values), outputs and gradients."""
    x = jax.random.normal(jax.random.key(0), (4, 10, 10, 3))
    ours, flax_conv = blocks.Conv(**fields), nn.Conv(**fields)
    params = flax_conv.init(jax.random.key(1), x)
    mine = ours.init(jax.random.key(1), x)
    assert jax.tree.structure(mine) == jax.tree.structure(params)
    for got, want in zip(jax.tree.leaves(mine), jax.tree.leaves(params)):
        np.testing.assert_array_equal(got, want)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias

    def grads(model):
        loss = lambda p, x: jnp.sum(jnp.sin(model.apply(p, x)))
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)

    for got, want in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(flax_conv))):
        _assert_close(got, want)


def test_bias_add_gradient_is_the_channel_sum_in_the_bias_dtype():
    y = jax.random.normal(jax.random.key(0), (3, 5, 5, 4), jnp.bfloat16)
    bias = jnp.arange(4, dtype=jnp.bfloat16)
    g = jax.random.normal(jax.random.key(1), y.shape, jnp.bfloat16)
    out, vjp = jax.vjp(conv.bias_add, y, bias)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(y + bias, np.float32))
    g_y, g_bias = vjp(g)
    assert g_bias.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(g_y, np.float32), np.asarray(g, np.float32))
    np.testing.assert_allclose(np.asarray(g_bias, np.float32),
                               np.asarray(g, np.float64).sum(axis=(0, 1, 2)), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name, overrides", [("deotte", {}), ("senet", {"filters": 8}),
                                             ("resnet_committee", {"width": 8})], ids=str)
def test_bench_conv_swaps_the_zoo_to_flax_conv_without_changing_the_model(name, overrides, experiment):
    """experiments/bench_conv.py times the zoo with plain flax.linen.Conv: it must be the same
    network (parameters, initial values, outputs), fused ReLUs included."""
    bench_conv = experiment("bench_conv")
    from mnist_jax import models
    x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))

    def init_and_apply():
        model = models.get(name, **overrides)
        variables = model.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x,
                               train=False)
        return variables, model.apply(variables, x, train=False)

    variables, logits = init_and_apply()
    with bench_conv.zoo_convs_are_flax():
        flax_variables, flax_logits = init_and_apply()
    assert jax.tree.structure(flax_variables) == jax.tree.structure(variables)
    for got, want in zip(jax.tree.leaves(flax_variables), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(got, want)
    _assert_close(flax_logits, logits)


@pytest.mark.parametrize("dtype, last", [("float32", "torch"), ("bfloat16", "ours32")])
def test_bench_conv_times_every_tiny20k_conv(dtype, last, experiment, capsys):
    """The per-conv table runs end to end: a row per conv, positive rates (batch 2, one repeat)."""
    bench_conv = experiment("bench_conv")
    bench_conv.bench_convs(batch=2, repeats=1, only="tiny20k", dtype=dtype)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[-1] == last
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == sum("tiny20k" in shape[0] for shape in bench_conv.SHAPES) == 3
    for row in rows:
        assert float(row[-4]) > 0 and float(row[-3]) > 0  # lax, ours GFLOP/s
        assert row[-1] == "-" or float(row[-1]) > 0

"""mnist_jax.ops.onednn: built where it should be, and lax's numbers (float tolerance) for every conv
of the zoo, bias included, under jit, vmap, shard_map and donation, and in training.

lax stays the reference; the training test turns the extension off inside one process for it.
"""

from __future__ import annotations

import os
import re

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mnist_jax import models
from mnist_jax import platform
from mnist_jax.ops import conv, onednn

DN = ("NHWC", "HWIO", "NHWC")

pytestmark = pytest.mark.cpu_only  # oneDNN's convolutions run on the CPU backend only

needs_onednn = pytest.mark.skipif(not onednn.available(),
                                  reason="oneDNN extension not built or MNIST_JAX_ONEDNN=0")

# (input size, in channels, out channels, kernel, stride, padding): every conv in the model zoo
# (experiments/bench_conv.py lists them by model; simple_m* adds 5x5 and 7x7 valid convs).
ZOO = [
    (28, 1, 8, 3, 1, "SAME"), (14, 8, 16, 3, 1, "SAME"), (7, 16, 32, 3, 1, "SAME"),  # tiny20k
    (28, 1, 32, 3, 1, "VALID"), (26, 32, 32, 3, 1, "VALID"), (24, 32, 32, 5, 2, "SAME"),
    (12, 32, 64, 3, 1, "VALID"), (10, 64, 64, 3, 1, "VALID"), (8, 64, 64, 5, 2, "SAME"),
    (4, 64, 128, 4, 1, "VALID"),  # deotte
    (28, 32, 32, 3, 1, "SAME"), (14, 32, 32, 3, 1, "SAME"),  # senet-32
    (28, 128, 128, 3, 1, "SAME"), (28, 1, 128, 5, 1, "SAME"), (14, 128, 256, 3, 1, "SAME"),
    (7, 256, 512, 3, 1, "SAME"), (4, 512, 512, 3, 1, "SAME"),  # senet, resnet_committee
    (28, 1, 32, 5, 1, "VALID"), (24, 32, 64, 5, 1, "VALID"), (28, 1, 48, 7, 1, "VALID"),
    (22, 48, 96, 7, 1, "VALID"),  # simple_m5 / m7
    (9, 3, 6, 4, 2, ((2, 1), (0, 3))), (9, 2, 3, 1, 2, "SAME"),  # asymmetric pads, 1x1 stride 2
]


def _case(shape, dtype=jnp.float32, batch=2):
    size, cin, cout, k, s, padding = shape
    kx, kw, kb, kg = jax.random.split(jax.random.key(size * cout + k), 4)
    x = jax.random.normal(kx, (batch, size, size, cin), jnp.float32).astype(dtype)
    w = (jax.random.normal(kw, (k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(dtype)
    b = jax.random.normal(kb, (cout,)).astype(dtype)
    strides, pads = conv._strides_and_pads(x, w, (s, s), padding)
    y = lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=DN)
    return x, w, b, jax.random.normal(kg, y.shape).astype(dtype), strides, pads


def _output_and_grads(f, *args):
    """y and the vjp of g w.r.t. (x, w, b), in one compiled program as training runs it."""
    *primals, g = args
    return jax.jit(lambda *a: (lambda y, vjp: (y, vjp(g)))(*jax.vjp(f, *a)))(*primals)


def _lax(x, w, b, strides, pads):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=DN) + b


def _assert_close(got, want, tol):
    """Float tolerance relative to the largest value (the convs sum up to 25k products)."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * max(1.0, np.abs(want).max()))


def test_built_on_linux_x86_64_unless_turned_off():
    """The guard CI's normal install runs into when the build broke or silently skipped (no
    compiler): only an install that says it skipped on purpose may lack the library."""
    if not onednn.BUILT_HERE:
        assert platform.conv_backend() == "xla"
        return
    if onednn.disabled():
        pytest.skip(f"{onednn.ENV}=0 turns the oneDNN extension off")
    if onednn.library_path() is None and onednn.skipped_on_purpose():
        pytest.skip(f"{onednn.NATIVE_ENV}=0: installed without the oneDNN extension on purpose")
    assert onednn.library_path() is not None, (
        f"{onednn.LIBRARY} was not built: reinstall with a C++ compiler, `pip install -v -e .`, "
        "and read CMake's output")
    assert onednn.available() and platform.conv_backend() == "onednn"


@needs_onednn
@pytest.mark.parametrize("shape", ZOO, ids=str)
def test_zoo_convs_match_lax_float32(shape):
    x, w, b, g, strides, pads = _case(shape)
    assert onednn.supports(x, w, strides, pads)
    ours = lambda x, w, b: onednn.conv(x, w, b, strides, pads)
    (y, grads), (y_ref, grads_ref) = (_output_and_grads(f, x, w, b, g)
                                      for f in (ours, lambda *a: _lax(*a, strides, pads)))
    for got, want in zip((y, *grads), (y_ref, *grads_ref)):
        _assert_close(got, want, 1e-5)


@needs_onednn
@pytest.mark.parametrize("shape", [ZOO[3], ZOO[5], ZOO[9], ZOO[13]], ids=str)
def test_fused_relu_matches_lax_then_relu(shape):
    """The ReLU post-op and its gradient (0 where the output is 0, as jax.nn.relu's); a zero bias
    on an all-zero input channel puts exact zeros in the output, the case the gradient rule
    decides."""
    x, w, b, g, strides, pads = _case(shape)
    x = x.at[..., 0].set(0.0)
    w = w.at[..., 0].set(0.0)
    b = b.at[0].set(0.0)
    ours = lambda x, w, b: onednn.conv(x, w, b, strides, pads, True)
    ref = lambda x, w, b: jax.nn.relu(_lax(x, w, b, strides, pads))
    (y, grads), (y_ref, grads_ref) = (_output_and_grads(f, x, w, b, g) for f in (ours, ref))
    assert "relu = 1" in jax.jit(ours).lower(x, w, b).as_text()
    assert float((y_ref == 0).mean()) > 0.3  # half the outputs and the zeroed channel
    for got, want in zip((y, *grads), (y_ref, *grads_ref)):
        _assert_close(got, want, 1e-5)


def test_conv2d_relu_is_the_same_everywhere(monkeypatch):
    """conv2d(relu=True) is conv2d then jax.nn.relu, on oneDNN or not (fallback path)."""
    x, w, b, g, strides, pads = _case(ZOO[5])
    ref = lambda x, w, b: jax.nn.relu(_lax(x, w, b, strides, pads))
    want = _output_and_grads(ref, x, w, b, g)
    for on in (True, False):
        monkeypatch.setattr(conv, "_on_onednn", lambda *a, on=on: on and onednn.available())
        got = _output_and_grads(lambda x, w, b: conv.conv2d(x, w, b, strides, pads, relu=True),
                                x, w, b, g)
        for a, b_ in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            _assert_close(a, b_, 1e-5)


@needs_onednn
@pytest.mark.parametrize("shape", [ZOO[1], ZOO[5], ZOO[10], ZOO[14]], ids=str)
def test_bfloat16_matches_float32_to_bfloat16_rounding(shape):
    """Against lax in float32 on the same bf16-rounded inputs (lax's own bf16 bias gradient
    sums in bf16 and is far worse than oneDNN's float32 accumulation)."""
    x, w, b, g, strides, pads = _case(shape, jnp.bfloat16)
    if not onednn.supports(x, w, strides, pads):
        pytest.skip("no bfloat16 convolutions on this CPU")
    y, grads = _output_and_grads(lambda x, w, b: onednn.conv(x, w, b, strides, pads), x, w, b, g)
    f32 = [a.astype(jnp.float32) for a in (x, w, b, g)]
    y_ref, grads_ref = _output_and_grads(lambda *a: _lax(*a, strides, pads), *f32)
    for got, want in zip((y, *grads), (y_ref, *grads_ref)):
        assert got.dtype == jnp.bfloat16
        _assert_close(got, want, 2e-2)


@needs_onednn
def test_conv2d_without_bias_and_conv_general_dilated_are_onednn():
    x, w, _, g, strides, pads = _case(ZOO[5])
    ours = [lambda x, w: conv.conv2d(x, w, None, strides, pads),
            lambda x, w: conv.conv_general_dilated(x, w, strides, pads, dimension_numbers=DN)]
    for f in ours:
        assert "mnist_onednn_conv_fwd" in jax.jit(f).lower(x, w).as_text()
        y, grads = _output_and_grads(f, x, w, g)
        y_ref, grads_ref = _output_and_grads(
            lambda x, w: lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=DN), x, w, g)
        for got, want in zip((y, *grads), (y_ref, *grads_ref)):
            _assert_close(got, want, 1e-5)


def test_zoo_bfloat16_goes_to_onednn_only_where_its_kernels_are_fast(monkeypatch):
    """bf16 convs run on oneDNN on AMD's AVX512_BF16 and AMX, on lax elsewhere (Intel's
    AVX512_BF16 without AMX ran oneDNN's bf16 slower than float32)."""
    x, w, b, _, strides, pads = _case(ZOO[5], jnp.bfloat16)

    def on_onednn() -> bool:
        f = lambda x, w, b: conv.conv2d(x, w, b, strides, pads)
        return "mnist_onednn" in jax.jit(f).lower(x, w, b).as_text()

    assert on_onednn() == (onednn.available() and onednn.bf16_fast())
    if onednn.available() and "ONEDNN_MAX_CPU_ISA" not in os.environ:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
        flags = set(re.search(r"^flags\s*:(.*)$", cpuinfo, re.M).group(1).split())
        amd = "AuthenticAMD" in cpuinfo
        assert onednn.bf16_fast() == ("amx_bf16" in flags or (amd and "avx512_bf16" in flags))
    monkeypatch.setattr(onednn, "bf16_fast", lambda: False)
    assert not on_onednn()
    if onednn.available() and onednn.supports(x, w, strides, pads):
        monkeypatch.setattr(onednn, "bf16_fast", lambda: True)
        assert on_onednn()


@needs_onednn
def test_vmap_over_members_and_donation():
    x, w, b, g, strides, pads = _case(ZOO[5])
    xs, ws, bs = (jnp.stack([a * (m + 1) for m in range(3)]) for a in (x, w, b))

    def grads(f):
        loss = lambda x, w, b: jnp.sum(jnp.sin(f(x, w, b, strides, pads)))
        return jax.vmap(jax.grad(loss, argnums=(0, 1, 2)))

    want = jax.jit(grads(_lax))(xs, ws, bs)
    got = jax.jit(grads(onednn.conv), donate_argnums=(0, 1, 2))(xs, ws, bs)
    for a, b_ in zip(got, want):
        _assert_close(a, b_, 1e-5)


@needs_onednn
def test_shard_map_over_devices():
    devices = jax.devices()
    x, w, b, _, strides, pads = _case(ZOO[4], batch=2 * len(devices))
    mesh = jax.sharding.Mesh(np.array(devices), ("d",))
    spec = jax.sharding.PartitionSpec("d")
    rep = jax.sharding.PartitionSpec()
    f = jax.shard_map(lambda x, w, b: onednn.conv(x, w, b, strides, pads), mesh=mesh,
                      in_specs=(spec, rep, rep), out_specs=spec, check_vma=False)  # as engine
    _assert_close(jax.jit(f)(x, w, b), _lax(x, w, b, strides, pads), 1e-5)


def test_unsupported_cases_fall_back_to_lax():
    x = jnp.ones((1, 8, 8, 3), jnp.float16)
    w = jnp.ones((3, 3, 3, 4), jnp.float16)
    assert not onednn.supports(x, w, (1, 1), ((1, 1), (1, 1)))
    x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
    assert not onednn.supports(x32, w32, (1, 1), ((-1, 1), (1, 1)))
    assert not onednn.supports(x32, w32.astype(jnp.bfloat16), (1, 1), ((1, 1), (1, 1)))


@needs_onednn
@pytest.mark.slow
def test_training_loss_curve_matches_lax(monkeypatch: pytest.MonkeyPatch):
    """tiny20k, 150 Adam steps on a fixed batch stream: the two loss curves agree step by step."""
    curve = _loss_curve()
    monkeypatch.setattr(onednn, "available", lambda: False)
    reference = _loss_curve()
    np.testing.assert_allclose(curve, reference, rtol=1e-3, atol=1e-5)
    assert reference[-1] < 0.5 * reference[0]  # it did learn


@needs_onednn
@pytest.mark.slow
def test_bfloat16_training_loss_curve_matches_lax(monkeypatch: pytest.MonkeyPatch):
    """The same in bfloat16 compute, where bf16 convs go to oneDNN (`bf16_fast`): the curves
    agree to bfloat16's precision."""
    if not onednn.bf16_fast():
        pytest.skip("bfloat16 convolutions stay on lax on this CPU")
    curve = _loss_curve(dtype=jnp.bfloat16)
    monkeypatch.setattr(onednn, "available", lambda: False)
    reference = _loss_curve(dtype=jnp.bfloat16)
    # Wide enough for bf16 rounding: lax's bf16 curve stays within a tenth of it of lax's f32 one.
    np.testing.assert_allclose(curve, reference, rtol=0.05, atol=0.02)
    assert reference[-1] < 0.5 * reference[0]


def _loss_curve(steps: int = 150, batch: int = 32, dtype=jnp.float32) -> np.ndarray:
    model = models.get("tiny20k", dropout_rate=0.0, dtype=dtype)  # no dropout key: deterministic
    rng = np.random.default_rng(0)
    # Learnable synthetic data: the label is which quadrant holds a bright blob.
    labels = rng.integers(0, 4, steps * batch)
    images = rng.uniform(0, 0.2, (steps * batch, 28, 28, 1)).astype(np.float32)
    for i, label in enumerate(labels):
        r, c = divmod(int(label), 2)
        images[i, 4 + 14 * r:10 + 14 * r, 4 + 14 * c:10 + 14 * c] = 1.0
    variables = model.init(jax.random.key(0), images[:1], train=False)
    tx = optax.adam(1e-3)
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

    @jax.jit
    def step(state, x, y):
        params, stats, opt = state

        def loss_fn(params):
            logits, new = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), y).mean(), new

        (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), new["batch_stats"], opt), loss

    losses = []
    for i in range(steps):
        sl = slice(i * batch, (i + 1) * batch)
        state, loss = step(state, images[sl], labels[sl])
        losses.append(float(loss))
    return np.array(losses)


@needs_onednn
def test_threads_follow_the_kernels_isa_the_conv_size_and_the_override(monkeypatch):
    """One OpenMP thread for a small conv (the ISA's threshold), every usable core for a large one
    outside shard_map, the environment's count when it sets one."""
    monkeypatch.delenv(onednn.THREADS_ENV, raising=False)
    if "ONEDNN_MAX_CPU_ISA" not in os.environ:  # which would cap the kernels below the CPU's
        with open("/proc/cpuinfo") as f:
            assert onednn.kernel_isa() == ("avx512" if " avx512f" in f.read() else "avx2")
    small = onednn.SMALL_FLOPS[onednn.kernel_isa()]
    cores = len(os.sched_getaffinity(0))
    assert onednn.threads(small / 2) == 1
    assert onednn.threads(small * 2) == cores
    monkeypatch.setenv(onednn.THREADS_ENV, "3")
    assert onednn.threads(small / 2) == 3

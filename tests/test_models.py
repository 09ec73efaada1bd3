"""Tests for the model zoo (mnist_jax.models).

CPU time is kept small: shape / dtype / parameter-count checks trace with `jax.eval_shape`
(no compilation); each model is compiled and run for real once per mode, with "rbg" keys because
threefry-based init compiles an order of magnitude slower on CPU.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import models
from mnist_jax.models import blocks

NAMES = models.names()
WITH_DROPOUT = {"deotte", "tiny20k", "baseline", "baseline_bn"}
WITHOUT_BN = {"baseline"}

# Trainable parameters counted by hand from each published layer list.
# Conv: k*k*in*out + out (bias); BatchNorm: 2*channels (scale, bias); Dense: in*out + out.
HAND_COUNTS = {
    "senet": (
        # Block 1: three 3x3 convs (128 filters), BN, SE with 128 // 32 = 4 hidden units, no bias.
        3*3*1*128 + 128 + 3*3*128*128 + 128 + 3*3*128*128 + 128 + 2*128 + 128*4 + 4*128
        # Block 2 (then 28 -> 14 average pool), same layers with 128 input channels.
        + 3*3*128*128 + 128 + 3*3*128*128 + 128 + 3*3*128*128 + 128 + 2*128 + 128*4 + 4*128
        # Block 3 (then 14 -> 7 average pool).
        + 3*3*128*128 + 128 + 3*3*128*128 + 128 + 3*3*128*128 + 128 + 2*128 + 128*4 + 4*128
        + (128 + 128)*10 + 10  # head on concat(global max, global avg)
    ),
    "deotte": (
        3*3*1*32 + 32 + 2*32  # conv32(3) 28 -> 26, BN
        + 3*3*32*32 + 32 + 2*32  # conv32(3) 26 -> 24, BN
        + 5*5*32*32 + 32 + 2*32  # conv32(5, stride 2, same) 24 -> 12, BN
        + 3*3*32*64 + 64 + 2*64  # conv64(3) 12 -> 10, BN
        + 3*3*64*64 + 64 + 2*64  # conv64(3) 10 -> 8, BN
        + 5*5*64*64 + 64 + 2*64  # conv64(5, stride 2, same) 8 -> 4, BN
        + 4*4*64*128 + 128 + 2*128  # conv128(4) 4 -> 1, BN
        + 1*1*128*10 + 10  # head
    ),
    "tiny20k": (
        3*3*1*8 + 8 + 2*8  # conv 1 -> 8, BN; pool 28 -> 14
        + 3*3*8*16 + 16 + 2*16  # conv 8 -> 16, BN; pool 14 -> 7
        + 3*3*16*32 + 32 + 2*32  # conv 16 -> 32, BN; pool 7 -> 3
        + 3*3*32*32 + 32  # FC 288 -> 32
        + 32*10 + 10  # head
    ),
    "resnet_committee": (
        5*5*1*128 + 128  # conv 1 -> 128
        + 2*128 + 3*3*128*128 + 128  # Res(128): BN, conv; pool 28 -> 14
        + 2*128 + 3*3*128*128 + 128  # Res(128)
        + 2*128  # BN
        + 3*3*128*256 + 256  # conv 128 -> 256; pool 14 -> 7
        + 2*256 + 3*3*256*256 + 256  # Res(256)
        + 2*256  # BN
        + 3*3*256*512 + 512  # conv 256 -> 512; ceil pool 7 -> 4
        + 2*512 + 3*3*512*512 + 512  # Res(512)
        + 2*512  # BN; AvgPool 4 -> 1x1
        + 512*10 + 10  # head
    ),
    "baseline": (
        3*3*1*32 + 32  # conv32(3) same
        + 3*3*32*64 + 64  # conv64(3) same; pool 28 -> 14
        + 14*14*64*128 + 128  # Dense128
        + 128*10 + 10  # head
    ),
    "baseline_bn": (
        3*3*1*32 + 32 + 3*3*32*64 + 64 + 14*14*64*128 + 128
        + 2*128  # BN after Dense128
        + 128*10 + 10
    ),
    "simple_m3": (  # bias-free 3x3 valid convs, each + BN: 28 -> 8
        3*3*1*32 + 2*32 + 3*3*32*48 + 2*48 + 3*3*48*64 + 2*64 + 3*3*64*80 + 2*80
        + 3*3*80*96 + 2*96 + 3*3*96*112 + 2*112 + 3*3*112*128 + 2*128
        + 3*3*128*144 + 2*144 + 3*3*144*160 + 2*160 + 3*3*160*176 + 2*176
        + 8*8*176*10 + 2*10  # head (no bias), BN on logits
    ),
    "simple_m5": (  # bias-free 5x5 valid convs, each + BN: 28 -> 8
        5*5*1*32 + 2*32 + 5*5*32*64 + 2*64 + 5*5*64*96 + 2*96 + 5*5*96*128 + 2*128
        + 5*5*128*160 + 2*160
        + 8*8*160*10 + 2*10
    ),
    "simple_m7": (  # bias-free 7x7 valid convs, each + BN: 28 -> 4
        7*7*1*48 + 2*48 + 7*7*48*96 + 2*96 + 7*7*96*144 + 2*144 + 7*7*144*192 + 2*192
        + 4*4*192*10 + 2*10
    ),
}


def _key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def _images(batch: int, size: int = 28, seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (batch, size, size, 1))


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _abstract_init(model: nn.Module, x: jax.Array):
    return jax.eval_shape(
        lambda: model.init({"params": _key(0), "dropout": _key(1)}, x, train=False))


@functools.cache
def _compiled(name: str, dtype=jnp.float32):
    """(variables, apply(variables, x, key, train)) for one model, each compiled once."""
    model = models.get(name, dtype=dtype)
    init = jax.jit(lambda key, x: model.init({"params": key, "dropout": key}, x, train=False))
    variables = init(_key(0), _images(1))

    @functools.partial(jax.jit, static_argnames="train")
    def apply(variables, x, key, train):
        return model.apply(variables, x, train=train, rngs={"dropout": key},
                           mutable=["batch_stats"])

    return variables, apply


def test_registry_lists_every_model():
    assert set(NAMES) == set(HAND_COUNTS)


@pytest.mark.parametrize("name", NAMES)
def test_param_count_matches_layer_list(name):
    params = _abstract_init(models.get(name), _images(1))["params"]
    assert _count(params) == HAND_COUNTS[name]


def test_tiny20k_has_exactly_15578_params():
    assert _count(_abstract_init(models.get("tiny20k"), _images(1))["params"]) == 15_578


@pytest.mark.parametrize("name", NAMES)
def test_head_and_collections(name):
    variables = _abstract_init(models.get(name), _images(1))
    assert "kernel" in variables["params"]["head"]
    assert ("batch_stats" in variables) == (name not in WITHOUT_BN)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_output_shape_and_dtype(name, dtype):
    model = models.get(name, dtype=dtype)
    variables = _abstract_init(model, _images(1))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    for batch in (1, 7):
        for train in (False, True):
            logits, _ = jax.eval_shape(
                lambda v, x: model.apply(v, x, train=train, rngs={"dropout": _key(2)},
                                         mutable=["batch_stats"]),
                variables, _images(batch))
            assert (logits.shape, logits.dtype) == ((batch, 10), jnp.float32), (batch, train)


@pytest.mark.parametrize("name", NAMES)
def test_num_classes_and_other_input_sizes(name):
    model = models.get(name, num_classes=3)
    x = jnp.zeros((2, 36, 32, 1))
    variables = _abstract_init(model, x)
    logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert logits.shape == (2, 3)


@pytest.mark.parametrize("name", NAMES)
def test_real_forward_modes(name):
    variables, apply = _compiled(name)
    x = _images(7, seed=3)
    eval_a, eval_stats = apply(variables, x, _key(10), train=False)
    eval_b, _ = apply(variables, x, _key(11), train=False)
    train_a, train_stats = apply(variables, x, _key(10), train=True)
    train_b, _ = apply(variables, x, _key(11), train=True)

    assert eval_a.shape == (7, 10) and eval_a.dtype == jnp.float32
    assert np.isfinite(eval_a).all() and np.isfinite(train_a).all()
    np.testing.assert_array_equal(eval_a, eval_b)  # Eval ignores the dropout rng.
    if name in WITH_DROPOUT:
        assert not np.allclose(train_a, train_b)
    else:
        np.testing.assert_array_equal(train_a, train_b)
    if name not in WITHOUT_BN:
        old = jax.tree.leaves(variables["batch_stats"])
        assert all(np.array_equal(a, b) for a, b in zip(old, jax.tree.leaves(eval_stats)))
        assert all(not np.allclose(a, b) for a, b in zip(old, jax.tree.leaves(train_stats)))


@pytest.mark.parametrize("name", ["tiny20k", "simple_m7"])
def test_real_bfloat16_forward(name):
    variables, apply = _compiled(name, jnp.bfloat16)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    logits, stats = apply(variables, _images(7), _key(1), train=True)
    assert logits.dtype == jnp.float32 and np.isfinite(logits).all()
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(stats))


def test_model_normalises_its_own_input():
    variables, _ = _compiled("tiny20k")
    x = _images(3)
    raw = models.get("tiny20k", input_mean=0.0, input_std=1.0)
    own = models.get("tiny20k")  # mean 0.1307, std 0.3081
    expected = raw.apply(variables, (x - 0.1307) / 0.3081, train=False)
    np.testing.assert_allclose(own.apply(variables, x, train=False), expected, rtol=1e-4,
                               atol=1e-5)


def test_squeeze_excite_is_a_per_channel_gate():
    se = blocks.SqueezeExcite(ratio=4)
    x = jax.random.uniform(_key(0), (2, 5, 5, 8), minval=0.5, maxval=2.0)
    params = se.init(_key(1), x)
    gate = se.apply(params, x) / x
    # One gate value per (image, channel), shared by every pixel, strictly inside (0, 1).
    np.testing.assert_allclose(gate, np.broadcast_to(gate[:, :1, :1, :], gate.shape), rtol=1e-5)
    assert ((gate > 0) & (gate < 1)).all()


def test_res_block_with_zero_conv_is_batch_norm():
    block = blocks.ResBlock()
    x = jax.random.normal(_key(0), (4, 6, 6, 8)) * 3 + 1
    variables = block.init(_key(1), x, train=False)
    params = jax.tree.map(jnp.zeros_like, variables["params"]["Conv_0"])
    variables = {**variables, "params": {**variables["params"], "Conv_0": params}}
    out, _ = block.apply(variables, x, train=True, mutable=["batch_stats"])
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: senet, deotte"):
        models.get("lenet")


@pytest.mark.parametrize("overrides, problem", [
    ({"filterz": 64}, "has no field 'filterz'"),
    ({"filters": "64"}, "'filters' must be positive int"),
    ({"filters": 0}, "'filters' must be positive int"),
    ({"input_std": None}, "'input_std' must be float"),
    ({"dtype": "int32"}, "'dtype' must be a float dtype"),
    ({"param_dtype": jnp.bfloat16}, "'param_dtype' must be float32"),
])
def test_bad_override_lists_valid_fields(overrides, problem):
    with pytest.raises(ValueError, match=problem) as err:
        models.get("senet", **overrides)
    assert "valid fields: num_classes: positive int, filters: positive int" in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_are_converted():
    model = models.get("simple_m5", features=[8, 8], input_mean=0, dtype="bfloat16")
    assert model.features == (8, 8) and model.kernel_size == 5
    assert isinstance(model.input_mean, float) and model.dtype == jnp.bfloat16
    assert models.get("baseline_bn").batch_norm and not models.get("baseline").batch_norm


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_gives_one_line_error(name):
    model = models.get(name)
    init = functools.partial(model.init, {"params": _key(0), "dropout": _key(1)}, train=False)
    for x, problem in [(jnp.zeros((2, 28, 28)), "rank 4"),
                       (jnp.zeros((2, 28, 28, 1), jnp.uint8), "float pixels"),
                       (jnp.zeros((2, 1, 1, 1)), "at least")]:
        with pytest.raises(ValueError, match=problem) as err:
            init(x)
        assert "\n" not in str(err.value)

"""Behaviour of mnist_jax.augment: geometry conventions, randomness, jit/vmap, config checks."""

import jax
import ml_collections
import numpy as np
import pytest

from mnist_jax import augment

H = W = 28


def _random_images(batch=8, height=H, width=W, seed=0):
    return np.random.default_rng(seed).random((batch, height, width, 1), dtype=np.float32)


def _blob(batch=8, centre=(13.5, 13.5), sigma=3.0):
    """Smooth Gaussian blobs: bilinear resampling is nearly exact on them."""
    r, c = np.mgrid[:H, :W]
    blob = np.exp(-((r - centre[0]) ** 2 + (c - centre[1]) ** 2) / (2 * sigma ** 2))
    return np.broadcast_to(blob[None, :, :, None], (batch, H, W, 1)).astype(np.float32)


def _ramp(batch=8, axis=0):
    """position / (size - 1) along `axis` (0 rows, 1 cols): bilinear reproduces it exactly."""
    r, c = np.mgrid[:H, :W].astype(np.float32)
    ramp = (r if axis == 0 else c) / (H - 1)
    return np.broadcast_to(ramp[None, :, :, None], (batch, H, W, 1)).copy()


def _centre_of_mass(images):
    x = np.asarray(images)[..., 0]
    r, c = np.mgrid[:x.shape[1], :x.shape[2]]
    m = x.sum((1, 2))
    return np.stack([(x * r).sum((1, 2)) / m, (x * c).sum((1, 2)) / m], -1)


def _config(**overrides):
    cfg = augment.default_config()
    cfg.update(overrides)
    return cfg


ALL_ON = dict(rotation=15.0, shift=0.1, shear=10.0, zoom=0.1, elastic_alpha=34.0,
              elastic_sigma=4.0, crop=25)


def test_identity_parameters_give_the_identity():
    x = _random_images()
    key = jax.random.key(0)
    np.testing.assert_allclose(augment.affine(x, np.eye(3)), x, atol=1e-6, rtol=0)
    np.testing.assert_allclose(augment.affine(x, np.eye(2, 3)), x, atol=1e-6, rtol=0)
    np.testing.assert_allclose(augment.random_affine(key, x), x, atol=1e-6, rtol=0)
    np.testing.assert_allclose(augment.elastic(key, x, alpha=0.0, sigma=4.0), x, atol=1e-6, rtol=0)
    np.testing.assert_allclose(augment.center_crop_resize(x, size=H), x, atol=1e-6, rtol=0)
    assert augment.build(augment.default_config())(key, x) is x


@pytest.mark.parametrize("size", [9, 8])  # odd and even: the centre is a pixel or a corner.
def test_rotation_by_90_degrees_is_counter_clockwise_like_rot90(size):
    x = np.zeros((1, size, size, 1), np.float32)
    x[0, 1:size - 1, 2, 0] = 1.0  # An "L": a vertical bar with a foot, asymmetric under rotation.
    x[0, size - 2, 2:size - 2, 0] = 0.5
    for degrees, k in ((90.0, 1), (-90.0, -1), (180.0, 2)):
        out = augment.affine(x, augment.affine_matrix(rotation=degrees))
        np.testing.assert_allclose(out, np.rot90(x, k, axes=(1, 2)), atol=1e-5, rtol=0)


def test_integer_shift_equals_roll_with_zero_fill():
    x = _random_images()
    out = augment.affine(x, augment.affine_matrix(shift=(2.0, -3.0)))
    expected = np.roll(x, (2, -3), axis=(1, 2))
    expected[:, :2] = 0.0
    expected[:, :, -3:] = 0.0
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)


def test_fill_reads_outside_the_image():
    x = np.zeros((8, H, W, 1), np.float32)
    out = np.asarray(augment.affine(x, augment.affine_matrix(shift=(5.0, 0.0)), fill=1.0))
    assert (out[:, :5] == 1.0).all() and (out[:, 5:] == 0.0).all()


def test_shift_is_a_fraction_of_the_image_size_drawn_per_axis():
    x = _blob(batch=32, sigma=1.5)
    moved = _centre_of_mass(augment.random_affine(jax.random.key(1), x, shift=0.25))
    delta = moved - _centre_of_mass(x)
    assert np.abs(delta).max() <= 0.25 * H + 0.1
    assert (np.abs(delta) > 5.0).any(axis=0).all()  # Both axes use most of the +-7 px range.
    assert abs(np.corrcoef(delta.T)[0, 1]) < 0.5  # Independent draws per axis.


def test_zoom_above_one_shrinks_the_content_like_keras():
    x = np.zeros((8, H, W, 1), np.float32)
    x[:, 6:22, 6:22] = 1.0  # A centred 16 x 16 square.
    out = np.asarray(augment.affine(x, augment.affine_matrix(zoom=(2.0, 2.0))))
    assert out.sum() == pytest.approx(x.sum() / 4, rel=0.05)
    np.testing.assert_allclose(_centre_of_mass(out), _centre_of_mass(x), atol=1e-3)


def test_outputs_stay_in_unit_range():
    key = jax.random.key(2)
    for x in (np.ones((8, H, W, 1), np.float32), _random_images()):
        for out in (augment.build(_config(**ALL_ON))(key, x),
                    augment.random_affine(key, x, rotation=30.0, shift=0.2, shear=20.0, zoom=0.3),
                    augment.elastic(key, x, alpha=60.0, sigma=3.0),
                    augment.random_crop_resize(key, x, size=20)):
            out = np.asarray(out)
            assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0


def test_same_key_same_output_different_key_different_output():
    fn = jax.jit(augment.build(_config(**ALL_ON)))
    x = _random_images()
    a, b = fn(jax.random.key(3), x), fn(jax.random.key(3), x)
    c = fn(jax.random.key(4), x)
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 0.1


@pytest.mark.parametrize("fn", [
    lambda k, x: augment.random_affine(k, x, rotation=20.0),
    lambda k, x: augment.random_affine(k, x, zoom=0.2),
    lambda k, x: augment.elastic(k, x, alpha=34.0, sigma=4.0),
    lambda k, x: augment.random_crop_resize(k, x, size=20),
    augment.build(_config(**ALL_ON)),
], ids=["rotation", "zoom", "elastic", "crop", "build"])
def test_each_image_in_a_batch_gets_its_own_draw(fn):
    x = _blob(centre=(12.0, 15.0))
    out = np.asarray(fn(jax.random.key(5), x)).reshape(8, -1)
    gaps = np.abs(out[:, None] - out[None]).max(-1)
    assert (gaps[~np.eye(8, dtype=bool)] > 1e-3).all()


def test_works_under_jit_and_vmap_over_members():
    fn = augment.build(_config(**ALL_ON))
    keys = jax.random.split(jax.random.key(6), 3)
    x = np.stack([_random_images(seed=s) for s in range(3)])  # [members, B, H, W, C].
    batched = jax.jit(jax.vmap(fn))(keys, x)
    assert batched.shape == x.shape
    for m in range(3):
        np.testing.assert_allclose(batched[m], fn(keys[m], x[m]), atol=1e-5)
    assert np.abs(np.asarray(batched[0]) - np.asarray(batched[1])).max() > 0.1


def test_elastic_field_is_smooth_with_simard_magnitude():
    # On a column ramp the output is (col + dcol) / (W - 1): the displacement can be read back.
    x = _ramp(batch=32, axis=1)
    alpha, sigma = 34.0, 4.0
    out = np.asarray(augment.elastic(jax.random.key(7), x, alpha=alpha, sigma=sigma))
    dcol = (out - x)[:, 8:20, 8:20, 0] * (W - 1)  # Interior: no clipping at the image edges.
    taps = np.exp(-0.5 * (np.arange(-16, 17) / sigma) ** 2)
    taps /= taps.sum()
    expected_rms = alpha * np.sqrt(1 / 3) * (taps ** 2).sum()  # Blurred U[-1, 1] noise, 2-D.
    rms = np.sqrt((dcol ** 2).mean())
    assert 0.75 * expected_rms < rms < 1.25 * expected_rms
    assert np.abs(np.diff(dcol, axis=2)).mean() < 0.3 * rms  # Smooth, not per-pixel jitter.


def test_center_crop_is_an_exactly_centred_zoom():
    x = _ramp(axis=0)
    out = np.asarray(augment.center_crop_resize(x, size=25))[0, :, 0, 0] * (H - 1)
    np.testing.assert_allclose(out, np.linspace(1.5, 25.5, H), atol=1e-4)


def test_random_crop_offsets_are_integers_in_range_and_differ():
    x = _ramp(batch=32, axis=0)
    out = np.asarray(augment.random_crop_resize(jax.random.key(8), x, size=20))
    top = out[:, 0, 0, 0] * (H - 1)  # The first output row reads the crop's first row.
    np.testing.assert_allclose(top, np.round(top), atol=1e-4)
    np.testing.assert_allclose(out[:, -1, 0, 0] * (H - 1), top + 19, atol=1e-4)
    assert top.min() >= 0 and top.max() <= H - 20 and len(np.unique(np.round(top))) > 4


def test_test_time_build_crops_the_centre_and_keeps_the_rest_random():
    x = _random_images()
    crop_only = augment.build(_config(crop=25), test_time=True)
    expected = augment.center_crop_resize(x, size=25)
    for seed in (0, 1):
        np.testing.assert_allclose(crop_only(jax.random.key(seed), x), expected, atol=1e-6)
    train = augment.build(_config(crop=25))
    assert np.abs(np.asarray(train(jax.random.key(0), x)) -
                  np.asarray(train(jax.random.key(1), x))).max() > 0.1
    rotating = augment.build(_config(crop=25, rotation=20.0), test_time=True)
    assert np.abs(np.asarray(rotating(jax.random.key(0), x)) -
                  np.asarray(rotating(jax.random.key(1), x))).max() > 0.1


def test_eval_view_is_the_centre_crop_of_a_cropping_config_and_nothing_otherwise():
    x = _random_images()
    view = augment.eval_view(_config(crop=25, rotation=10.0, elastic_alpha=34.0))
    np.testing.assert_array_equal(view(jax.random.key(0), x), augment.center_crop_resize(x, size=25))
    assert augment.eval_view(_config(rotation=10.0, elastic_alpha=34.0)) is None


def test_build_applies_the_affine_before_the_crop():
    # One composed resampling must match the two steps in order: shift, then zoom-in crop.
    x = _blob(sigma=3.0)
    key = jax.random.key(9)
    out = augment.build(_config(shift=0.25, crop=14), test_time=True)(key, x)
    shifted = augment.random_affine(jax.random.split(key, 3)[1], x, shift=0.25)
    in_order = augment.center_crop_resize(shifted, size=14)
    np.testing.assert_allclose(out, in_order, atol=0.06)  # Wrong order: > 0.25.
    np.testing.assert_allclose(_centre_of_mass(out), _centre_of_mass(in_order), atol=0.1)


def test_build_applies_elastic_before_the_affine():
    x = _blob(sigma=3.0)
    key = jax.random.key(10)
    k_elastic, k_affine, _ = jax.random.split(key, 3)
    out = augment.build(_config(elastic_alpha=34.0, elastic_sigma=4.0, rotation=30.0))(key, x)
    in_order = augment.random_affine(k_affine, augment.elastic(k_elastic, x, alpha=34.0, sigma=4.0),
                                     rotation=30.0)
    np.testing.assert_allclose(out, in_order, atol=0.06)  # Wrong order: > 0.25.


@pytest.mark.parametrize("overrides, field", [
    (dict(rotaton=10.0), "rotaton"),
    (dict(rotation=-1.0), "rotation"),
    (dict(elastic_alpha=-5.0), "elastic_alpha"),
    (dict(zoom=1.0), "zoom"),
    (dict(shear=90.0), "shear"),
    (dict(crop="25"), "crop"),
    (dict(elastic_alpha=34.0, elastic_sigma=0.0), "elastic_sigma"),
])
def test_build_refuses_bad_configs_with_one_clear_line(overrides, field):
    cfg = ml_collections.ConfigDict({**augment.default_config().to_dict(), **overrides})
    with pytest.raises(ValueError, match=field) as err:
        augment.build(cfg)
    assert "\n" not in str(err.value)
    if field in ("rotaton", "rotation", "elastic_alpha", "crop"):
        assert "valid fields: rotation, shift, shear, zoom" in str(err.value)


def test_bad_inputs_fail_with_clear_errors():
    x = _random_images()
    with pytest.raises(ValueError, match="crop size must be an int in \\[1, 28\\]"):
        augment.build(_config(crop=30))(jax.random.key(0), x)
    with pytest.raises(ValueError, match="float \\[B, H, W, C\\]"):
        augment.random_affine(jax.random.key(0), (x * 255).astype(np.uint8), rotation=10.0)
    with pytest.raises(ValueError, match="float \\[B, H, W, C\\]"):
        augment.elastic(jax.random.key(0), x[0], alpha=1.0, sigma=4.0)
    with pytest.raises(ValueError, match="matrices must be"):
        augment.affine(x, np.eye(3)[None].repeat(3, 0))
    with pytest.raises(ValueError, match="zoom must be in"):
        augment.random_affine(jax.random.key(0), x, zoom=1.5)
    with pytest.raises(ValueError, match="sigma must be a positive number"):
        augment.elastic(jax.random.key(0), x, alpha=1.0, sigma=0.0)

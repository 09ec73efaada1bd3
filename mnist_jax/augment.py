"""On-device data augmentation: pure, jit- and vmap-able functions of (key, images).

Images are float32 [B, H, W, C] in [0, 1]; every image in a batch gets its own random draw.
Geometry uses array-index coordinates (row, col), as `scipy.ndimage` does, and inverse maps
about the image centre: an output pixel at p samples the input at `A @ (p - centre) + centre`.
Everything that moves pixels goes through one bilinear gather (`_bilinear`): on CPU at B=128,
28x28 it measured 10-30 % faster than vmapped `jax.scipy.ndimage.map_coordinates(order=1)`, and it
samples all channels of a batch at once. Pixels from outside the image read `fill` (0 = MNIST
background).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral, Real

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]

# Fields of the `augment` config section; 0 switches an augmentation off.
_FLOAT_FIELDS = ("rotation", "shift", "shear", "zoom", "elastic_alpha", "elastic_sigma")
_INT_FIELDS = ("crop",)
_FIELDS = _FLOAT_FIELDS + _INT_FIELDS


def default_config() -> ml_collections.ConfigDict:
    """Every augmentation off; configs override the fields they use."""
    return ml_collections.ConfigDict({
        "rotation": 0.0,  # degrees, uniform in +-rotation.
        "shift": 0.0,  # fraction of the image size, uniform in +-shift, per axis.
        "shear": 0.0,  # degrees, uniform in +-shear.
        "zoom": 0.0,  # Keras zoom_range: per-axis scale uniform in [1 - zoom, 1 + zoom].
        "elastic_alpha": 0.0,  # Simard elastic distortion strength in pixels; 0 = off.
        "elastic_sigma": 4.0,  # its smoothing std in pixels.
        "crop": 0,  # random crop x crop resized back (centre crop at test time); 0 = off.
    })


def build(cfg: ml_collections.ConfigDict, *, test_time: bool = False,
          swept: tuple[str, ...] = ()) -> AugmentFn:
    """Return `augment_fn(key, images, values=None) -> images` for a config section (see
    `default_config`). `values` replaces fields by traced per-member scalars (a sweep's; the
    `swept` fields count as on, whatever the section says).

    Applied in the order elastic, affine, crop, but composed into one map of output pixels to
    input positions and sampled once: one interpolation (blur), one gather. (Chaining `elastic`
    and `affine` in one jit measured several times slower on CPU: XLA fuses the first gather
    into the second and recomputes it per corner.) `key` is split into (elastic, affine, crop)
    keys. With `test_time` the random crop becomes the centre crop; the rest stays random.
    """
    static = _validated(cfg)
    on = {f: bool(static[f]) or f in swept for f in _FIELDS}
    affine_on = any(on[f] for f in ("rotation", "shift", "shear", "zoom"))
    if not (affine_on or on["elastic_alpha"] or on["crop"]):
        return lambda key, images, values=None: images

    def augment_fn(key: jax.Array, images: jax.Array, values: dict | None = None) -> jax.Array:
        c = {**static, **(values or {})}
        _check_images(images)
        k_elastic, k_affine, k_crop = jax.random.split(key, 3)
        batch, height, width = images.shape[:3]
        matrix = None
        if affine_on:
            matrix = _random_affine_matrices(k_affine, batch, height, width, rotation=c["rotation"],
                                             shift=c["shift"], shear=c["shear"], zoom=c["zoom"])
        if c["crop"]:
            crop = (_center_crop_matrix(height, width, c["crop"]) if test_time
                    else _random_crop_matrices(k_crop, batch, height, width, c["crop"]))
            matrix = crop if matrix is None else matrix @ crop  # inverse maps: crop runs first.
        coords = (_grid(height, width) if matrix is None else
                  _affine_coords(jnp.broadcast_to(matrix, (batch, 3, 3)), height, width))
        if on["elastic_alpha"]:
            field = _elastic_field(k_elastic, batch, height, width, c["elastic_alpha"],
                                   c["elastic_sigma"])
            # The elastic warp comes first, so its displacement is read where the later maps land.
            coords = coords + (field if matrix is None else _bilinear(field, coords, 0.0))
        return _resample(images, coords, 0.0)

    return augment_fn


def moves_pixels(cfg: ml_collections.ConfigDict) -> bool:
    """Whether the section changes images at all (else `build` is the identity, and a
    test-time-augmented pass is the plain one)."""
    static = _validated(cfg)
    return any(static[f] for f in ("rotation", "shift", "shear", "zoom", "elastic_alpha", "crop"))


def eval_view(cfg: ml_collections.ConfigDict) -> AugmentFn | None:
    """What a model trained with `cfg` is evaluated on (without TTA): the centre crop resized back
    when training crops, since every training image was a zoomed-in crop; else the image as it is
    (None)."""
    size = _validated(cfg)["crop"]
    if not size:
        return None
    return lambda key, images: center_crop_resize(images, size=size)


def affine(images: jax.Array, matrices: jax.Array | np.ndarray, *, fill: float = 0.0) -> jax.Array:
    """Resample each image through its inverse-map affine matrix about the image centre.

    `matrices` is [B, 2, 3] or [B, 3, 3] (or one [2, 3] / [3, 3] for the whole batch) in
    (row, col) coordinates: output pixel p reads the input at
    `M[:2, :2] @ (p - centre) + M[:2, 2] + centre`.
    See `affine_matrix` for rotation / shift / shear / zoom in these terms.
    """
    _check_images(images)
    _check_fill(fill)
    matrices = jnp.asarray(matrices, jnp.float32)
    if matrices.shape[-2:] not in ((2, 3), (3, 3)) or matrices.ndim not in (2, 3) or (
            matrices.ndim == 3 and matrices.shape[0] != images.shape[0]):
        raise ValueError(f"affine: matrices must be [{images.shape[0]}, 2|3, 3] or [2|3, 3] for "
                         f"images {tuple(images.shape)}, got {tuple(matrices.shape)}")
    batch, height, width = images.shape[:3]
    coords = _affine_coords(jnp.broadcast_to(matrices[..., :2, :], (batch, 2, 3)), height, width)
    return _resample(images, coords, fill)


def affine_matrix(*, rotation: jax.typing.ArrayLike = 0.0, shift: tuple = (0.0, 0.0),
                  shear: jax.typing.ArrayLike = 0.0, zoom: tuple = (1.0, 1.0)) -> jax.Array:
    """The [..., 3, 3] inverse map for `affine`, composed as Keras' ImageDataGenerator does.

    rotation: degrees, positive turns the content counter-clockwise as displayed (np.rot90).
    shift: (rows, cols) pixels, positive moves the content down / right (np.roll).
    shear: degrees, Keras' shear matrix [[1, -sin], [0, cos]].
    zoom: (rows, cols) Keras zoom factors; they scale the sampling grid, so > 1 shrinks the content.
    Arguments broadcast, so batched parameters give one matrix per image.
    """
    theta, phi = jnp.deg2rad(jnp.asarray(rotation)), jnp.deg2rad(jnp.asarray(shear))
    dy, dx = jnp.asarray(shift[0]), jnp.asarray(shift[1])
    zy, zx = jnp.asarray(zoom[0]), jnp.asarray(zoom[1])
    zero, one = jnp.zeros_like(theta), jnp.ones_like(theta)
    def mat(*rows):
        return jnp.stack([jnp.stack(jnp.broadcast_arrays(*r), -1) for r in rows], -2)
    rot = mat((jnp.cos(theta), jnp.sin(theta), zero), (-jnp.sin(theta), jnp.cos(theta), zero),
              (zero, zero, one))
    move = mat((one, zero, -dy), (zero, one, -dx), (zero, zero, one))
    skew = mat((one, -jnp.sin(phi), zero), (zero, jnp.cos(phi), zero), (zero, zero, one))
    scale = mat((zy, zero, zero), (zero, zx, zero), (zero, zero, one))
    return (rot @ move @ skew @ scale).astype(jnp.float32)


def random_affine(key: jax.Array, images: jax.Array, *, rotation: float = 0.0, shift: float = 0.0,
                  shear: float = 0.0, zoom: float = 0.0) -> jax.Array:
    """Random rotation / shift / shear / zoom per image, with Keras ImageDataGenerator ranges.

    rotation, shear: degrees, uniform in +-; shift: fraction of H (rows) and W (cols), each
    uniform in +-; zoom: per-axis factors uniform in [1 - zoom, 1 + zoom] (see `affine_matrix`).
    """
    _check_images(images)
    batch, height, width = images.shape[:3]
    matrices = _random_affine_matrices(key, batch, height, width, rotation=rotation, shift=shift,
                                       shear=shear, zoom=zoom)
    return affine(images, matrices)


def elastic(key: jax.Array, images: jax.Array, *, alpha: float, sigma: float) -> jax.Array:
    """Simard et al. (2003) elastic distortion: a smooth random displacement field per image.

    Per-pixel displacements uniform in [-1, 1] are smoothed by a Gaussian of std `sigma` pixels
    (zero-padded, as the usual scipy `gaussian_filter(mode="constant")` recipe) and scaled by
    `alpha` pixels; the image is then resampled bilinearly at the displaced positions.
    """
    _check_images(images)
    batch, height, width = images.shape[:3]
    field = _elastic_field(key, batch, height, width, alpha, sigma)
    return _resample(images, _grid(height, width) + field, 0.0)


def random_crop_resize(key: jax.Array, images: jax.Array, *, size: int) -> jax.Array:
    """A random size x size crop per image (integer offset), resized back to H x W bilinearly."""
    _check_images(images)
    batch, height, width = images.shape[:3]
    return affine(images, _random_crop_matrices(key, batch, height, width, size))


def center_crop_resize(images: jax.Array, *, size: int) -> jax.Array:
    """The centred size x size window resized back to H x W: the test-time twin of the random crop.

    The window is centred exactly (a half-pixel offset when H - size is odd), so this is a pure
    zoom about the centre; size == H is the identity.
    """
    _check_images(images)
    return affine(images, _center_crop_matrix(images.shape[1], images.shape[2], size))


def gaussian_blur(images: jax.Array, *, sigma: float) -> jax.Array:
    """Each image blurred by a Gaussian of std `sigma` pixels, zero-padded (the background fills
    in from outside) and truncated at 4 sigma, as scipy's `gaussian_filter(mode="constant")`."""
    _check_images(images)
    if isinstance(sigma, bool) or not isinstance(sigma, Real) or not sigma > 0:
        raise ValueError(f"gaussian_blur: sigma must be a positive number (pixels), got {sigma!r}")
    return jnp.clip(_smooth(images, sigma), 0.0, 1.0).astype(images.dtype)


def _affine_coords(matrices: jax.Array, height: int, width: int) -> jax.Array:
    """[B, H, W, 2] input (row, col) positions read by each output pixel, from [B, 2|3, 3] maps."""
    centre = jnp.array([(height - 1) / 2, (width - 1) / 2], jnp.float32)
    coords = jnp.einsum("bij,hwj->bhwi", matrices[:, :2, :2], _grid(height, width) - centre)
    return coords + matrices[:, None, None, :2, 2] + centre


def _elastic_field(key: jax.Array, batch: int, height: int, width: int, alpha: float,
                   sigma: float) -> jax.Array:
    """[B, H, W, 2] smooth random displacements in pixels (Simard's recipe, see `elastic`)."""
    _check_range("elastic alpha", alpha, 0.0, math.inf)
    if isinstance(sigma, bool) or not isinstance(sigma, Real) or not sigma > 0:
        raise ValueError(f"elastic: sigma must be a positive number (pixels), got {sigma!r}")
    noise = jax.random.uniform(key, (batch, height, width, 2), jnp.float32, -1.0, 1.0)
    return _smooth(noise, sigma) * alpha


def _smooth(values: jax.Array, sigma: float) -> jax.Array:
    """values [B, H, W, C] blurred per channel by a zero-padded Gaussian of std `sigma` pixels:
    the separable blur as two banded matrix products, exact and cheap at 28x28."""
    return jnp.einsum("ij,bjkd,lk->bild", _gaussian_matrix(values.shape[1], sigma), values,
                      _gaussian_matrix(values.shape[2], sigma))


def _random_affine_matrices(key: jax.Array, batch: int, height: int, width: int, *,
                            rotation: float, shift: float, shear: float, zoom: float) -> jax.Array:
    """One uniform [-1, 1] draw per image and parameter, scaled into the Keras ranges."""
    _check_range("rotation", rotation, 0.0, math.inf)
    _check_range("shift", shift, 0.0, math.inf)
    _check_range("shear", shear, 0.0, 90.0, hi_open=True)
    _check_range("zoom", zoom, 0.0, 1.0, hi_open=True)
    u = jax.random.uniform(key, (6, batch), jnp.float32, -1.0, 1.0)
    return affine_matrix(rotation=rotation * u[0],
                         shift=(shift * height * u[1], shift * width * u[2]),
                         shear=shear * u[3], zoom=(1.0 + zoom * u[4], 1.0 + zoom * u[5]))


def _crop_matrices(height: int, width: int, size: int, top: jax.Array,
                   left: jax.Array) -> jax.Array:
    """Inverse maps taking the output grid onto the crop window whose corner is (top, left).

    Corner pixels map onto the window's corner pixels (align-corners), so no sample falls outside
    the window and no fill bleeds in.
    """
    sy, sx = (size - 1) / max(height - 1, 1), (size - 1) / max(width - 1, 1)
    ty = top + (size - 1) / 2 - (height - 1) / 2  # window centre minus image centre.
    tx = left + (size - 1) / 2 - (width - 1) / 2
    zero, one = jnp.zeros_like(ty), jnp.ones_like(ty)
    rows = [jnp.stack([sy * one, zero, ty], -1), jnp.stack([zero, sx * one, tx], -1),
            jnp.stack([zero, zero, one], -1)]
    return jnp.stack(rows, -2).astype(jnp.float32)


def _random_crop_matrices(key: jax.Array, batch: int, height: int, width: int,
                          size: int) -> jax.Array:
    _check_crop(size, height, width)
    k_top, k_left = jax.random.split(key)
    top = jax.random.randint(k_top, (batch,), 0, height - size + 1).astype(jnp.float32)
    left = jax.random.randint(k_left, (batch,), 0, width - size + 1).astype(jnp.float32)
    return _crop_matrices(height, width, size, top, left)


def _center_crop_matrix(height: int, width: int, size: int) -> jax.Array:
    _check_crop(size, height, width)
    return _crop_matrices(height, width, size, jnp.float32((height - size) / 2),
                          jnp.float32((width - size) / 2))


def _resample(images: jax.Array, coords: jax.Array, fill: float) -> jax.Array:
    """Images read at coords [B, H', W', 2], clipped to [0, 1] so float rounding in the
    bilinear weights never leaves the image range."""
    return jnp.clip(_bilinear(images, coords, fill), 0.0, 1.0).astype(images.dtype)


def _bilinear(values: jax.Array, coords: jax.Array, fill: float) -> jax.Array:
    """Bilinear lookup of values [B, H, W, C] at float (row, col) coords [B, H', W', 2].

    Four clamped gathers, each masked to `fill` where its corner lies outside the image.
    """
    batch, height, width, channels = values.shape
    rows, cols = coords[..., 0], coords[..., 1]
    r0, c0 = jnp.floor(rows), jnp.floor(cols)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
    flat = values.reshape(batch, height * width, channels)

    def corner(dr: int, dc: int) -> jax.Array:
        r, c = r0 + dr, c0 + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        index = jnp.clip(r, 0, height - 1) * width + jnp.clip(c, 0, width - 1)
        picked = jax.vmap(lambda f, i: f[i])(flat, index.reshape(batch, -1))
        return jnp.where(inside[..., None], picked.reshape(*rows.shape, channels), fill)

    top = (1 - fc) * corner(0, 0) + fc * corner(0, 1)
    bottom = (1 - fc) * corner(1, 0) + fc * corner(1, 1)
    return (1 - fr) * top + fr * bottom


def _grid(height: int, width: int) -> jax.Array:
    """[H, W, 2] (row, col) pixel positions."""
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                              jnp.arange(width, dtype=jnp.float32), indexing="ij")
    return jnp.stack([rows, cols], -1)


def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """[n, n] matrix of a zero-padded 1-D Gaussian blur (truncated at 4 sigma, like scipy)."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    offset = np.arange(n)[None, :] - np.arange(n)[:, None]  # j - i
    return np.where(np.abs(offset) <= radius, taps[np.clip(offset + radius, 0, 2 * radius)],
                    0.0).astype(np.float32)


def _validated(cfg: ml_collections.ConfigDict) -> dict:
    """The config section as a plain dict, refusing unknown fields and impossible values."""
    values = default_config().to_dict()
    given = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    valid = ", ".join(_FIELDS)
    for name, value in given.items():
        if name not in values:
            raise ValueError(f"augment: unknown field {name!r}; valid fields: {valid}")
        wanted = Integral if name in _INT_FIELDS else Real
        if isinstance(value, bool) or not isinstance(value, wanted):
            kind = "an int" if wanted is Integral else "a number"
            raise ValueError(f"augment.{name} must be {kind}, got {value!r}; valid fields: {valid}")
        if value < 0:
            raise ValueError(f"augment.{name} must be >= 0 (0 = off), got {value!r}; "
                             f"valid fields: {valid}")
        values[name] = value
    if values["zoom"] >= 1:
        raise ValueError("augment.zoom must be < 1 (scale in [1 - zoom, 1 + zoom]), got "
                         f"{values['zoom']}")
    if values["shear"] >= 90:
        raise ValueError(f"augment.shear must be < 90 degrees, got {values['shear']}")
    if values["elastic_alpha"] and not values["elastic_sigma"] > 0:
        raise ValueError("augment.elastic_sigma must be > 0 when elastic_alpha is on, got "
                         f"{values['elastic_sigma']}")
    return values


def _check_images(images: jax.Array) -> None:
    if getattr(images, "ndim", None) != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"augment: images must be a float [B, H, W, C] array in [0, 1], got "
                         f"{getattr(images, 'dtype', type(images).__name__)} "
                         f"{tuple(getattr(images, 'shape', ()))}; convert uint8 with x / 255.0")


def _check_crop(size: int, height: int, width: int) -> None:
    is_int = isinstance(size, Integral) and not isinstance(size, bool)
    if not (is_int and 1 <= size <= min(height, width)):
        raise ValueError(f"augment: crop size must be an int in [1, {min(height, width)}] for "
                         f"{height}x{width} images, got {size!r}")


def _check_fill(fill: float) -> None:
    if isinstance(fill, Real) and not 0.0 <= fill <= 1.0:
        raise ValueError(f"affine: fill must be in [0, 1] like the images, got {fill!r}")


def _check_range(name: str, value: float, lo: float, hi: float, hi_open: bool = False) -> None:
    """Refuse a concrete out-of-range parameter; traced values are the caller's business."""
    if isinstance(value, Real) and not (lo <= value and (value < hi if hi_open else value <= hi)):
        bracket = ")" if hi_open else "]"
        raise ValueError(f"augment: {name} must be in [{lo:g}, {hi:g}{bracket}, got {value!r}")

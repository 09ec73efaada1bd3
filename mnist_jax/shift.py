"""Shifted and synthetic test sets: the test split rotated, translated or corrupted, and inputs
from no dataset at all, made on the device with the augmentation's resampling (`augment.affine`).

    kind       levels (unit)                     what a level does
    rotate     0, 15, ..., 180 (degrees)         turns every image counter-clockwise about its centre
    translate  0, 2, ..., 14 (pixels)            moves each image up, down, left or right (its own
                                                 direction, drawn from the seed), by whole pixels
    corrupt    CORRUPTIONS (corruption name)     one corruption in the spirit of MNIST-C (Mu & Gilmer
                                                 2019) at one strength; 'identity' is the clean set

Ovadia et al. (2019) rotate and translate MNIST over the same ranges. Each image of each level is
drawn from `fold_in(key(seed), kind, level, image index)`, so every run and method sees the same
images, whatever the batch size or the other images. Images go in and come out as uint8
[N, H, W, 1], as `data.load` gives them and `RunView.predict` takes them.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from numbers import Real
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import augment


class Kind(NamedTuple):
    levels: tuple  # the standard levels, in order
    unit: str


# name -> what it does, at the one strength it is applied with (pixels in [0, 1]).
CORRUPTIONS = {
    "identity": "the test image as it is",
    "gaussian_noise": "plus Gaussian noise of std 0.3, clipped to [0, 1]",
    "impulse_noise": "10 % of the pixels set to black or white (salt and pepper)",
    "gaussian_blur": "a Gaussian blur of std 1.5 pixels",
    "contrast": "contrast cut to 30 % about the image's mean",
    "inversion": "1 - x: black strokes on white",
    "stripe": "a white vertical bar 3 pixels wide at a random column",
}
KINDS = {
    "rotate": Kind(tuple(range(0, 181, 15)), "degrees"),
    "translate": Kind(tuple(range(0, 15, 2)), "pixels"),
    "corrupt": Kind(tuple(CORRUPTIONS), "corruption"),
}
# Inputs of no dataset, for out-of-distribution tests: name -> what each image is.
SYNTHETIC = {
    "noise": "uniform noise, every pixel independent in [0, 255]",
    "inverted": "the test split inverted (255 - x): 'corrupt' at level 'inversion'",
}


def check_levels(kind: str, levels: Sequence | None = None) -> tuple:
    """`levels` of shift `kind` (default: its standard ones), refused in one line when the kind is
    unknown or a level is not one of its kind: a number >= 0 (rotate: <= 360; translate: whole
    pixels), or a corruption name."""
    if kind not in KINDS:
        raise ValueError(f"unknown shift kind {kind!r}; choose from {', '.join(KINDS)}")
    levels = KINDS[kind].levels if levels is None else tuple(levels)
    if not levels:
        raise ValueError(f"no levels given for shift {kind!r}; give some, or None for "
                         f"{KINDS[kind].levels}")
    for level in levels:
        if kind == "corrupt" and level not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {level!r}; choose from {', '.join(CORRUPTIONS)}")
        number = isinstance(level, Real) and not isinstance(level, bool)
        if kind == "rotate" and not (number and 0 <= level <= 360):
            raise ValueError(f"rotate level {level!r} must be a number of degrees in [0, 360]")
        if kind == "translate" and not (number and level >= 0 and float(level).is_integer()):
            raise ValueError(f"translate level {level!r} must be a whole number of pixels >= 0")
    return levels


def apply(images: np.ndarray, kind: str, level: float | str, *, seed: int = 0) -> np.ndarray:
    """The uint8 images [N, H, W, 1] shifted by `kind` at `level` (see the module doc)."""
    (level,) = check_levels(kind, [level])
    corruption, amount = (level, 0.0) if kind == "corrupt" else (None, float(level))
    return np.asarray(_apply(jnp.asarray(images), _level_key(seed, kind, level), kind, corruption,
                             amount))


def synthetic(name: str, test_images: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Out-of-distribution inputs `name` (one of SYNTHETIC), as many and as large as the uint8
    test images they are made from or beside."""
    if name not in SYNTHETIC:
        raise ValueError(f"unknown synthetic set {name!r}; choose from {', '.join(SYNTHETIC)}")
    if name == "inverted":
        return apply(test_images, "corrupt", "inversion", seed=seed)
    return np.asarray(_uniform_noise(_level_key(seed, "synthetic", name), test_images.shape))


def _level_key(seed: int, kind: str, level: float | str) -> jax.Array:
    """The key of one level of one kind: each image's is this folded with its index."""
    tag = level if isinstance(level, str) else f"{float(level):g}"
    key = jax.random.PRNGKey(seed)
    for part in (kind, tag):
        key = jax.random.fold_in(key, zlib.crc32(part.encode()) & 0x7FFFFFFF)
    return key


def _image_keys(key: jax.Array, n: int) -> jax.Array:
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


@functools.partial(jax.jit, static_argnames=("kind", "corruption"))
def _apply(images: jax.Array, key: jax.Array, kind: str, corruption: str | None,
           amount: float) -> jax.Array:
    x = images.astype(jnp.float32) / 255.0
    keys = _image_keys(key, images.shape[0])
    if kind == "rotate":
        out = augment.affine(x, augment.affine_matrix(rotation=amount))
    elif kind == "translate":
        steps = jnp.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])  # up, down, left, right
        direction = steps[jax.vmap(lambda k: jax.random.randint(k, (), 0, 4))(keys)] * amount
        matrices = augment.affine_matrix(rotation=jnp.zeros(len(keys)),  # one matrix per image
                                         shift=(direction[:, 0], direction[:, 1]))
        out = augment.affine(x, matrices)
    else:
        out = _CORRUPT[corruption](x, keys)
    return jnp.round(out * 255.0).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames="shape")
def _uniform_noise(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    keys = _image_keys(key, shape[0])
    return jax.vmap(lambda k: jax.random.randint(k, shape[1:], 0, 256))(keys).astype(jnp.uint8)


def _gaussian_noise(x: jax.Array, keys: jax.Array) -> jax.Array:
    noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:]))(keys)
    return jnp.clip(x + 0.3 * noise, 0.0, 1.0)


def _impulse_noise(x: jax.Array, keys: jax.Array) -> jax.Array:
    u = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:]))(keys)
    return jnp.where(u < 0.05, 0.0, jnp.where(u > 0.95, 1.0, x))


def _contrast(x: jax.Array, keys: jax.Array) -> jax.Array:
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - mean) * 0.3 + mean


def _stripe(x: jax.Array, keys: jax.Array) -> jax.Array:
    width = x.shape[2]
    left = jax.vmap(lambda k: jax.random.randint(k, (), 0, width - 2))(keys)
    cols = jnp.arange(width)[None, :]
    bar = (cols >= left[:, None]) & (cols < left[:, None] + 3)  # [N, W]
    return jnp.where(bar[:, None, :, None], 1.0, x)


_CORRUPT: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "identity": lambda x, keys: x,
    "gaussian_noise": _gaussian_noise,
    "impulse_noise": _impulse_noise,
    "gaussian_blur": lambda x, keys: augment.gaussian_blur(x, sigma=1.5),
    "contrast": _contrast,
    "inversion": lambda x, keys: 1.0 - x,
    "stripe": _stripe,
}

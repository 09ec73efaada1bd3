"""Image folders: one sub-folder of PNG/JPEG images per class, read as grayscale and resized.

`<dir>/train/<class>/` + `<dir>/test/<class>/` give both pools; a folder of class folders alone
is a test set (for evaluating a trained ensemble on new images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_jax.data.errors import DataError, one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_pool(folder: Path, pool: str, image_size: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images [N,H,W,1] uint8, labels [N] int32 and class names of the train or test pool."""
    has_train, has_test = (folder / "train").is_dir(), (folder / "test").is_dir()
    if has_train != has_test:
        present, absent = ("train", "test") if has_train else ("test", "train")
        raise DataError(
            f"{folder} has {present}/ but no {absent}/; create both, or neither to use it as a test set"
        )
    if has_train:
        classes = _class_dirs(folder / "train")
        extra = sorted(set(_class_dirs(folder / "test")) - set(classes))
        if extra:
            raise DataError(f"{folder / 'test'} has classes {extra} that {folder / 'train'} lacks")
        pool_dir = folder / pool
    elif pool == "train":
        raise DataError(
            f"{folder} only has a test split (no train/ and test/ sub-folders); for train/validation "
            f"create {folder / 'train'}/<class>/ and {folder / 'test'}/<class>/"
        )
    else:
        classes, pool_dir = _class_dirs(folder), folder
    images, labels = [], []
    for label, class_name in enumerate(classes):
        class_dir = pool_dir / class_name
        files = sorted(p for p in class_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        images += [_read_image(p, image_size) for p in files]
        labels += [label] * len(files)
    if not images:
        raise DataError(f"no {'/'.join(IMAGE_SUFFIXES)} images in the class folders of {pool_dir}")
    return np.stack(images)[..., None], np.asarray(labels, np.int32), classes


def _class_dirs(folder: Path) -> tuple[str, ...]:
    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise DataError(f"{folder} has no class sub-folders; put each class's images in {folder}/<class>/")
    return classes


def _read_image(path: Path, image_size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # only image folders need Pillow.

    try:
        with Image.open(path) as image:
            gray = image.convert("L")
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: cannot read image ({one_line(e)})") from None
    if gray.size != (image_size, image_size):  # squashes non-square images; no cropping.
        gray = gray.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(gray, np.uint8)

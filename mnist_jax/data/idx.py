"""The IDX format of MNIST and its look-alikes: find, gunzip, digest-check and parse the files.

A folder holds a train and a test pool, each an images file and a labels file, raw or `.gz`.
Parsed arrays are cached per process and read-only, so repeated loads share them.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import zlib
from pathlib import Path
from typing import Mapping

import numpy as np

from mnist_jax.data.errors import DataError, one_line

IDX_FILES = {  # pool -> (images file, labels file)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DIGIT_CLASSES = tuple(str(i) for i in range(10))
_UBYTE = 0x08


def read_pool(
    folder: Path, pool: str, classes: tuple[str, ...], digests: Mapping[str, str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images [N,H,W,1] uint8 and labels [N] int32 of the train or test pool of `folder`.

    `digests` (file name -> SHA-256 of the decompressed bytes) pins the files to known ones.
    """
    images_name, labels_name = IDX_FILES[pool]
    paths = {}
    for file_name in (images_name, labels_name):
        paths[file_name] = find(folder, file_name)
        if paths[file_name] is None:
            raise DataError(f"{folder} lacks {file_name} (raw or .gz); it needs {', '.join(IDX_FILES[pool])}")
    digests = digests or {}
    images = _read_idx(paths[images_name], 3, digests.get(images_name))
    labels = _read_idx(paths[labels_name], 1, digests.get(labels_name))
    if len(labels) != len(images):
        raise DataError(
            f"{paths[labels_name]} has {len(labels)} labels but {paths[images_name]} has {len(images)} images"
        )
    if len(labels) and labels.max() >= len(classes):
        raise DataError(
            f"{paths[labels_name]} has label {labels.max()} but there are {len(classes)} classes; "
            f"list the class names in {folder / 'classes.txt'}"
        )
    return images[..., None], labels.astype(np.int32)


def class_names(folder: Path) -> tuple[str, ...]:
    """Class names from an optional classes.txt (one per line), else the ten digits."""
    path = folder / "classes.txt"
    if not path.exists():
        return DIGIT_CLASSES
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise DataError(f"{path} is empty; list one class name per line or delete it")
    return names


def find(folder: Path, file_name: str) -> Path | None:
    """The raw file, else its .gz, else None."""
    for path in (folder / file_name, folder / f"{file_name}.gz"):
        if path.is_file():
            return path
    return None


def read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when the file is gzip (by magic bytes, not by name)."""
    return decompress(path.read_bytes(), str(path))


def decompress(data: bytes, label: str) -> bytes:
    """`data` gunzipped if it is gzip, else as it is; `label` names it in the error."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:
        reason = one_line(e)
        raise DataError(f"{label}: broken gzip data ({reason}); the file is truncated or corrupted") from None


def check_digest(data: bytes, label: str, expected: str) -> bytes:
    """`data` if its SHA-256 is `expected`, else a DataError naming both digests."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DataError(
            f"{label}: SHA-256 of the decompressed bytes is {actual}, expected {expected}; the file is "
            "truncated, corrupted or not the official one "
            "(replace it, or run `python -m mnist_jax.data fetch <dataset>`)"
        )
    return data


def _read_idx(path: Path, ndim: int, sha256: str | None) -> np.ndarray:
    stat = path.stat()  # the key makes a replaced or rewritten file miss the cache.
    key = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    return _read_idx_cached(str(path.resolve()), key, ndim, sha256)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, stat_key: tuple, ndim: int, sha256: str | None) -> np.ndarray:
    """Parse (and digest-check) once per process; the result is read-only so sharing it is safe."""
    del stat_key  # only part of the cache key.
    data = read_bytes(Path(path))
    if sha256:
        check_digest(data, path, sha256)
    return _parse(data, path, ndim)


def _parse(data: bytes, label: str, ndim: int) -> np.ndarray:
    """An IDX ubyte array of `ndim` dims, refusing anything whose header and size disagree."""
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise DataError(f"{label}: {len(data)} bytes is too short for an IDX file")
    if data[:2] != b"\0\0":
        raise DataError(f"{label}: bad magic {data[:4].hex()}, not an IDX file (expected 0000, type, ndim)")
    if data[2] != _UBYTE:
        raise DataError(f"{label}: IDX type code 0x{data[2]:02x}, expected 0x08 (unsigned byte)")
    if data[3] != ndim:
        raise DataError(f"{label}: IDX array has {data[3]} dimensions, expected {ndim}")
    if len(data) < header:
        raise DataError(f"{label}: truncated IDX header ({len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    if len(data) != header + int(np.prod(shape)):
        raise DataError(
            f"{label}: header says shape {shape} = {header + int(np.prod(shape))} bytes but the file has "
            f"{len(data)}; it is truncated or corrupted"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)

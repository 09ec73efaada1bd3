"""oneDNN convolutions inside compiled JAX programs, through XLA's FFI (CPU only).

XLA:CPU's convolutions are Eigen's, and its kernel gradient wraps each one in batch/channel
transposes; PyTorch's are oneDNN's and ran 1.5-2x faster on this project's machines
(experiments/results/speed.md). `pip install` builds `libmnist_onednn.so` (C++ in `csrc/`,
linked against the `onednn-cpu-gomp` wheel) on Linux x86-64; this module registers its handlers
with XLA and wraps them in a `custom_vjp` whose forward pass (optionally with the ReLU that
follows it fused in as a post-op), input gradient and kernel (and bias) gradient are each one
oneDNN primitive. Inside that `custom_vjp`, `lax.platform_dependent` keeps lax's convolution on
every other backend, so a program traced here still runs on a GPU/TPU.

Threads: oneDNN runs each call on an OpenMP team inside the XLA device thread that calls it. With
one CPU device per core (`mnist_jax.platform.configure_cpu`) a program on one device gets every
core, and inside a `shard_map` over k devices each call gets cores / k threads; convs under
`SMALL_FLOPS` get one (`threads()`). On 2 cores deotte trained 1.5x faster alone with 2 threads
than with 1, members side by side 1.1x faster with 1 thread each than with 2, and tiny20k alone
faster with 1 on an AVX-512 CPU but with 2 on an AVX2 one (experiments/results/speed.md).

`available()` says whether the handlers are loaded: not when the library was not built (other
platforms; on Linux x86-64 an install without a C++ compiler, where the first call logs one
warning line that says why, or with `MNIST_JAX_NATIVE=0`), nor when `MNIST_JAX_ONEDNN=0` turns
them off; `mnist_jax.ops.conv` then stays on lax, which remains the reference the tests compare
with.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import platform
from pathlib import Path

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

ENV = "MNIST_JAX_ONEDNN"
THREADS_ENV = "MNIST_JAX_ONEDNN_THREADS"
# `MNIST_JAX_NATIVE=0 pip install -e .` skips the build (csrc/CMakeLists.txt reads it).
NATIVE_ENV = "MNIST_JAX_NATIVE"
LIBRARY = "libmnist_onednn.so"
# Where `pip install` builds the library (pyproject.toml's platform markers).
BUILT_HERE = platform.system() == "Linux" and platform.machine() == "x86_64"
_HANDLERS = ("mnist_onednn_conv_fwd", "mnist_onednn_conv_bias_fwd", "mnist_onednn_conv_bwd_data",
             "mnist_onednn_conv_bwd_weights", "mnist_onednn_conv_bias_bwd_weights")
_DN = ("NHWC", "HWIO", "NHWC")

Pads = tuple[tuple[int, int], tuple[int, int]]


def _off(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() in ("0", "false", "off", "no")


def disabled() -> bool:
    """True when the environment turns the extension off (`MNIST_JAX_ONEDNN=0`)."""
    return _off(ENV)


def skipped_on_purpose() -> bool:
    """True when the environment says the install skipped the build on purpose
    (`MNIST_JAX_NATIVE=0`): no warning then about the missing library."""
    return _off(NATIVE_ENV)


def library_path() -> Path | None:
    """Where `pip install` put the built library (next to this module), or None."""
    from mnist_jax import ops  # its __path__ also lists the install dir in editable installs
    for directory in ops.__path__:
        if (Path(directory) / LIBRARY).is_file():
            return Path(directory) / LIBRARY
    return None


@functools.cache
def _library() -> ctypes.CDLL | None:
    if disabled():
        return None
    path = library_path()
    if path is None:
        if BUILT_HERE and not skipped_on_purpose():  # pip hides CMake's warning: say it here
            logging.getLogger(__name__).warning(
                "mnist_jax: the oneDNN extension is not built (no %s in mnist_jax/ops); "
                "convolutions run on XLA. Reinstall with a C++ compiler (pip install -e .) for the "
                "faster CPU convolutions, or set %s=0 to silence this.", LIBRARY, ENV)
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as err:
        raise RuntimeError(f"{path} does not load ({err}); reinstall with `pip install -e .`, or "
                           f"set {ENV}=0 to use XLA's convolutions") from None
    for name in _HANDLERS:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return lib


def available() -> bool:
    """Whether the oneDNN handlers are built, loaded and not turned off."""
    return _library() is not None


@functools.cache
def _supports(dtype: np.dtype) -> bool:
    lib = _library()
    if lib is None or dtype not in (jnp.float32, jnp.bfloat16):
        return False
    return bool(lib.mnist_onednn_supports(int(dtype == jnp.bfloat16)))


def supports(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads) -> bool:
    """Whether `conv(x, w, ...)` can run on oneDNN here: loaded, float32/bfloat16 on this CPU,
    one dtype for both operands, non-negative padding and a non-empty output."""
    if jnp.dtype(x.dtype) != jnp.dtype(w.dtype) or not _supports(jnp.dtype(x.dtype)):
        return False
    if any(p < 0 for pair in pads for p in pair):
        return False
    return all(o > 0 for o in _out_size(x.shape, w.shape, strides, pads))


def _out_size(x_shape, w_shape, strides, pads) -> tuple[int, int]:
    return tuple((x_shape[1 + i] + sum(pads[i]) - w_shape[i]) // strides[i] + 1 for i in range(2))


def _attrs(x, w, strides: tuple[int, int], pads: Pads) -> dict[str, np.int64]:
    """The handlers' attributes: strides, pads and the OpenMP threads for this conv's size."""
    (sh, sw), ((pt, pb), (pl, pr)) = strides, pads
    oh, ow = _out_size(x.shape, w.shape, strides, pads)
    flops = 2 * x.shape[0] * oh * ow * math.prod(w.shape)  # each of the three passes
    attrs = dict(sh=sh, sw=sw, pt=pt, pb=pb, pl=pl, pr=pr, threads=threads(flops))
    return {k: np.int64(v) for k, v in attrs.items()}


# Below this much work a second OpenMP thread cost more than it gained (2 cores, by the kernels'
# ISA): with AVX-512 kernels tiny20k's 58 MFLOP convs ran faster on one thread, with AVX2 kernels,
# on a core a quarter as fast, on two; 25 MFLOP keeps its 14 MFLOP first conv on one.
SMALL_FLOPS = {"avx512": 100e6, "avx2": 25e6}


@functools.cache
def kernel_isa() -> str:
    """'avx512' when oneDNN runs AVX-512 kernels here, else 'avx2' (also for the SSE4.1/AVX kernels
    of older CPUs: cores slower still, where a second thread pays off sooner too)."""
    lib = _library()
    return "avx512" if lib is not None and lib.mnist_onednn_avx512() else "avx2"


@functools.cache
def bf16_fast() -> bool:
    """Whether bfloat16 convolutions should run on oneDNN here: only where its bfloat16 kernels
    beat its float32 ones (AMD's AVX512_BF16, AMX), not on Intel's AVX512_BF16 without AMX,
    where they ran slower than float32 and no faster than XLA's (experiments/results/speed.md)."""
    lib = _library()
    return lib is not None and bool(lib.mnist_onednn_bf16_fast())


def threads(flops: float) -> int:
    """OpenMP threads for a convolution of `flops` traced here: `MNIST_JAX_ONEDNN_THREADS` if set;
    else one for small convs, else the usable cores shared out among the devices a `shard_map`
    runs side by side (all of them outside one), so the devices' teams do not oversubscribe."""
    if os.environ.get(THREADS_ENV):
        return int(os.environ[THREADS_ENV])
    if flops < SMALL_FLOPS[kernel_isa()]:
        return 1
    mesh = jax.sharding.get_abstract_mesh()
    devices = 1 if mesh.empty else math.prod(mesh.shape[a] for a in mesh.manual_axes)
    return max(1, len(os.sched_getaffinity(0)) // devices)  # the extension is Linux-only


def _call(name: str, out, *args, attrs: dict[str, np.int64]):
    _library()  # registers the handlers on first use
    return jax.ffi.ffi_call(name, out, vmap_method="sequential")(*args, **attrs)


def _lax_conv(x, w, b, strides, pads, relu=False):
    y = lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_DN)
    y = y if b is None else y + b
    return jax.nn.relu(y) if relu else y


def _onednn_forward(x, w, b, strides, pads, relu):
    out = jax.ShapeDtypeStruct(
        (x.shape[0], *_out_size(x.shape, w.shape, strides, pads), w.shape[3]), x.dtype)
    attrs = _attrs(x, w, strides, pads) | {"relu": np.int64(relu)}
    if b is None:
        return _call("mnist_onednn_conv_fwd", out, x, w, attrs=attrs)
    return _call("mnist_onednn_conv_bias_fwd", out, x, w, b, attrs=attrs)


def _onednn_grads(x, w, b, g, strides, pads):
    attrs = _attrs(x, w, strides, pads)
    dx = _call("mnist_onednn_conv_bwd_data", jax.ShapeDtypeStruct(x.shape, x.dtype), g, w,
               attrs=attrs)
    dw_shape = jax.ShapeDtypeStruct(w.shape, w.dtype)
    if b is None:
        return dx, _call("mnist_onednn_conv_bwd_weights", dw_shape, x, g, attrs=attrs), None
    dw, db = _call("mnist_onednn_conv_bias_bwd_weights",
                   (dw_shape, jax.ShapeDtypeStruct(b.shape, b.dtype)), x, g, attrs=attrs)
    return dx, dw, db


def _lax_grads(x, w, b, g, strides, pads):
    return jax.vjp(functools.partial(_lax_conv, strides=strides, pads=pads), x, w, b)[1](g)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def conv(x: jax.Array, w: jax.Array, b: jax.Array | None, strides: tuple[int, int],
         pads: Pads, relu: bool = False) -> jax.Array:
    """NHWC x HWIO convolution (+ bias, then ReLU if `relu`), oneDNN on the CPU and lax
    elsewhere, gradients included.

    Call only when `supports(x, w, strides, pads)`; `pads` are explicit (low, high) pairs.
    """
    return lax.platform_dependent(
        x, w, b, cpu=functools.partial(_onednn_forward, strides=strides, pads=pads, relu=relu),
        default=functools.partial(_lax_conv, strides=strides, pads=pads, relu=relu))


def _conv_fwd(x, w, b, strides, pads, relu):
    y = conv(x, w, b, strides, pads, relu)
    return y, (x, w, b, y if relu else None)


def _conv_bwd(strides, pads, relu, residuals, g):
    x, w, b, y = residuals
    if relu:  # ReLU's gradient, 0 at 0 as jax.nn.relu's; XLA fuses it into g's producer.
        g = jnp.where(y > 0, g, jnp.zeros((), g.dtype))
    return lax.platform_dependent(
        x, w, b, g, cpu=functools.partial(_onednn_grads, strides=strides, pads=pads),
        default=functools.partial(_lax_grads, strides=strides, pads=pads))


conv.defvjp(_conv_fwd, _conv_bwd)

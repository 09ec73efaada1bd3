"""Forward+backward speed of `conv.conv_general_dilated` against `lax.conv_general_dilated`.

    python experiments/bench_conv.py [--batch 128] [--repeats 5] [--only senet] \
        [--no-convs | --no-models] [--dtype bfloat16]

"ours" is oneDNN when the extension is loaded (`mnist_jax.platform.conv_backend()`, printed;
`MNIST_JAX_ONEDNN=0` turns it off), else this project's lax drop-in.

For each convolution of the model zoo: jit(value_and_grad(sum(conv(x, w)))) w.r.t. x and w,
both versions timed ALTERNATELY in one process (the machine is shared and noisy, so only the
ratio is trustworthy), median of `--repeats`; GFLOP/s counts 3 convolutions' worth of work.
PyTorch's fwd+bwd of the same conv (channels-last) is printed too when torch is installed; with
`--dtype bfloat16` the last column is ours in float32 instead (cast inside the same program), timed
alternately with the other two, to show whether bfloat16 pays on this CPU.
Then whole-model train-step gradients with the zoo's `models.blocks.Conv` (this module's
gradients and `conv.bias_add`) against the same models built with plain `flax.linen.Conv`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
import contextlib
import statistics
import sys
import time

import flax.linen
import jax
from jax import lax
import jax.numpy as jnp
import optax

from mnist_jax import models
from mnist_jax.ops import conv
from mnist_jax.models import blocks
from mnist_jax.platform import configure_cpu, conv_backend

DN = ("NHWC", "HWIO", "NHWC")
# Whole models for the train-step comparison: the cheap widths of the bench_throughput table.
MODELS = [("tiny20k", {}), ("deotte", {}), ("senet", {"filters": 32}),
          ("resnet_committee", {"width": 32})]

# (models that have it, input size, in channels, out channels, kernel, stride, padding).
SHAPES = [
    ("tiny20k", 28, 1, 8, 3, 1, "SAME"),
    ("tiny20k", 14, 8, 16, 3, 1, "SAME"),
    ("tiny20k", 7, 16, 32, 3, 1, "SAME"),
    ("deotte", 28, 1, 32, 3, 1, "VALID"),
    ("deotte", 26, 32, 32, 3, 1, "VALID"),
    ("deotte", 24, 32, 32, 5, 2, "SAME"),
    ("deotte", 12, 32, 64, 3, 1, "VALID"),
    ("deotte", 10, 64, 64, 3, 1, "VALID"),
    ("deotte", 8, 64, 64, 5, 2, "SAME"),
    ("deotte", 4, 64, 128, 4, 1, "VALID"),
    ("senet32", 28, 1, 32, 3, 1, "SAME"),
    ("senet32", 28, 32, 32, 3, 1, "SAME"),
    ("senet32", 14, 32, 32, 3, 1, "SAME"),
    ("senet128", 28, 1, 128, 3, 1, "SAME"),
    ("senet128 resnet", 28, 128, 128, 3, 1, "SAME"),
    ("senet128 resnet", 14, 128, 128, 3, 1, "SAME"),
    ("resnet", 28, 1, 128, 5, 1, "SAME"),
    ("resnet", 14, 128, 256, 3, 1, "SAME"),
    ("resnet", 7, 256, 256, 3, 1, "SAME"),
    ("resnet", 7, 256, 512, 3, 1, "SAME"),
    ("resnet", 4, 512, 512, 3, 1, "SAME"),
]


def time_alternating(fns: dict[str, Callable], args: tuple, repeats: int) -> dict[str, float]:
    """Median seconds per call of each compiled fn, calls interleaved so load hits all alike."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def torch_seconds(batch: int, shape: tuple, repeats: int) -> float | None:
    """PyTorch fwd+bwd time of the same conv, or None without torch (optional reference)."""
    try:
        import torch
    except ImportError:
        return None
    _, size, cin, cout, k, s, padding = shape
    # Channels-last, as bench_throughput's PyTorch peer runs these nets.
    x = torch.randn(batch, cin, size, size).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(cout, cin, k, k).to(memory_format=torch.channels_last).requires_grad_()
    pads = lax.padtype_to_pads((size, size), (k, k), (s, s), padding)
    symmetric = all(lo == hi for lo, hi in pads)
    # PyTorch pads symmetrically: an uneven padding is put in by hand.
    pad_lr = [p for lo_hi in reversed(pads) for p in lo_hi]

    def step():
        if symmetric:
            y = torch.nn.functional.conv2d(x, w, stride=s, padding=tuple(lo for lo, _ in pads))
        else:
            y = torch.nn.functional.conv2d(torch.nn.functional.pad(x, pad_lr), w, stride=s)
        y.sum().backward()

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rate(gflop_per_s: float) -> str:
    """Three decimals below 1 GFLOP/s (a tiny conv at a small batch on a busy CPU), so a measured
    rate never prints as 0.0."""
    return f"{gflop_per_s:7.3f}" if gflop_per_s < 1 else f"{gflop_per_s:7.1f}"


def bench_convs(batch: int, repeats: int, only: str, dtype: str) -> None:
    print(f"conv fwd+bwd, batch {batch}, {dtype}, median of {repeats}; GFLOP/s (3 convs of work); "
          f"ours: {conv_backend()}")
    last = "torch" if dtype == "float32" else "ours32"
    print(f"{'models':16} {'conv':28} {'lax':>7} {'ours':>7} {'speedup':>8} {last:>7}")
    for shape in SHAPES:
        if only not in shape[0]:
            continue
        names, size, cin, cout, k, s, padding = shape
        x = jax.random.normal(jax.random.key(0), (batch, size, size, cin), dtype)
        w = jax.random.normal(jax.random.key(1), (k, k, cin, cout), dtype)

        def fwd_bwd(f):
            loss = lambda x, w: jnp.sum(f(x, w, (s, s), padding, dimension_numbers=DN))
            return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

        out = jax.eval_shape(lambda: lax.conv_general_dilated(x, w, (s, s), padding,
                                                              dimension_numbers=DN)).shape
        gflop = 3 * 2 * out[0] * out[1] * out[2] * cin * cout * k * k / 1e9
        fns = {"lax": fwd_bwd(lax.conv_general_dilated), "ours": fwd_bwd(conv.conv_general_dilated)}
        if dtype == "float32":
            t = time_alternating(fns, (x, w), repeats)
            last = torch_seconds(batch, shape, repeats)
        else:  # our float32 beside, same process: does bf16 pay on this CPU?
            f32 = jax.jit(lambda x, w, f=fns["ours"]: f(x.astype(jnp.float32), w.astype(jnp.float32)))
            t = time_alternating({**fns, "ours_f32": f32}, (x, w), repeats)
            last = t["ours_f32"]
        last_col = _rate(gflop / last) if last else f"{'-':>7}"
        label = f"{size}x{size} {cin}->{cout} k{k} s{s} {padding}"
        print(f"{names:16} {label:28} {_rate(gflop / t['lax'])} {_rate(gflop / t['ours'])} "
              f"{t['lax'] / t['ours']:7.2f}x {last_col}", flush=True)


class Conv(flax.linen.Conv):
    """Plain `flax.linen.Conv` with `blocks.Conv`'s fused ReLU as a separate op. Named `Conv` so
    flax names its parameters as it names `blocks.Conv`'s."""

    relu: bool = False

    def __call__(self, inputs: jax.Array) -> jax.Array:
        y = super().__call__(inputs)
        return flax.linen.relu(y) if self.relu else y


@contextlib.contextmanager
def zoo_convs_are_flax() -> Iterator[None]:
    """Every `models.blocks.Conv` of the zoo is plain `flax.linen.Conv` (measurement only).

    Same parameters, initial values and outputs (tests/test_conv.py checks it), lax's own
    gradients. The model files import `Conv` by name, so the name is swapped in each of them.
    """
    modules = [blocks, *(sys.modules[m] for m in list(sys.modules)
                         if m.startswith("mnist_jax.models.") and hasattr(sys.modules[m], "Conv"))]
    originals = [m.Conv for m in modules]
    for m in modules:
        m.Conv = Conv
    try:
        yield
    finally:
        for m, original in zip(modules, originals):
            m.Conv = original


def bench_models(batch: int, repeats: int) -> None:
    print(f"\ntrain-step gradient (jit grad of cross-entropy), batch {batch}, median of {repeats}")
    images = jax.random.uniform(jax.random.key(0), (batch, 28, 28, 1))
    labels = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
    for name, overrides in MODELS:
        def grad_fn():
            model = models.get(name, **overrides)
            variables = model.init({"params": jax.random.key(2), "dropout": jax.random.key(3)},
                                   images, train=False)

            def loss(params):
                logits, _ = model.apply({**variables, "params": params}, images, train=True,
                                        rngs={"dropout": jax.random.key(4)},
                                        mutable=["batch_stats"])
                return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

            fn = jax.jit(jax.grad(loss))
            jax.block_until_ready(fn(variables["params"]))  # traced while the names are swapped.
            return fn, variables["params"]

        ours, params = grad_fn()
        with zoo_convs_are_flax():
            flax_fn, _ = grad_fn()
        t = time_alternating({"flax": flax_fn, "ours": ours}, (params,), repeats)
        label = name + "".join(f" {k}={v}" for k, v in overrides.items())
        print(f"{label:26} flax.linen.Conv {t['flax'] * 1e3:7.1f} ms  "
              f"blocks.Conv {t['ours'] * 1e3:7.1f} ms  speedup {t['flax'] / t['ours']:.2f}x",
              flush=True)


def main() -> None:
    configure_cpu()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="", help="only conv shapes of models matching this")
    parser.add_argument("--no-convs", action="store_true", help="skip the per-conv timing")
    parser.add_argument("--no-models", action="store_true", help="skip the whole-model timing")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="per-conv timing dtype (PyTorch is timed in float32 only)")
    args = parser.parse_args()
    if not args.no_convs:
        bench_convs(args.batch, args.repeats, args.only, args.dtype)
    if not args.no_models:
        bench_models(args.batch, args.repeats)


if __name__ == "__main__":
    main()

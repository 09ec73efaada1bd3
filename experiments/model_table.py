"""Prints a markdown table of every registered model: parameters and forward FLOPs per image.

FLOPs are XLA's count for one eval-mode forward pass at batch 1 on 28x28x1 input (a multiply-add
counts as 2), from the HLO lowered for CUDA, so nothing is allocated or run: lowered for the CPU,
the oneDNN convolutions are custom calls, which XLA counts as 0 FLOPs.

    python experiments/model_table.py
"""

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import models
from mnist_jax.platform import configure_cpu


def count_params(params) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def forward_flops(model, variables, x) -> float:
    """XLA's FLOP estimate for `model.apply(variables, x, train=False)`, on any machine."""
    traced = jax.jit(lambda v, x: model.apply(v, x, train=False)).trace(variables, x)
    cost = traced.lower(lowering_platforms=("cuda",)).cost_analysis()
    if isinstance(cost, (list, tuple)):  # Older jax returns one dict per device program.
        cost = cost[0]
    return float(cost["flops"])


def main() -> None:
    configure_cpu()
    x = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
    print("| model | parameters | MFLOPs / image |")
    print("| --- | ---: | ---: |")
    for name in models.names():
        model = models.get(name)
        variables = jax.eval_shape(
            lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                               jnp.zeros(x.shape, x.dtype), train=False))
        flops = forward_flops(model, variables, x)
        print(f"| {name} | {count_params(variables['params']):,} | {flops / 1e6:,.1f} |")


if __name__ == "__main__":
    main()

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
from mnist_jax.engine import forward_flops
from mnist_jax.platform import configure_cpu


def count_params(params) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


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

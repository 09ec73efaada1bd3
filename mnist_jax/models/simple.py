"""`simple_m3` / `simple_m5` / `simple_m7`: the homogeneous CNNs of An et al. 2020 (2008.10400).

A stack of bias-free "valid" convs, each followed by BatchNorm and ReLU, with no pooling, then
Flatten -> Dense `head` (no bias) -> BatchNorm on the logits. Input is scaled to [-1, 1]
(mean 0.5, std 0.5). The variants differ only in `kernel_size` and `features`:
M3 = 10 x 3x3 (32..176 by 16, 28 -> 8), M5 = 5 x 5x5 (32..160 by 32, 28 -> 8),
M7 = 4 x 7x7 (48..192 by 48, 28 -> 4). BatchNorm follows PyTorch (the paper's framework).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.models.blocks import TORCH_BN, ConvBNAct, Dtype, flatten, prepare_input
from mnist_jax.models.blocks import BatchNorm, torch_init

M3 = {"kernel_size": 3, "features": tuple(range(32, 177, 16))}
M5 = {"kernel_size": 5, "features": (32, 64, 96, 128, 160)}
M7 = {"kernel_size": 7, "features": (48, 96, 144, 192)}


class SimpleNet(nn.Module):
    num_classes: int = 10
    kernel_size: int = M3["kernel_size"]
    features: tuple[int, ...] = M3["features"]
    input_mean: float = 0.5
    input_std: float = 0.5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        # Each valid conv trims kernel_size - 1 pixels; at least one must survive.
        x = prepare_input(x, self, min_size=len(self.features) * (self.kernel_size - 1) + 1)
        for features in self.features:
            x = ConvBNAct(features, self.kernel_size, use_bias=False, **TORCH_BN,
                          dtype=self.dtype, param_dtype=self.param_dtype)(x, train=train)
        x = nn.Dense(self.num_classes, use_bias=False, kernel_init=torch_init, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="head")(flatten(x))
        x = BatchNorm(use_running_average=not train, **TORCH_BN, dtype=self.dtype,
                      param_dtype=self.param_dtype)(x)
        return x.astype(jnp.float32)

"""`senet`: the squeeze-excitation CNN of the Keras "MNIST-0.17" repository.

3 blocks of (3 x Conv 3x3 ReLU he_normal -> BatchNorm -> SqueezeExcite), 2x2 average pooling
after blocks 2 and 3, then concat(global max, global average) -> Dense `head`. The original puts
L1 0.00025 on the head kernel; that penalty lives in the trainer (`l1_params`). Convs are
"same"-padded (our reading of the original), so only the pools shrink the map: 28 -> 14 -> 7.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.ops import pool
from mnist_jax.models.blocks import Conv, KERAS_BN, Dtype, SqueezeExcite, he_normal, keras_init
from mnist_jax.models.blocks import BatchNorm, prepare_input


class SENet(nn.Module):
    num_classes: int = 10
    filters: int = 128  # Width of every conv; reduce for cheap benchmark variants.
    se_ratio: int = 32
    input_mean: float = 0.0
    input_std: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = prepare_input(x, self, min_size=4)  # Two 2x2 average pools: 4 -> 2 -> 1.
        for block in range(3):
            for _ in range(3):
                x = Conv(self.filters, (3, 3), padding="SAME", kernel_init=he_normal, relu=True,
                         dtype=self.dtype, param_dtype=self.param_dtype)(x)
            x = BatchNorm(use_running_average=not train, **KERAS_BN, dtype=self.dtype,
                          param_dtype=self.param_dtype)(x)
            x = SqueezeExcite(self.se_ratio, dtype=self.dtype, param_dtype=self.param_dtype)(x)
            if block > 0:
                x = pool.avg_pool(x, 2)
        x = jnp.concatenate([jnp.max(x, axis=(1, 2)), jnp.mean(x, axis=(1, 2))], axis=-1)
        x = nn.Dense(self.num_classes, kernel_init=keras_init, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="head")(x)
        return x.astype(jnp.float32)

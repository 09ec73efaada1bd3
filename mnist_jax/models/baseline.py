"""`baseline` / `baseline_bn`: the Keras CNN of Geron's MNIST exercise (Hands-On ML, ch. 14).

Conv32(3)-Conv64(3)-MaxPool-Flatten-Dropout 0.25-Dense128-Dropout 0.5-Dense `head`, ReLU and
he_normal on the hidden layers, "same" padding (our reading of the book's solution; 28 -> 14).
`batch_norm=True` adds a Keras-style BatchNorm after the Dense128 ReLU (the `baseline_bn` variant).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.ops import pool
from mnist_jax.models.blocks import Conv, KERAS_BN, Dtype, flatten, he_normal, keras_init
from mnist_jax.models.blocks import BatchNorm, prepare_input


class Baseline(nn.Module):
    num_classes: int = 10
    batch_norm: bool = False
    input_mean: float = 0.0
    input_std: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = prepare_input(x, self, min_size=2)  # One 2x2 max pool.
        for features in (32, 64):
            x = Conv(features, (3, 3), padding="SAME", kernel_init=he_normal, relu=True,
                     dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = pool.max_pool(x, 2)
        x = nn.Dropout(0.25, deterministic=not train)(flatten(x))
        x = nn.Dense(128, kernel_init=he_normal, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = nn.relu(x)
        if self.batch_norm:
            x = BatchNorm(use_running_average=not train, **KERAS_BN, dtype=self.dtype,
                          param_dtype=self.param_dtype)(x)
        x = nn.Dropout(0.5, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, kernel_init=keras_init, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="head")(x)
        return x.astype(jnp.float32)

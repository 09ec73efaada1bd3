"""`deotte`: one member of Chris Deotte's 15-CNN Kaggle MNIST ensemble.

Two stages of Conv(3)-BN, Conv(3)-BN, Conv(5, stride 2, same)-BN, Dropout 0.4 (32 then 64
filters), then Conv128(4)-BN, Flatten, Dropout 0.4, Dense `head`. ReLU follows every conv (Keras
`activation="relu"`, before the BatchNorm); convs are Keras-default "valid" unless marked same,
so 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4 -> 1.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.models.blocks import BatchNorm, Conv, KERAS_BN, Dtype, flatten, keras_init
from mnist_jax.models.blocks import prepare_input

# Smallest input with a non-empty output: 25 -> 23 -> 21 -> 11 -> 9 -> 7 -> 4 -> 1.
_MIN_SIZE = 25


class Deotte(nn.Module):
    num_classes: int = 10
    dropout_rate: float = 0.4
    input_mean: float = 0.0
    input_std: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = functools.partial(Conv, kernel_init=keras_init, relu=True, dtype=self.dtype,
                                 param_dtype=self.param_dtype)
        bn = functools.partial(BatchNorm, use_running_average=not train, **KERAS_BN,
                               dtype=self.dtype, param_dtype=self.param_dtype)
        dropout = functools.partial(nn.Dropout, self.dropout_rate, deterministic=not train)

        x = prepare_input(x, self, min_size=_MIN_SIZE)
        for features in (32, 64):
            x = bn()(conv(features, (3, 3), padding="VALID")(x))
            x = bn()(conv(features, (3, 3), padding="VALID")(x))
            x = bn()(conv(features, (5, 5), strides=(2, 2), padding="SAME")(x))
            x = dropout()(x)
        x = bn()(conv(128, (4, 4), padding="VALID")(x))
        x = dropout()(flatten(x))
        x = nn.Dense(self.num_classes, kernel_init=keras_init, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="head")(x)
        return x.astype(jnp.float32)

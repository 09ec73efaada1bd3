"""`resnet_committee`: one member of the fast.ai-forum committee of small PyTorch ResNets.

Conv 5x5 -> ReLU, Res, MaxPool, Res, BN, Conv -> ReLU (2w), MaxPool, Res, BN, Conv -> ReLU (4w),
MaxPool (ceil mode), Res, BN, AvgPool 4, Linear `head`; w = `width` = 128 as published.

Padding: every conv is "SAME" (5x5 pad 2, 3x3 pad 1; the width-changing convs are taken as 3x3),
so only the pools shrink the image: 28 -> 14 -> 7 -> 4 (ceil) -> 1 after AvgPool 4. That makes 28
the smallest valid input; larger inputs give a larger final map, flattened into the head.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.ops import pool
from mnist_jax.models.blocks import BatchNorm, Conv, TORCH_BN, Dtype, ResBlock, flatten
from mnist_jax.models.blocks import prepare_input, torch_init

# Smallest input with a non-empty output: floor, floor, ceil halvings must leave at least 4.
_MIN_SIZE = 28


class ResNetCommittee(nn.Module):
    num_classes: int = 10
    width: int = 128  # Channels of the first stage; later stages use 2x and 4x.
    input_mean: float = 0.1307  # MNIST training-set mean and std (PyTorch habit).
    input_std: float = 0.3081
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = functools.partial(Conv, padding="SAME", kernel_init=torch_init, relu=True,
                                 dtype=self.dtype, param_dtype=self.param_dtype)
        bn = functools.partial(BatchNorm, use_running_average=not train, **TORCH_BN,
                               dtype=self.dtype, param_dtype=self.param_dtype)
        res = functools.partial(ResBlock, **TORCH_BN, dtype=self.dtype,
                                param_dtype=self.param_dtype)
        w = self.width

        x = prepare_input(x, self, min_size=_MIN_SIZE)
        x = conv(w, (5, 5))(x)
        x = pool.max_pool(res()(x, train=train), 2)
        x = bn()(res()(x, train=train))
        x = pool.max_pool(conv(2 * w, (3, 3))(x), 2)
        x = bn()(res()(x, train=train))
        x = pool.max_pool(conv(4 * w, (3, 3))(x), 2, ceil_mode=True)
        x = bn()(res()(x, train=train))
        x = flatten(pool.avg_pool(x, 4))
        x = nn.Dense(self.num_classes, kernel_init=torch_init, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="head")(x)
        return x.astype(jnp.float32)

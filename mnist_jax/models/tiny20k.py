"""`tiny20k`: the 15,578-parameter PyTorch CNN of the "MNIST_99.4" recipe.

3 x (Conv 3x3 pad 1, BatchNorm, ReLU, MaxPool 2) with 8, 16, 32 channels (28 -> 14 -> 7 -> 3),
Dropout 0.3, FC 288 -> 32, ReLU, Dropout 0.3, FC 32 -> classes (`head`); the dropout rate is the
published README's (an earlier version of its model file had 0.4).

`features` and `hidden` widen the same architecture; the defaults are the published net.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.ops import pool
from mnist_jax.models.blocks import TORCH_BN, ConvBNAct, Dtype, flatten, prepare_input
from mnist_jax.models.blocks import torch_init


class Tiny20k(nn.Module):
    num_classes: int = 10
    dropout_rate: float = 0.3
    features: tuple[int, ...] = (8, 16, 32)  # conv channels, one max-pooled stage each
    hidden: int = 32
    input_mean: float = 0.1307  # MNIST training-set pixel mean and std, as in the recipe.
    input_std: float = 0.3081
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        # One 2x2 max pool per stage: the image must survive them all.
        x = prepare_input(x, self, min_size=2 ** len(self.features))
        for features in self.features:
            x = ConvBNAct(features, 3, padding="SAME", **TORCH_BN, dtype=self.dtype,
                          param_dtype=self.param_dtype)(x, train=train)
            x = pool.max_pool(x, 2)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(flatten(x))
        x = nn.Dense(self.hidden, kernel_init=torch_init, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
        x = nn.Dense(self.num_classes, kernel_init=torch_init, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="head")(x)
        return x.astype(jnp.float32)

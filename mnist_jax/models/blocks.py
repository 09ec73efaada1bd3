"""Building blocks and framework conventions shared by the model zoo."""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnist_jax.ops import conv
from mnist_jax.ops.norm import BatchNorm

Dtype = Any

# BatchNorm conventions of the frameworks the models come from. Flax `momentum` is the weight
# of the old running average, i.e. 1 - PyTorch's `momentum`.
KERAS_BN = {"momentum": 0.99, "epsilon": 1e-3}
TORCH_BN = {"momentum": 0.9, "epsilon": 1e-5}

# Each framework's default initialisers, so the published training recipes carry over.
keras_init = nn.initializers.glorot_uniform()  # Keras Conv2D / Dense default.
he_normal = nn.initializers.he_normal()  # Keras "he_normal": truncated normal, fan_in, scale 2.
# PyTorch Conv2d / Linear default kaiming_uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)). Biases
# start at zero here (PyTorch draws them from the same range; immaterial for training).
torch_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class Conv(nn.Module):
    """flax.linen.Conv for NHWC images, computed by `mnist_jax.ops.conv.conv2d`.

    Every conv of the zoo. Same fields (those the zoo uses), parameter names, shapes, creation
    order and so initial values as `nn.Conv`, so checkpoints and published parameter counts carry
    over; on the CPU the convolution and its bias run on oneDNN when the extension is built, else
    with the gradients XLA:CPU runs faster (the same numbers; plain lax on GPU/TPU).
    """

    features: int
    kernel_size: int | tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: str | tuple[tuple[int, int], tuple[int, int]] = "SAME"
    use_bias: bool = True
    kernel_init: Callable[..., jax.Array] = nn.initializers.lecun_normal()
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros_init()
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    relu: bool = False  # ReLU on the output, fused into the oneDNN primitive (one pass fewer)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init,
                            (*_pair(self.kernel_size), x.shape[-1], self.features), self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return conv.conv2d(x, kernel, bias, _pair(self.strides), self.padding, relu=self.relu)


def prepare_input(x: jax.Array, model: nn.Module, *, min_size: int) -> jax.Array:
    """Checks NHWC pixels in [0, 1] and normalises them with the model's input_mean / input_std.

    Checking here turns a wrong input into one clear line instead of an XLA shape error deep
    inside a convolution. Normalisation is done in float32, then cast to the compute dtype.
    """
    x = jnp.asarray(x)
    where = type(model).__name__
    if x.ndim != 4:
        raise ValueError(f"{where}: expected NHWC images of rank 4, got shape {tuple(x.shape)}; "
                         "add a channel axis with x[..., None]")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{where}: expected float pixels in [0, 1], got dtype {x.dtype}; "
                         "pass x.astype(np.float32) / 255")
    if min(x.shape[1:3]) < min_size:
        raise ValueError(f"{where}: images must be at least {min_size}x{min_size} for this "
                         f"architecture, got {x.shape[1]}x{x.shape[2]}; resize or pad them")
    if model.input_std <= 0:
        raise ValueError(f"{where}: input_std must be > 0, got {model.input_std}")
    x = (x.astype(jnp.float32) - model.input_mean) / model.input_std
    return x.astype(model.dtype)


def flatten(x: jax.Array) -> jax.Array:
    return x.reshape((x.shape[0], -1))


class ConvBNAct(nn.Module):
    """Conv -> BatchNorm -> ReLU, the repeated unit of tiny20k and simple_m*."""

    features: int
    kernel_size: int
    padding: str = "VALID"
    use_bias: bool = True
    momentum: float = TORCH_BN["momentum"]
    epsilon: float = TORCH_BN["epsilon"]
    kernel_init: Callable[..., jax.Array] = torch_init
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        k = self.kernel_size
        x = Conv(self.features, (k, k), padding=self.padding, use_bias=self.use_bias,
                    kernel_init=self.kernel_init, dtype=self.dtype,
                    param_dtype=self.param_dtype)(x)
        x = BatchNorm(use_running_average=not train, momentum=self.momentum,
                      epsilon=self.epsilon, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return nn.relu(x)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): rescales each channel by a gate in (0, 1).

    The gate comes from the global average of each channel through a bottleneck of
    channels // ratio units (at least one); both Dense layers are bias-free and he_normal, as in
    the widely used Keras implementation.
    """

    ratio: int = 16
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        squeeze = nn.Dense(max(1, channels // self.ratio), use_bias=False, kernel_init=he_normal,
                           dtype=self.dtype, param_dtype=self.param_dtype)
        excite = nn.Dense(channels, use_bias=False, kernel_init=he_normal, dtype=self.dtype,
                          param_dtype=self.param_dtype)
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        return x * nn.sigmoid(excite(nn.relu(squeeze(s))))


class ResBlock(nn.Module):
    """Residual unit of resnet_committee: y = BN(x); return y + ReLU(Conv3x3(y)).

    The 3x3 conv is "SAME"-padded (PyTorch padding=1) so the sum keeps the input's shape.
    """

    momentum: float = TORCH_BN["momentum"]
    epsilon: float = TORCH_BN["epsilon"]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = BatchNorm(use_running_average=not train, momentum=self.momentum,
                      epsilon=self.epsilon, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        y = Conv(x.shape[-1], (3, 3), padding="SAME", kernel_init=torch_init, relu=True,
                 dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return x + y

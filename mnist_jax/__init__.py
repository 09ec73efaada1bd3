"""mnist_jax: deep ensembles of convolutional networks on MNIST-family data, in JAX/Flax."""

__version__ = "0.1.0"

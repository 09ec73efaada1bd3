"""mnist_jax: deep ensembles of convolutional networks on MNIST-family data, in JAX/Flax.

The pipeline, one module each: config -> data -> engine -> train -> evaluate -> analysis;
`runfolder` owns the run directory, `platform` the machine, `ops` the custom-gradient ops.
Importing the package changes nothing in the process: entry points call
`mnist_jax.platform.configure_cpu()`.
"""

__version__ = "0.1.0"

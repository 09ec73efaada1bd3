"""MNIST-0.17 (Keras): 20 SE-nets, 99.84 % published for the ensemble.

Adam at 1e-3 for 13 epochs, 1e-4 for 3, 1e-5 for 3, then one epoch at 1e-5 on un-augmented
images; L1 0.00025 on the output kernel. The augmentation ranges are Keras ImageDataGenerator's
(shear in degrees).
"""

from mnist_jax.config import base_config


def get_config():
    c = base_config()
    c.model = "senet"
    c.num_members = 20
    c.num_epochs = 20
    c.clean_final_epochs = 1
    c.batch_size = 32
    c.optim.name = "adam"
    c.optim.schedule.name = "piecewise"
    c.optim.schedule.boundaries = [13, 16]
    c.optim.schedule["values"] = [1e-3, 1e-4, 1e-5]
    c.l1 = 0.00025
    c.l1_params = "head/kernel"
    c.augment.rotation = 10.0
    c.augment.shift = 0.1
    c.augment.shear = 10.0
    c.augment.zoom = 0.1
    return c

"""Geron's exercise: a plain 2-conv net, Nadam, 10 epochs, no augmentation: 99.14 % published.

`--config.model=baseline_bn` gives the variant with BatchNorm after Dense128 (99.15 %).
"""

from mnist_jax.config import base_config


def get_config():
    c = base_config()
    c.model = "baseline"
    c.num_members = 1
    c.num_epochs = 10
    c.batch_size = 32
    c.validation_size = 5000  # the last 5,000 training images
    c.optim.name = "nadam"
    c.optim.learning_rate = 1e-3
    return c

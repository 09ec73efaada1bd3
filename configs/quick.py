"""The README's main job: a small tiny20k ensemble that trains in a few minutes on 2 CPU cores."""

from mnist_jax.config import base_config


def get_config():
    c = base_config()
    c.model = "tiny20k"
    c.num_members = 3
    c.num_epochs = 3
    c.batch_size = 128
    c.optim.name = "adamw"
    c.optim.weight_decay = 1e-4
    c.optim.learning_rate = 0.003
    c.optim.schedule.name = "one_cycle"
    c.optim.schedule.pct_start = 0.2
    c.optim.schedule.div_factor = 10.0
    c.optim.schedule.final_div_factor = 100.0
    return c

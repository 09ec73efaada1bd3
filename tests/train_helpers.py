"""Helpers of the train-loop tests (test_train.py, test_reference_configs.py)."""

from pathlib import Path

import jax
import numpy as np

from mnist_jax import config as config_lib, run as run_lib

REPO = Path(__file__).resolve().parents[1]


def load_config(name: str, arg: str | None = None):
    return config_lib.from_file(REPO / "configs" / f"{name}.py", arg)


def small(config, **overrides):
    """A config cut down to seconds: a real-MNIST subset, a short validation split."""
    config.train_subset = 512
    config.validation_size = 500
    config.batch_size = 64
    config.num_epochs = 2
    config.log_every_steps = 3
    config.eval_batch_size = 500
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def final_state(workdir, config):
    """The members and step of a run's newest readable checkpoint, as the config builds them."""
    state = run_lib.restore(run_lib.setup(config, 10, steps_per_epoch=1), workdir)
    return jax.tree.map(np.asarray, state.members), state.step


class StopAfter:
    """Stands in for the SIGINT/SIGTERM flag: 'received' once the loop has looked `n` times."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def received(self):
        self.n -= 1
        return 15 if self.n < 0 else None

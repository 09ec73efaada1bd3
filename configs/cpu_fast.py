"""cpu_fast: the most ensemble accuracy per CPU-minute we found; run by experiments/time_to_accuracy.py.

tiny20k widened to 24-48-96 channels and a 96-unit hidden layer (dropout 0.1), 8 epochs of AdamW
with a one-cycle schedule and the tiny20k recipe's rotation + shift augmentation, 2 members per
run (one per core: mnist_jax gives XLA one CPU device per core); time_to_accuracy.py adds runs
(waves) of 2 new members while its time budget lasts.

Compared on the validation split, 2 members each, ensemble accuracy and NLL against wall time:
widths 16-32-64 / 24-48-96 / 32-64-128, 5 to 16 epochs, zoom and stronger rotation. 24-48-96 at 8
epochs had the lowest validation NLL for its time. The dated numbers are in
experiments/results/config_selection.md.
"""

from pathlib import Path

from mnist_jax import config as config_lib


def get_config():
    # The tiny20k recipe: its AdamW one-cycle schedule and rotation + shift augmentation.
    c = config_lib.from_file(Path(__file__).with_name("tiny20k.py"))
    c.model_overrides.features = (24, 48, 96)
    c.model_overrides.hidden = 96
    c.model_overrides.dropout_rate = 0.1
    c.num_members = 2
    c.num_epochs = 8
    c.log_every_steps = 100
    return c

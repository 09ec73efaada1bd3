"""An et al. 2020 (arXiv 2008.10400): simple valid-conv nets M3 / M5 / M7.

    --config=configs/simple.py:m3   (or :m5, :m7)

Batch 120, Adam 1e-3 x 0.98^epoch, rotation 20 deg, translation 20 %, EMA of weights 0.999,
150 epochs as in the paper. The paper's 99.87 % is a majority vote across M3, M5 and M7 runs,
the best of 1,000 triples of nets each saved at its best test epoch; at the last epoch a net
averages 99.69–99.70 % (experiments/results/reproduction.md, "Published figures"). Train the
three configs and combine the runs with `mnist_jax.analysis`.
"""

from mnist_jax.config import base_config

VARIANTS = ("m3", "m5", "m7")


def get_config(variant: str = "m3"):
    if variant not in VARIANTS:
        raise ValueError(f"configs/simple.py takes one of {', '.join(VARIANTS)} "
                         f"(--config=configs/simple.py:m5), got {variant!r}")
    c = base_config()
    c.model = f"simple_{variant}"
    c.num_members = 3
    c.num_epochs = 150
    c.batch_size = 120
    c.optim.name = "adam"
    c.optim.learning_rate = 1e-3
    c.optim.schedule.name = "exponential"
    c.optim.schedule.decay_rate = 0.98
    c.augment.rotation = 20.0
    c.augment.shift = 0.2
    c.ema_decay = 0.999
    return c

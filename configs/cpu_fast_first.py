"""cpu_fast_first: the first wave of experiments/time_to_accuracy.py, short enough to end inside 15
minutes on the slowest CPU our budgets hold on (the 2-core Zen 3); configs/cpu_fast.py follows.

configs/cpu_fast.py's two FGE trajectories cut from 16 epochs to 6: 3 warm epochs of Deotte's
schedule, then 3 cycles of 1 epoch between 0.5 and 0.02 x 1e-3, a snapshot (an ensemble row) at
the end of each: 6 rows. On the 5,000 validation images (experiments/results/compute_matched.md)
they make more errors than cpu_fast's 8 rows, and joining them to those changed the count by one
image, so the hour keeps every row of every wave.
"""

from pathlib import Path

from mnist_jax import config as config_lib


def get_config():
    c = config_lib.from_file(Path(__file__).with_name("cpu_fast.py"))
    c.num_epochs = 6
    c.snapshot.cycles = 3
    c.snapshot.warm_epochs = 3
    return c

"""cpu_fast: the most ensemble accuracy per CPU-minute we found; the repeating wave of
experiments/time_to_accuracy.py (after configs/cpu_fast_first.py).

Two trajectories of Deotte's recipe (configs/deotte15.py: batch 64, Adam 1e-3, rotation 15°, zoom
0.15, shift 0.1, each member on its own random 90 %) side by side, one per core, turned into fast
geometric ensembles (Garipov et al. 2018): 8 warm epochs of the recipe's own schedule (1e-3 x 0.95
per epoch), then 4 cycles of 2 epochs between 0.5 and 0.02 x 1e-3, each ending in a snapshot that
is an ensemble row: 8 rows a run. Chosen on the 5,000 validation images from the compute-matched
map (experiments/results/compute_matched.md): at 32 member-epochs these 8 rows made 3 validation
errors fewer than 4 independent 8-epoch members (cpu_fast until 2026-12-07) from each of two seeds,
and fewer than FGE on 8-epoch trajectories; an SWA row added nothing and test-time augmentation
made every plan worse, so neither is kept. Then trained on all 60,000 training images.
"""

from pathlib import Path

from mnist_jax import config as config_lib


def get_config():
    c = config_lib.from_file(Path(__file__).with_name("deotte15.py"))
    c.num_members = 2
    c.num_epochs = 16
    c.snapshot.cycles = 4
    c.snapshot.shape = "fge"
    c.snapshot.warm_epochs = 8
    c.snapshot.high = 0.5
    c.snapshot.low = 0.02
    c.validation_size = 0  # chosen on validation; the final members train on all 60,000 images
    c.log_every_steps = 100
    return c

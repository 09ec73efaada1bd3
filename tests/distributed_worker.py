"""Subprocess half of tests/test_distributed.py: trains a few tiny20k members with the engine.

It runs in its own process because the device count (XLA_FLAGS) and `jax.distributed` are fixed
when JAX starts. It saves what it trained, gathered to the host, to an .npz the test compares.

    python tests/distributed_worker.py --members=8 --alone --out=ref.npz  # each member alone
    python tests/distributed_worker.py --members=8 --out=mesh.npz         # all over every device
    python tests/distributed_worker.py --members=15 --alone --partitionable --out=ref.npz
    python tests/distributed_worker.py --members=15 --layout=1x8 --out=mesh.npz  # members x data
    python tests/distributed_worker.py --members=4 --out=p0.npz \
        --coordinator=127.0.0.1:PORT --num_processes=2 --process_id=0  # and process_id=1
"""

from __future__ import annotations

import argparse
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import augment, config as config_lib, engine, models, optim

SEED = 3
STEPS = 3
BATCH = 16
NUM_IMAGES = 64


def synthetic_data() -> tuple[np.ndarray, np.ndarray]:
    """The same uint8 images and labels in every process (no file, no download)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (NUM_IMAGES, 28, 28, 1), dtype=np.uint8)
    return images, rng.integers(0, 10, NUM_IMAGES).astype(np.int32)


def make_trainer(mesh: jax.sharding.Mesh, num_members: int,
                 partitionable: bool | None = None) -> Callable[[jax.Array], tuple]:
    """`trainer(keys) -> (state, logits)`: STEPS steps of members `keys` on `mesh`, as train.py runs.

    Bagging, augmentation, dropout, label smoothing, L1 and EMA are on, so every per-member
    random stream and every state field takes part. The compiled step is built once, so members
    trained alone one after another share it. The logits are of images no member trained on.
    `partitionable` draws with that threefry instead of the engine's choice for `mesh`.
    """
    cfg = config_lib.base_config()
    # SGD, not Adam: Adam's first steps are ~lr * sign(grad), so float rounding in an exactly-zero
    # gradient (a conv bias before BatchNorm) would become a full-size step and hide real errors.
    cfg.optim.name = "sgd"
    cfg.optim.learning_rate = 0.05
    cfg.optim.schedule.name = "one_cycle"
    # A random crop, not a rotation: a member whose batch is split over devices augments it in
    # other shapes, so its rounding differs (~1e-6), and a rotation's zero-filled corners make
    # max-pool ties that such rounding breaks the other way (one of 15 members drifted by 1e-2
    # in 3 steps). A crop reads inside the image only: no fill, no ties.
    cfg.augment.crop = 24
    model = models.get("tiny20k")
    tx = optim.build(cfg.optim, steps_per_epoch=STEPS, num_epochs=1)
    strategy = engine.default_strategy()
    step_fn = engine.make_train_step(
        model, tx, mesh=mesh, augment_fn=augment.build(cfg.augment), steps_per_epoch=STEPS,
        batch_size=BATCH, label_smoothing=0.1, l1=1e-4, l1_params="head/kernel", ema_decay=0.9,
        strategy=strategy)
    if partitionable is not None:
        jitted = step_fn.__wrapped__

        def step_fn(*args):
            with jax.threefry_partitionable(partitionable):
                return jitted(*args)
    predict = engine.make_predict(model, mesh=mesh, strategy=strategy)
    images, labels = synthetic_data()
    images_dev, labels_dev = engine.put_replicated(images, mesh), engine.put_replicated(labels, mesh)
    held_out = engine.put_replicated(images[:BATCH][::-1] // 2, mesh)
    members = engine.member_sharding(mesh)

    def trainer(keys: jax.Array) -> tuple[dict, jax.Array]:
        state = engine.init_members(model, tx, keys, jnp.zeros((1, 28, 28, 1)), ema=True, mesh=mesh)
        metrics = jax.device_put(engine.new_metrics(num_members), members)
        # A bag of exactly one epoch (STEPS * BATCH of the NUM_IMAGES): every member bags, and no
        # batch reads past the end of its epoch order.
        bags = engine.member_bags(keys, NUM_IMAGES, STEPS * BATCH)
        order = jax.device_put(engine.epoch_order(keys, bags, 0, STEPS, BATCH), members)
        step = jnp.int32(0)
        for _ in range(STEPS):
            state, metrics, step = step_fn(state, metrics, step, images_dev, labels_dev, order)
        return {**state, "metrics": metrics}, predict(state, held_out, jax.random.PRNGKey(0))
    return trainer


def to_flat_host(state: dict, logits: jax.Array) -> dict[str, np.ndarray]:
    """Every state leaf, keyed by its path, and the logits, each gathered into one host array."""
    flat = {jax.tree_util.keystr(path): engine.to_host(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(state)}
    return {**flat, "logits": engine.to_host(logits)}


def members_per_device(x: jax.Array) -> np.ndarray:
    """[this process's devices, members on each]: the member indices each local shard holds."""
    shards = sorted(x.addressable_shards, key=lambda s: s.device.id)
    return np.array([np.arange(x.shape[0])[s.index[0]] for s in shards])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, required=True)
    parser.add_argument("--alone", action="store_true",
                        help="train each member alone on one device (the reference)")
    parser.add_argument("--partitionable", action="store_true",
                        help="with --alone: draw as members split over devices do (the reference for --layout MxD, D > 1)")
    parser.add_argument("--layout", help="MxD: members x data devices (default: the engine's layout)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--coordinator", help="multi-host: host:port of process 0 (as mnist_jax.main)")
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    args = parser.parse_args()
    if args.coordinator:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                   initialization_timeout=120)

    if args.alone:
        trainer = make_trainer(engine.make_mesh(1, devices=jax.devices()[:1]), 1,
                               partitionable=True if args.partitionable else None)
        alone = [to_flat_host(*trainer(engine.member_keys(SEED + i, 1))) for i in range(args.members)]
        np.savez(args.out, **{k: np.concatenate([a[k] for a in alone]) for k in alone[0]})
        return

    mesh = (engine.layout_mesh(tuple(map(int, args.layout.split("x")))) if args.layout
            else engine.make_mesh(args.members, batch_sizes=(BATCH,)))
    state, logits = make_trainer(mesh, args.members)(engine.member_keys(SEED, args.members))
    kernel = state["params"]["head"]["kernel"]
    np.savez(args.out, **to_flat_host(state, logits), process_count=jax.process_count(),
             mesh_devices=[d.id for d in mesh.devices.flat], mesh_shape=list(mesh.devices.shape),
             members_per_device=members_per_device(kernel),
             logits_members_per_device=members_per_device(logits),
             fully_addressable=kernel.is_fully_addressable)
    if args.coordinator:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()

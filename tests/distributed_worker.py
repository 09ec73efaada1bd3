"""Subprocess half of tests/test_distributed.py: trains a few tiny20k members with the engine.

It runs in its own process because the device count (XLA_FLAGS) and `jax.distributed` are fixed
when JAX starts. It saves what it trained, gathered to the host, to an .npz the test compares.

    python tests/distributed_worker.py --members=8 --devices=one --out=ref.npz
    python tests/distributed_worker.py --members=8 --devices=all --out=mesh.npz
    python tests/distributed_worker.py --members=4 --devices=all --out=p0.npz \
        --port=PORT --num_processes=2 --process_id=0
"""

from __future__ import annotations

import argparse

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


def train(num_members: int, mesh: jax.sharding.Mesh) -> tuple[dict, jax.Array]:
    """STEPS steps of `num_members` members laid out on `mesh`, as train.py runs them.

    Bagging, augmentation, dropout, label smoothing, L1 and EMA are on, so every per-member
    random stream and every state field takes part. Returns the state (with the epoch metrics)
    and the logits of images the members did not train on.
    """
    cfg = config_lib.base_config()
    cfg.optim.name = "adamw"
    cfg.optim.weight_decay = 1e-4
    cfg.optim.schedule.name = "one_cycle"
    cfg.augment.rotation = 10.0
    model = models.get("tiny20k")
    tx = optim.build(cfg.optim, steps_per_epoch=STEPS, num_epochs=1)
    strategy = engine.default_strategy()
    keys = engine.member_keys(SEED, num_members)
    state = engine.init_members(model, tx, keys, jnp.zeros((1, 28, 28, 1)), ema=True, mesh=mesh)
    metrics = jax.device_put(engine.new_metrics(num_members), engine.member_sharding(mesh))

    images, labels = synthetic_data()
    bags = engine.member_bags(keys, NUM_IMAGES, NUM_IMAGES // 2)
    order = jax.device_put(engine.epoch_order(keys, bags, 0, STEPS, BATCH), engine.member_sharding(mesh))
    step_fn = engine.make_train_step(
        model, tx, mesh=mesh, augment_fn=augment.build(cfg.augment), steps_per_epoch=STEPS,
        batch_size=BATCH, label_smoothing=0.1, l1=1e-4, l1_params="head/kernel", ema_decay=0.9,
        strategy=strategy)
    images_dev, labels_dev = engine.put_replicated(images, mesh), engine.put_replicated(labels, mesh)
    for step in range(STEPS):
        state, metrics = step_fn(state, metrics, jnp.int32(step), images_dev, labels_dev, order)

    predict = engine.make_predict(model, mesh=mesh, strategy=strategy, use_ema=False)
    held_out = engine.put_replicated(synthetic_data()[0][:BATCH][::-1].copy() // 2, mesh)
    return {**state, "metrics": metrics}, predict(state, held_out, jax.random.PRNGKey(0))


def members_per_device(x: jax.Array) -> np.ndarray:
    """[this process's devices, members on each]: the member indices each local shard holds."""
    shards = sorted(x.addressable_shards, key=lambda s: s.device.id)
    return np.array([np.arange(x.shape[0])[s.index[0]] for s in shards])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, required=True)
    parser.add_argument("--devices", choices=["one", "all"], required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--port", type=int, help="multi-host: the coordinator's port on 127.0.0.1")
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    args = parser.parse_args()
    if args.port:
        jax.distributed.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id,
                                   initialization_timeout=120)

    devices = jax.devices() if args.devices == "all" else jax.devices()[:1]
    mesh = engine.make_mesh(args.members, devices=devices)
    state, logits = train(args.members, mesh)
    flat = {jax.tree_util.keystr(path): engine.to_host(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(state)}
    kernel = state["params"]["head"]["kernel"]
    np.savez(args.out, **flat, logits=engine.to_host(logits),
             process_count=jax.process_count(), mesh_devices=[d.id for d in mesh.devices.flat],
             members_per_device=members_per_device(kernel),
             logits_members_per_device=members_per_device(logits),
             fully_addressable=kernel.is_fully_addressable)
    if args.port:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()

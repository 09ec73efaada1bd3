"""Subprocess half of tests/test_distributed.py: trains a few tiny20k members with the engine.

It runs in its own process because the device count (XLA_FLAGS) and `jax.distributed` are fixed
when JAX starts. It writes what it trained to an .npz; the test compares the files.

    python tests/distributed_worker.py mesh OUT.npz         # 4 forced devices vs 1 device
    python tests/distributed_worker.py single MEMBERS OUT.npz
    python tests/distributed_worker.py multihost MEMBERS OUT.npz PORT PROCESS_ID NUM_PROCESSES
"""

from __future__ import annotations

import sys

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

    Augmentation, dropout, label smoothing, L1 and EMA are all on, so every per-member random
    stream and every state field is exercised. Returns the state and logits on held-out images.
    """
    cfg = config_lib.base_config()
    cfg.optim.name = "adamw"
    cfg.optim.weight_decay = 1e-4
    cfg.optim.schedule.name = "one_cycle"
    cfg.augment.rotation = 10.0
    cfg.augment.shift = 0.1
    model = models.get("tiny20k")
    tx = optim.build(cfg.optim, steps_per_epoch=STEPS, num_epochs=1)
    strategy = engine.default_strategy()
    keys = engine.member_keys(SEED, num_members)
    sample = jnp.zeros((1, 28, 28, 1), jnp.float32)
    state = engine.init_members(model, tx, keys, sample, ema=True, mesh=mesh)
    metrics = jax.device_put(engine.new_metrics(num_members), engine.member_sharding(mesh))

    images, labels = synthetic_data()
    bags = engine.member_bags(keys, NUM_IMAGES, NUM_IMAGES // 2)  # bagged: a real per-member choice
    order = jax.device_put(engine.epoch_order(keys, bags, 0, STEPS, BATCH), engine.member_sharding(mesh))
    step_fn = engine.make_train_step(
        model, tx, mesh=mesh, augment_fn=augment.build(cfg.augment), steps_per_epoch=STEPS,
        batch_size=BATCH, label_smoothing=0.1, l1=1e-4, l1_params="head/kernel", ema_decay=0.9,
        strategy=strategy)
    images_dev = engine.put_replicated(images, mesh)
    labels_dev = engine.put_replicated(labels, mesh)
    for step in range(STEPS):
        state, metrics = step_fn(state, metrics, jnp.int32(step), images_dev, labels_dev, order)

    predict = engine.make_predict(model, mesh=mesh, strategy=strategy, use_ema=False)
    held_out = engine.put_replicated(images[::-1][:BATCH].copy(), mesh)
    logits = predict(state, held_out, jax.random.PRNGKey(0))
    return {**state, "metrics": metrics}, logits


def flat_host(tree: dict, prefix: str) -> dict[str, np.ndarray]:
    """Every leaf as one (gathered) host array, keyed by its path."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {prefix + jax.tree_util.keystr(path): engine.to_host(leaf) for path, leaf in leaves}


def members_per_device(x: jax.Array) -> np.ndarray:
    """[local devices, members on it]: the member indices each addressable shard of `x` holds."""
    shards = sorted(x.addressable_shards, key=lambda s: s.device.id)
    return np.array([np.arange(x.shape[0])[s.index[0]] for s in shards])


def run_mesh(out: str) -> None:
    """8 members on the 4-device mesh and on a 1-device mesh of the same process."""
    results = {}
    for name, devices in (("sharded", jax.devices()), ("single", jax.devices()[:1])):
        mesh = engine.make_mesh(8, devices=devices)
        state, logits = train(8, mesh)
        kernel = state["params"]["head"]["kernel"]
        results |= flat_host(state, f"{name}/") | {
            f"{name}/logits": engine.to_host(logits),
            f"{name}/mesh_devices": np.array([d.id for d in mesh.devices.flat]),
            f"{name}/members_per_device": members_per_device(kernel),
            f"{name}/logits_members_per_device": members_per_device(logits),
        }
    np.savez(out, **results)


def run_single(num_members: int, out: str) -> None:
    state, logits = train(num_members, engine.make_mesh(num_members, devices=jax.devices()[:1]))
    np.savez(out, **flat_host(state, ""), logits=engine.to_host(logits))


def run_multihost(num_members: int, out: str, port: int, process_id: int, num_processes: int) -> None:
    """One process of a multi-host run: the mesh spans every device of every process."""
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id,
                               initialization_timeout=120)
    mesh = engine.make_mesh(num_members)
    state, logits = train(num_members, mesh)
    kernel = state["params"]["head"]["kernel"]
    np.savez(out, **flat_host(state, ""), logits=engine.to_host(logits),
             process_count=jax.process_count(), global_devices=jax.device_count(),
             mesh_devices=np.array([d.id for d in mesh.devices.flat]),
             members_per_device=members_per_device(kernel),
             fully_addressable=kernel.is_fully_addressable)
    jax.distributed.shutdown()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "mesh":
        run_mesh(args[0])
    elif mode == "single":
        run_single(int(args[0]), args[1])
    elif mode == "multihost":
        run_multihost(int(args[0]), args[1], *map(int, args[2:]))
    else:
        sys.exit(f"unknown mode {mode!r}; use mesh, single or multihost")

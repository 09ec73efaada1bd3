"""The train loop: data on the device, all members in one compiled call, resumable at any step.

The loop only dispatches compiled calls and, every `log_every_steps`, reads back a handful of
per-member sums for the progress line; batches, augmentation and the epoch order never leave
the device.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mnist_jax import augment, checkpoint, config as config_lib, data, engine, evaluate, models, optim
from mnist_jax.runfiles import append_jsonl, truncate_jsonl, write_json


class TrainingDiverged(RuntimeError):
    """A member's loss stopped being finite; the run stops and keeps its last good checkpoint."""


class Interrupted(RuntimeError):
    """SIGINT/SIGTERM: the state was saved at the current step; the same command resumes."""


class _StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks between compiled calls."""

    def __init__(self):
        self.received: int | None = None

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
    return models.get(config.model, num_classes=num_classes, dtype=dtype,
                      **config.model_overrides.to_dict())


def _progress(epoch: int, num_epochs: int, done: int, total: int, loss: float, acc: float,
              images_per_s: float, eta_s: float) -> None:
    if not sys.stderr.isatty():
        return
    width = 24
    bar = "#" * int(width * done / total) + "-" * (width - int(width * done / total))
    sys.stderr.write(f"\repoch {epoch}/{num_epochs} [{bar}] {done}/{total} loss {loss:.4f} "
                     f"acc {acc:.4f} {images_per_s:,.0f} img/s ETA {eta_s:4.0f}s ")
    sys.stderr.flush()


def load_split(config: ml_collections.ConfigDict, split: str) -> data.Dataset:
    """A split of the config's dataset (train cut to `train_subset` when that is set)."""
    seed = None if config.validation_seed < 0 else config.validation_seed
    ds = data.load(config.dataset, split, config.data_dir or None, image_size=config.image_size,
                   validation_size=config.validation_size, validation_seed=seed)
    if split == "train" and config.train_subset:
        ds = ds._replace(images=ds.images[:config.train_subset], labels=ds.labels[:config.train_subset])
    return ds


class Run(NamedTuple):
    """What a config builds before any data is on the device: model, optimiser, layout, state."""
    model: Any
    tx: Any
    mesh: Any
    strategy: str
    keys: jax.Array
    state: dict
    metrics: dict


def init_run(config: ml_collections.ConfigDict, num_classes: int, steps_per_epoch: int) -> Run:
    model = build_model(config, num_classes)
    tx = optim.build(config.optim, steps_per_epoch=steps_per_epoch, num_epochs=config.num_epochs)
    strategy = engine.default_strategy() if config.member_strategy == "auto" else config.member_strategy
    mesh = engine.make_mesh(config.num_members)
    keys = engine.member_keys(config.seed, config.num_members)
    sample = jnp.zeros((1, config.image_size, config.image_size, 1), jnp.float32)
    state = engine.init_members(model, tx, keys, sample, ema=bool(config.ema_decay), mesh=mesh)
    metrics = jax.device_put(engine.new_metrics(config.num_members), engine.member_sharding(mesh))
    return Run(model, tx, mesh, strategy, keys, state, metrics)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Train the ensemble described by `config` in `workdir` (resuming if it holds a checkpoint),
    then evaluate it once on the test split and write the run directory. Returns results."""
    config_lib.validate(config)
    workdir = Path(workdir)
    primary = jax.process_index() == 0
    train = load_split(config, "train")
    val = load_split(config, "validation") if config.validation_size else None
    config_lib.check_batch_fits(config, len(train.labels))

    num_members = config.num_members
    pool = config_lib.member_pool_size(config, len(train.labels))
    steps_per_epoch = pool // config.batch_size
    total_steps = steps_per_epoch * config.num_epochs
    model, tx, mesh, strategy, keys, state, metrics = init_run(
        config, len(train.class_names), steps_per_epoch)
    step, wall_time = 0, 0.0

    mngr = checkpoint.manager(workdir, config.keep_checkpoints)
    fingerprint = config_lib.fingerprint(config)
    restored = checkpoint.restore_latest(mngr, {"state": state, "metrics": metrics}, fingerprint)
    if restored is not None:
        tree, meta = restored
        state, metrics, step, wall_time = tree["state"], tree["metrics"], meta["step"], meta["wall_time_s"]
        logging.info("resumed from step %d (epoch %d)", step, step // steps_per_epoch)
    if primary:
        write_json(workdir / "config.json", {**json.loads(config.to_json()),
                                              "class_names": list(train.class_names)})
        truncate_jsonl(workdir / "metrics.jsonl", keep_epochs_upto=step // steps_per_epoch)

    images = engine.put_replicated(train.images, mesh)
    labels = engine.put_replicated(train.labels, mesh)
    bags = jax.device_put(engine.member_bags(keys, len(train.labels), pool), engine.member_sharding(mesh))
    common = dict(mesh=mesh, steps_per_epoch=steps_per_epoch, batch_size=config.batch_size,
                  label_smoothing=config.label_smoothing, l1=config.l1, l1_params=config.l1_params,
                  ema_decay=config.ema_decay, strategy=strategy)
    augment_fn = augment.build(config.augment)
    step_augmented = engine.make_train_step(model, tx, augment_fn=augment_fn, **common)
    step_clean = engine.make_train_step(model, tx, augment_fn=None, **common)
    predict = engine.make_predict(model, mesh=mesh, strategy=strategy, use_ema=bool(config.ema_decay))
    val_split = evaluate.device_split(val, mesh, config.eval_batch_size) if val else None

    def save() -> None:
        if mngr.latest_step() == step:  # a signal right after an epoch's checkpoint: it is saved
            return
        meta = {"config": fingerprint, "step": step, "wall_time_s": wall_time}
        checkpoint.save(mngr, step, {"state": state, "metrics": metrics}, meta)

    with _StopSignal() as stop:
        while step < total_steps:
            epoch = step // steps_per_epoch
            clean = epoch >= config.num_epochs - config.clean_final_epochs
            train_step = step_clean if clean else step_augmented
            order = jax.device_put(
                engine.epoch_order(keys, bags, epoch, steps_per_epoch, config.batch_size),
                engine.member_sharding(mesh))
            start, start_step = time.perf_counter(), step
            while step < (epoch + 1) * steps_per_epoch:
                if stop.received is not None:
                    wall_time += time.perf_counter() - start
                    save()
                    raise Interrupted(f"stopped by signal {stop.received} at step {step}; "
                                      f"the state is saved: run the same command to resume")
                n = min(config.log_every_steps, (epoch + 1) * steps_per_epoch - step)
                for _ in range(n):  # dispatched asynchronously; the read below waits for them
                    state, metrics = train_step(state, metrics, jnp.int32(step), images, labels, order)
                    step += 1
                sums = jax.tree.map(engine.to_host, metrics)  # one small read every n steps
                bad = np.flatnonzero(sums["first_bad_step"] >= 0)
                if bad.size:
                    raise TrainingDiverged(
                        f"member {int(bad[0])} got a non-finite loss at step "
                        f"{int(sums['first_bad_step'][bad[0]])}; stopped, the last good checkpoint "
                        f"is kept in {mngr.directory} (lower the learning rate or add grad_clip)")
                elapsed = time.perf_counter() - start
                ips = (step - start_step) * config.batch_size * num_members / max(elapsed, 1e-9)
                _progress(epoch + 1, config.num_epochs, step - epoch * steps_per_epoch, steps_per_epoch,
                          float(sums["loss_sum"].sum() / sums["count"].clip(1).sum() * config.batch_size),
                          float(sums["correct"].sum() / sums["count"].clip(1).sum()), ips,
                          ((epoch + 1) * steps_per_epoch - step) * elapsed / (step - start_step))
            epoch_time = time.perf_counter() - start
            wall_time += epoch_time
            record = {
                "epoch": epoch + 1, "step": step,
                "learning_rate": float(engine.to_host(optim.current_learning_rate(state["opt_state"]))[0]),
                "train_loss": (sums["loss_sum"] / np.maximum(sums["count"] // config.batch_size, 1)).tolist(),
                "train_accuracy": (sums["correct"] / np.maximum(sums["count"], 1)).tolist(),
                "images_per_s": (step - start_step) * config.batch_size * num_members / epoch_time,
                "wall_time_s": wall_time,
            }
            if val_split is not None:
                record.update(evaluate.split_metrics(predict, state, val_split, prefix="val"))
            if sys.stderr.isatty():
                sys.stderr.write("\n")
            logging.info("epoch %d/%d  train loss %.4f acc %.4f  %s lr %.2e  %.0f img/s",
                         epoch + 1, config.num_epochs, np.mean(record["train_loss"]),
                         np.mean(record["train_accuracy"]),
                         f"val acc {np.mean(record['val_accuracy']):.4f} ensemble "
                         f"{record['val_ensemble_accuracy']:.4f} " if val_split else "",
                         record["learning_rate"], record["images_per_s"])
            if primary:
                append_jsonl(workdir / "metrics.jsonl", record)
            metrics = jax.device_put(engine.new_metrics(num_members), engine.member_sharding(mesh))
            if (epoch + 1) % config.checkpoint_every_epochs == 0 or step == total_steps:
                save()

    # The test split is read here, once, after every choice was made on validation.
    test = load_split(config, "test")
    return evaluate.finish_run(config, workdir, state, model, mesh, strategy, predict, test,
                               step=step, wall_time_s=wall_time)

"""The train loop: data on the device, all members in one compiled call, resumable at any step.

The loop only dispatches compiled calls and, every `log_every_steps`, reads back a handful of
per-member sums for the progress line; batches, augmentation and the epoch order never leave
the device. What a config builds is `mnist_jax.run`'s; what the run folder holds is
`mnist_jax.runfolder`'s.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mnist_jax import (checkpoint, config as config_lib, data, engine, metrics, optim,
                       platform, run as run_lib, runfolder)
from mnist_jax.evaluate import Evaluator, validation_record


class TrainingDiverged(RuntimeError):
    """A member's loss stopped being finite; the run stops and keeps its last good checkpoint."""


class Interrupted(RuntimeError):
    """SIGINT/SIGTERM: the state was saved at the current step; the same command resumes."""


class _StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks between compiled calls (`dispatch_look`)."""

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


def dispatch_look(stop: _StopSignal, epoch_metrics: dict[str, jax.Array], mesh: jax.sharding.Mesh
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """What the loop reads every `log_every_steps`, dispatched without waiting (`read_look`
    reads it): the stop signal as it stands (this process's, or multi-host any process's) and a
    copy of the epoch's per-member sums (the next chunk donates their buffers).

    The loop reads a look only after dispatching the next chunk of steps, so the devices never
    wait on the host. Multi-host, signal and sums come from one compiled gather that every
    process calls at the same steps, so all read the same signal, stop at one step and save one
    checkpoint together (a TPU preemption signals one host). In one process the copy stays
    where the sums are: no collective, which on the CPU, queued behind the chunk, can starve the
    devices' shared thread pool."""
    received = stop.received
    if jax.process_count() == 1:
        return np.int32(received or 0), _copy_sums(epoch_metrics)
    per_device = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
    signals = jax.make_array_from_callback((mesh.devices.size,), per_device,
                                           lambda index: np.array([received or 0], np.int32))
    return _gather_check(mesh)(signals, epoch_metrics)


def read_look(look: tuple[jax.Array, dict[str, jax.Array]]) -> tuple[int | None, dict[str, np.ndarray]]:
    """The signal (None: none) and the sums of a look, on the host, once its chunk has run."""
    signal_max, sums = look
    return int(signal_max) or None, jax.tree.map(np.asarray, sums)


@jax.jit
def _copy_sums(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return jax.tree.map(jnp.copy, sums)


@functools.cache
def _gather_check(mesh: jax.sharding.Mesh) -> Callable:
    """One compiled call: the largest signal and the sums, replicated onto every device, so each
    process reads them from its own devices."""
    return jax.jit(lambda signals, sums: (signals.max(), sums), out_shardings=engine.replicated(mesh))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Train the ensemble described by `config` in `workdir` (resuming if it holds a checkpoint),
    then evaluate it once on the test split and write the run folder. Returns results.json's
    contents. A second process on the same `workdir` is refused while this one trains.

    A grouped config (`config.groups`) trains each group in its own run folder under `workdir`
    (`runfolder.group_dir`), one after another, then evaluates all members as one ensemble."""
    run_lib.validate(config)
    workdir = runfolder.local_folder(workdir)
    if config.groups:
        return _train_groups(config, workdir)
    primary = jax.process_index() == 0
    train = run_lib.load_split(config, "train")
    val = run_lib.load_split(config, "validation") if config.validation_size else None
    config_lib.check_batch_fits(config, len(train.labels))
    pool = config_lib.member_pool_size(config, len(train.labels))
    steps_per_epoch = pool // config.batch_size
    setup = run_lib.setup(config, len(train.class_names), steps_per_epoch)
    with runfolder.lock(workdir) if primary else contextlib.nullcontext():
        state = run_lib.restore(setup, workdir)
        if state is None:
            state = run_lib.init_state(setup)
        else:
            logging.info("resumed from step %d (epoch %d)", state.step, state.step // steps_per_epoch)
        if primary:
            runfolder.write_config(workdir, config, train.class_names)
        writer = runfolder.MetricWriter(
            workdir, num_epochs=config.num_epochs, resume_epoch=state.step // steps_per_epoch,
            enabled=primary, member_labels=[config_lib.sweep_label(config_lib.member_sweep(config, i))
                                            for i in range(config.num_members)],
            progress_seconds=config.progress_seconds)
        predict = run_lib.predictor(setup)  # compiled once: validation every epoch, then test
        try:
            state = _train(setup, state, predict, workdir, train, val, writer, pool)
        finally:
            writer.close()
        # The test split is read here, once, after every choice was made on validation.
        return _test(setup, state, predict, workdir, run_lib.load_split(config, "test"), val)


def _train_groups(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    """Train every group (resuming each from its own checkpoints), then write the whole
    ensemble's results from the groups' saved predictions."""
    groups = config_lib.group_configs(config)
    primary = jax.process_index() == 0
    with runfolder.lock(workdir) if primary else contextlib.nullcontext():
        if primary:
            runfolder.write_config(workdir, config, run_lib.load_split(config, "train").class_names)
        for i, (name, group) in enumerate(groups.items()):
            logging.info("group %d/%d %r: %d x %s", i + 1, len(groups), name, group.num_members,
                         group.model)
            train_and_evaluate(group, runfolder.group_dir(workdir, name))
        results, predictions = combine_groups(config, workdir)
        if primary:
            test = run_lib.load_split(config, "test")
            runfolder.write_results(workdir, results, predictions)
            runfolder.write_pictures(workdir, test.images, test.labels,
                                     metrics.probs_as_logits(predictions["probs"]), test.class_names,
                                     groups=list(groups), member_names=runfolder.member_names(results))
        return results


def combine_groups(config: ml_collections.ConfigDict, workdir: Path
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """results.json's contents and the predictions of a grouped run, from its finished groups:
    every row once, named by group and model; the ensemble is the mean of all members'
    probabilities, on test, on validation and (when every group has it) with TTA."""
    groups = config_lib.group_configs(config)
    members, parts = [], {}
    wall_time, rates, trajectories = 0.0, [], 0
    for name, group in groups.items():
        folder = runfolder.group_dir(workdir, name)
        results = runfolder.read_results(folder)
        predictions = results and runfolder.read_predictions(folder, results["num_classes"])
        if not predictions:
            raise runfolder.missing_predictions_error(folder)
        for member in results["members"]:  # trajectories numbered across the groups
            members.append({**member, "index": len(members), "group": name,
                            "member": trajectories + member.get("member", member["index"])})
        trajectories += group.num_members
        for key, value in predictions.items():
            parts.setdefault(key, []).append(value)
        wall_time += results["wall_time_s"]
        rates.append(results["train_images_per_s"])
    predictions = {"labels": parts["labels"][0]}
    for key in ("probs", "tta_probs", "val_probs", "val_tta_probs"):
        if len(parts.get(key, ())) == len(groups):
            predictions[key] = np.concatenate(parts[key])
    if "val_probs" in predictions:
        predictions["val_labels"] = parts["val_labels"][0]
    def summarize(probs_key: str, labels_key: str, prefix: str) -> dict[str, Any]:
        return metrics.summarize(metrics.probs_as_logits(predictions[probs_key]),
                                 predictions[labels_key], prefix=prefix)

    ensemble = _ensemble_record(summarize("probs", "labels", "test"))
    if "val_probs" in predictions:
        val = summarize("val_probs", "val_labels", "")
        ensemble["val_accuracy"], ensemble["val_nll"] = val["accuracy"], val["nll"]
    if "tta_probs" in predictions:
        tta = summarize("tta_probs", "labels", "")
        ensemble["test_accuracy_tta"], ensemble["test_nll_tta"] = tta["accuracy"], tta["nll"]
    if "val_tta_probs" in predictions:
        val_tta = summarize("val_tta_probs", "val_labels", "")
        ensemble["val_accuracy_tta"], ensemble["val_nll_tta"] = val_tta["accuracy"], val_tta["nll"]
    results = {
        "dataset": config.dataset,
        "model": "+".join(dict.fromkeys(g.model for g in groups.values())),
        "num_members": trajectories,  # trained members, not rows
        "num_classes": predictions["probs"].shape[-1],
        "groups": {name: {"model": g.model, "num_members": g.num_members, "seed": g.seed}
                   for name, g in groups.items()},
        "members": members,
        "ensemble": ensemble,
        "wall_time_s": wall_time,
        "train_images_per_s": None if None in rates else float(np.mean(rates)),
        **_machine_record(),
    }
    return results, predictions


def _machine_record() -> dict[str, Any]:
    """Where results.json's numbers were measured; `accelerator_fallback` names a GPU or TPU that
    was present but left unused (`platform.accelerator_fallback`)."""
    return {"device": platform.device_description(), "conv_backend": platform.conv_backend(),
            "malloc": platform.malloc_mode(), "platform_setup": platform.setup_record(),
            "accelerator_fallback": platform.accelerator_fallback(), "jax_version": jax.__version__}


def _ensemble_record(summary: dict[str, Any]) -> dict[str, Any]:
    """results.json's ensemble test numbers from `metrics.summarize(..., prefix="test")`."""
    return {
        "test_accuracy": summary["test_accuracy"],
        "test_accuracy_vote": summary["test_accuracy_vote"],
        "test_accuracy_mean_logit": summary["test_accuracy_mean_logit"],
        "test_nll": summary["test_nll"],
        "test_ece": summary["test_ece"],
        "test_brier": summary["test_brier"],
        "test_errors": summary["test_errors"],
        "test_gain_over_mean_member": summary["test_ensemble_gain"],
        "test_size_curve": summary["test_size_curve"],
    }


def _train(setup: run_lib.Setup, state: run_lib.State, predict: Callable, workdir: Path,
           train: data.Dataset, val: data.Dataset | None, writer: runfolder.MetricWriter,
           pool: int) -> run_lib.State:
    """Each member draws its epochs from its own `pool` images (its bag, or all of them)."""
    config, mesh = setup.config, setup.mesh
    steps_per_epoch = pool // config.batch_size
    num_members = config.num_members
    total_steps = steps_per_epoch * config.num_epochs
    members, epoch_metrics, step, wall_time = state
    keys = run_lib.member_keys(setup)
    mngr = checkpoint.manager(workdir, config.keep_checkpoints)
    images = engine.put_replicated(train.images, mesh)
    labels = engine.put_replicated(train.labels, mesh)
    bags = jax.device_put(engine.member_bags(keys, len(train.labels), pool), engine.member_sharding(mesh))
    steps_per_call = run_lib.steps_per_call(config)
    programs = {(clean, k): run_lib.train_step(setup, steps_per_epoch=steps_per_epoch, clean=clean,
                                               steps_per_call=k)
                for clean in (False, True) for k in {1, steps_per_call}}  # compiled when first called
    validation = (Evaluator(predict, val.images, val.labels, mesh=mesh,
                            batch_size=config.eval_batch_size) if val else None)
    snapshot_at = {epoch: j for j, epoch in enumerate(optim.snapshot_epochs(config.snapshot, config.num_epochs))}

    def save() -> None:
        if mngr.latest_step() == step:  # a signal right after an epoch's checkpoint: it is saved
            return
        run_lib.save(setup, mngr, run_lib.State(members, epoch_metrics, step, wall_time))

    signum = None  # the stop agreed at the last look read, acted on before the next call
    with _StopSignal() as stop, contextlib.closing(mngr):  # closing waits for the last save
        while step < total_steps:
            epoch = step // steps_per_epoch
            clean = epoch >= config.num_epochs - config.clean_final_epochs
            order = jax.device_put(
                engine.epoch_order(keys, bags, epoch, steps_per_epoch, config.batch_size),
                engine.member_sharding(mesh))
            start, start_step = time.perf_counter(), step
            epoch_end = (epoch + 1) * steps_per_epoch

            def read(look, look_step: int) -> dict[str, np.ndarray]:
                """Acts on a look: the stop it carries, a diverged member, a progress line."""
                nonlocal signum
                signum, sums = read_look(look)
                bad = np.flatnonzero(sums["first_bad_step"] >= 0)
                if bad.size:
                    raise TrainingDiverged(
                        f"member {int(bad[0])} got a non-finite loss at step "
                        f"{int(sums['first_bad_step'][bad[0]])}; stopped, the last good checkpoint "
                        f"is kept in {mngr.directory} (lower the learning rate or add grad_clip)")
                elapsed = time.perf_counter() - start
                count = sums["count"].clip(1).sum()
                done = look_step - start_step
                writer.progress(epoch + 1, look_step - epoch * steps_per_epoch, steps_per_epoch,
                                float(sums["loss_sum"].sum() / count * config.batch_size),
                                float(sums["correct"].sum() / count),
                                done * config.batch_size * num_members / max(elapsed, 1e-9),
                                (epoch_end - look_step) * elapsed / done,
                                (total_steps - look_step) * elapsed / done)
                return sums

            pending = None  # the last look dispatched, read once the next chunk is dispatched
            while step < epoch_end:
                if signum is not None:
                    wall_time += time.perf_counter() - start
                    save()
                    raise Interrupted(f"stopped by signal {signum} at step {step}; "
                                      f"the state is saved: run the same command to resume")
                n = min(config.log_every_steps, epoch_end - step)
                step_on_device = jnp.int32(step)  # then counted on the device, call to call
                while n:  # dispatched asynchronously; reading a look waits for its chunk
                    k = steps_per_call if n >= steps_per_call else 1
                    members, epoch_metrics, step_on_device = programs[clean, k](
                        members, epoch_metrics, step_on_device, images, labels, order)
                    step, n = step + k, n - k
                look = dispatch_look(stop, epoch_metrics, mesh), step
                if pending is not None:
                    read(*pending)
                pending = look
            sums = read(*pending)  # the epoch's last look, read at once: its sums are the epoch's
            epoch_time = time.perf_counter() - start
            wall_time += epoch_time
            record = {
                "epoch": epoch + 1, "step": step,
                "learning_rate": float(engine.to_host(optim.current_learning_rate(members["opt_state"]))[0]),
                "train_loss": (sums["loss_sum"] / np.maximum(sums["count"] // config.batch_size, 1)).tolist(),
                "train_accuracy": (sums["correct"] / np.maximum(sums["count"], 1)).tolist(),
                "images_per_s": (step - start_step) * config.batch_size * num_members / epoch_time,
                "wall_time_s": wall_time,
                # A sweep's per-member values, so every per-member row says what it trained with.
                **{f"sweep.{path}": list(values) for path, values in config_lib.swept(config).items()},
            }
            if validation is not None:
                record.update(validation_record(validation.run(run_lib.live_weights(setup, members))))
            writer.write(record)
            epoch_metrics = run_lib.new_metrics(setup)
            if epoch + 1 in snapshot_at:  # a cycle ends: its weights become an ensemble row
                members = engine.take_snapshot(members, snapshot_at[epoch + 1],
                                               use_ema=run_lib.ema_on(config), mesh=mesh)
            if step == total_steps and config.swa.epochs:  # the SWA weights' own BN statistics
                recompute = run_lib.recompute_swa_bn(setup, steps_per_epoch=steps_per_epoch, clean=clean)
                members = recompute(members, images, order)
            if (epoch + 1) % config.checkpoint_every_epochs == 0 or step == total_steps:
                save()
    return run_lib.State(members, epoch_metrics, step, wall_time)


def _test(setup: run_lib.Setup, state: run_lib.State, predict: Callable, workdir: Path,
          test: data.Dataset, val: data.Dataset | None) -> dict[str, Any]:
    """Evaluate the finished ensemble on the test split, once, and write results, predictions
    (with the validation split's, for judging ensembles of runs on validation) and pictures.
    Every ensemble row is scored: one per member, or each of its snapshots, plus its SWA row."""
    config = setup.config
    rows = run_lib.ensemble_rows(setup, state.members)

    def row_logits(split: data.Dataset, predict: Callable, tta_samples: int = 0) -> np.ndarray:
        return Evaluator(predict, split.images, split.labels, mesh=setup.mesh,
                         batch_size=config.eval_batch_size, tta_samples=tta_samples).row_logits(rows)

    logits = row_logits(test, predict)
    summary = metrics.summarize(logits, test.labels, prefix="test")
    predictions = {"probs": np.asarray(metrics.member_probs(logits)), "labels": test.labels}
    records = runfolder.read_metrics(workdir)
    val_summary = None
    if val is not None:
        val_logits = row_logits(val, predict)
        val_summary = metrics.summarize(val_logits, val.labels, prefix="")
        predictions["val_probs"] = np.asarray(metrics.member_probs(val_logits))
        predictions["val_labels"] = val.labels
    kinds = run_lib.row_records(config)
    results = {
        "dataset": config.dataset,
        "model": config.model,
        "num_members": config.num_members,
        "num_classes": len(test.class_names),
        "checkpoint_step": state.step,
        "members": [
            {"index": m * len(kinds) + r, "member": m, **kind, "model": config.model,
             "seed": config.seed + m,
             **({"swept": config_lib.member_sweep(config, m)} if config_lib.swept(config) else {}),
             "val_accuracy": None if val_summary is None else val_summary["member_accuracy"][m * len(kinds) + r],
             "test_accuracy": summary["test_member_accuracy"][m * len(kinds) + r],
             "test_nll": summary["test_member_nll"][m * len(kinds) + r]}
            for m in range(config.num_members) for r, kind in enumerate(kinds)],
        "ensemble": {
            "val_accuracy": None if val_summary is None else val_summary["accuracy"],
            "val_nll": None if val_summary is None else val_summary["nll"],
            **_ensemble_record(summary),
        },
        "wall_time_s": state.wall_time_s,
        "train_images_per_s": (np.mean([r["images_per_s"] for r in records]) if records else None),
        "mesh": {"member": setup.mesh.shape[engine.MEMBER_AXIS], "data": setup.mesh.shape[engine.DATA_AXIS]},
        **_machine_record(),
    }
    if config.tta_samples:  # validation's kept beside the plain ones, so a plan can choose TTA
        tta_predict = run_lib.predictor(setup, tta=True)
        for split, name, key in ((test, "test", "tta_probs"), (val, "val", "val_tta_probs")):
            if split is None:
                continue
            tta_logits = row_logits(split, tta_predict, config.tta_samples)
            tta = metrics.summarize(tta_logits, split.labels, prefix="")
            predictions[key] = np.asarray(metrics.member_probs(tta_logits))
            results["ensemble"][f"{name}_accuracy_tta"] = tta["accuracy"]
            results["ensemble"][f"{name}_nll_tta"] = tta["nll"]
            for member, acc in zip(results["members"], tta["member_accuracy"]):
                member[f"{name}_accuracy_tta"] = acc
    if jax.process_index() == 0:
        runfolder.write_results(workdir, results, predictions)
        runfolder.write_pictures(workdir, test.images, test.labels, logits, test.class_names,
                                 member_names=runfolder.member_names(results))
    return results

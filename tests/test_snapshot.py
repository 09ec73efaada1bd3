"""Snapshot and SWA members: rows of the ensemble, their schedules, exact resume, and the SWA
average with its recomputed BatchNorm statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import analysis, config as config_lib, engine, metrics, models, optim, run as run_lib, runfolder, train
from train_helpers import StopAfter, final_state, load_config, small


def lr_at(steps, *, snapshot, steps_per_epoch=10, num_epochs=6, **optim_overrides):
    cfg = optim.default_config()
    cfg.update(optim_overrides)
    schedule = optim.make_schedules(cfg, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs,
                                    snapshot=snapshot)["learning_rate"]
    return np.array([float(schedule(s)) for s in steps])


def snapshot_section(**overrides):
    section = config_lib.base_config().snapshot
    section.update(overrides)
    return section


def test_cosine_cycles_restart_at_the_peak_and_end_at_low():
    """Huang et al.: 3 cycles of 2 epochs (20 steps), each from the peak down to `low`."""
    snap = snapshot_section(cycles=3, low=0.1)
    got = lr_at([0, 10, 19, 20, 39, 40, 59, 80], snapshot=snap, learning_rate=2e-3)
    cosine = lambda t: 2e-4 + (2e-3 - 2e-4) / 2 * (1 + np.cos(np.pi * t / 20))
    np.testing.assert_allclose(got, [cosine(0), cosine(10), cosine(19), cosine(0), cosine(19),
                                     cosine(0), cosine(19), cosine(19)], rtol=1e-5)
    assert optim.snapshot_epochs(snap, 6) == [2, 4, 6]


def test_fge_warms_with_the_config_schedule_then_cycles_triangles_ending_low():
    """2 warm epochs of the config's own exponential schedule (over those 2 epochs), then 2
    triangles of 2 epochs: up to `high` at mid-cycle, down to `low` at the cycle's last step."""
    snap = snapshot_section(cycles=2, shape="fge", warm_epochs=2, high=0.5, low=0.05)
    got = lr_at([0, 15, 20, 29, 39, 40, 59], snapshot=snap, learning_rate=1e-3,
                schedule=dict(name="exponential", decay_rate=0.5))
    np.testing.assert_allclose(got[:2], [1e-3, 5e-4], rtol=1e-6)  # the config's, epoch 0 and 1
    np.testing.assert_allclose(got[2:], [5e-5 + 4.5e-4 * 0.1, 5e-4, 5e-5, 5e-5 + 4.5e-4 * 0.1, 5e-5],
                               rtol=1e-5)
    assert optim.snapshot_epochs(snap, 6) == [4, 6]


@pytest.mark.parametrize("overrides, message", [
    ({"snapshot.cycles": 4}, "do not split into 4 whole cycles"),
    ({"snapshot.cycles": 2, "snapshot.shape": "step"}, "unknown snapshot.shape='step'"),
    ({"snapshot.cycles": 2, "snapshot.warm_epochs": 6}, "warm_epochs must be an int in \\[0, num_epochs=6\\)"),
    ({"snapshot.cycles": 2, "snapshot.low": 1.0}, "snapshot.low must be a number in \\[0.0, 1.0\\)"),
    ({"snapshot.cycles": 2, "optim.schedule.cycle_momentum": True}, "turn one of them off"),
    ({"swa.epochs": 7}, "swa.epochs must be an int in \\[0, num_epochs=6\\]"),
])
def test_impossible_snapshot_and_swa_settings_are_refused_in_one_line(overrides, message):
    config = load_config("quick")  # one_cycle over 6 epochs
    config.num_epochs = 6
    config.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match=message) as error:
        run_lib.validate(config)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_a_snapshot_run_makes_a_row_per_snapshot_that_everything_downstream_reads(mnist_dir, tmp_path):
    """2 members x 3 cycles (and test-time augmentation): 6 rows, member-major, each named by
    its trajectory and epoch; the ensemble numbers, selection and a restored run read them all."""
    config = small(load_config("quick"), num_members=2, num_epochs=3, tta_samples=2)
    config.snapshot.cycles = 3
    config.augment.rotation = 10.0  # so the augmented passes differ from the plain ones
    results = train.train_and_evaluate(config, tmp_path)
    assert results["num_members"] == 2
    assert [(m["index"], m["member"], m["kind"], m["epoch"]) for m in results["members"]] == [
        (0, 0, "snapshot", 1), (1, 0, "snapshot", 2), (2, 0, "snapshot", 3),
        (3, 1, "snapshot", 1), (4, 1, "snapshot", 2), (5, 1, "snapshot", 3)]
    predictions = runfolder.read_predictions(tmp_path, 10)
    for key in ("probs", "tta_probs", "val_probs", "val_tta_probs"):
        assert predictions[key].shape[0] == 6, key
    assert not np.allclose(predictions["val_tta_probs"], predictions["val_probs"])
    summary = metrics.summarize(metrics.probs_as_logits(predictions["probs"]), predictions["labels"], "test")
    assert results["ensemble"]["test_accuracy"] == summary["test_accuracy"]
    assert len(results["ensemble"]["test_size_curve"]) == 6
    # A snapshot is the trajectory's weights at its cycle's end: the last one is the final state,
    # and the per-epoch validation of the live weights saw the same accuracy.
    records = runfolder.read_metrics(tmp_path)
    assert [m["val_accuracy"] for m in results["members"] if m["epoch"] == 3] == records[-1]["val_accuracy"]
    assert [m["val_accuracy"] for m in results["members"] if m["epoch"] == 1] == records[0]["val_accuracy"]

    view = analysis.load_run(tmp_path)
    evaluated = view.evaluate(split="validation")
    assert evaluated["member_accuracy"] == [m["val_accuracy"] for m in results["members"]]
    assert view.predict(np.zeros((3, 28, 28), np.uint8)).shape == (6, 3, 10)
    chosen = analysis.select([tmp_path], "greedy", size=3, tta=True)
    assert chosen["candidates"] == 6 and chosen["tta"]
    assert runfolder.member_names(results)[:2] == ["m0 e1", "m0 e2"]


@pytest.mark.slow
@pytest.mark.cpu_only
def test_a_resume_in_the_middle_of_a_cycle_is_bitwise(mnist_dir, tmp_path, monkeypatch):
    """Cycles of 2 epochs over 4 with SWA over the last 2: stopped at step 22 (epoch 3, the
    second cycle, after the first snapshot and inside the SWA window), resumed, it ends with the
    uninterrupted run's state, snapshots and SWA average included."""
    config = small(load_config("quick"), num_members=2, num_epochs=4)
    config.snapshot.cycles = 2
    config.swa.epochs = 2
    straight = train.train_and_evaluate(config, tmp_path / "straight")
    # The loop looks after steps 3, 6, 8, 11, 14, 16, 19, reading each after the next chunk is
    # dispatched: the 7th look stops it after the chunk to step 22.
    monkeypatch.setattr(train, "_StopSignal", lambda: StopAfter(6))
    with pytest.raises(train.Interrupted, match="at step 22"):
        train.train_and_evaluate(config, tmp_path / "resumed")
    with pytest.raises(analysis.AnalysisError, match="has not finished"):  # rows still missing
        analysis.load_run(tmp_path / "resumed").evaluate(split="validation")
    monkeypatch.undo()
    resumed = train.train_and_evaluate(config, tmp_path / "resumed")
    a, _ = final_state(tmp_path / "straight", config)
    b, _ = final_state(tmp_path / "resumed", config)
    assert {"snapshots", "swa"} <= set(a)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert [m["test_accuracy"] for m in straight["members"]] == [m["test_accuracy"] for m in resumed["members"]]
    assert [m["kind"] for m in straight["members"]] == ["snapshot", "snapshot", "swa"] * 2


def test_swa_weights_are_the_mean_of_the_window_and_bn_statistics_are_recomputed():
    """4 steps of plain SGD on synthetic images with SWA from step 1: the average equals the
    mean of the weights after steps 1, 2 and 3, and its BatchNorm statistics are the mean over
    the batches of each batch's own statistics under those weights (got here from the running
    averages' update rule, starting from zero: running = (1 - momentum) * batch)."""
    model = models.get("tiny20k", dropout_rate=0.0)
    momentum = 0.9  # tiny20k's (PyTorch's 0.1)
    steps, batch = 4, 16
    cfg = optim.default_config()
    cfg.name, cfg.momentum = "sgd", 0.0
    tx = optim.build(cfg, steps_per_epoch=steps, num_epochs=1)
    mesh = engine.make_mesh(1, jax.devices()[:1])
    keys = engine.member_keys(3, 1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (steps * batch, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, steps * batch).astype(np.int32)
    state = engine.init_members(model, tx, keys, jnp.zeros((1, 28, 28, 1)), ema=False, mesh=mesh, swa=True)
    train_step = engine.make_train_step(
        model, tx, mesh=mesh, augment_fn=None, steps_per_epoch=steps, batch_size=batch,
        label_smoothing=0.0, l1=0.0, l1_params="head/kernel", ema_decay=0.0, strategy="unroll",
        swa_start=1)
    order = jnp.arange(steps * batch, dtype=jnp.int32)[None]
    metrics_sums, step, seen = engine.new_metrics(1), jnp.int32(0), []
    for _ in range(steps):
        state, metrics_sums, step = train_step(state, metrics_sums, step, images, labels, order)
        seen.append(jax.tree.map(np.asarray, state["params"]))
    expected = jax.tree.map(lambda *p: np.mean(p, axis=0), *seen[1:])
    for got, want in zip(jax.tree.leaves(state["swa"]["params"]), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert not np.allclose(jax.tree.leaves(state["swa"]["params"])[0], jax.tree.leaves(seen[-1])[0])

    recompute = engine.make_recompute_bn(model, mesh=mesh, augment_fn=None, batch_size=batch,
                                         num_batches=steps, strategy="unroll")
    swa = jax.tree.map(lambda a: np.asarray(a)[0], state["swa"])
    state = recompute(state, images, order)
    zeros = jax.tree.map(np.zeros_like, swa["batch_stats"])
    per_batch = []
    for i in range(steps):
        x = images[i * batch:(i + 1) * batch].astype(np.float32) / 255.0
        _, updated = model.apply({"params": swa["params"], "batch_stats": zeros}, x, train=True,
                                 mutable=["batch_stats"])
        per_batch.append(jax.tree.map(lambda r: np.asarray(r) / (1 - momentum), updated["batch_stats"]))
    want = jax.tree.map(lambda *b: np.mean(b, axis=0), *per_batch)
    got = jax.tree.map(lambda a: np.asarray(a)[0], state["swa"]["batch_stats"])
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-6)
    # They are not the running averages the trajectory carried.
    assert not np.allclose(jax.tree.leaves(got)[0], jax.tree.leaves(swa["batch_stats"])[0])

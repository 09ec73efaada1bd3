"""The train loop end to end on real MNIST subsets: resume, refusal, divergence, honest protocol."""

import json
import logging
import subprocess
import sys

import jax
import numpy as np
import pytest

from mnist_jax import augment, checkpoint, config as config_lib, data, engine, models, run as run_lib, runfolder, train
from train_helpers import StopAfter, final_state, load_config, small


@pytest.mark.slow
@pytest.mark.cpu_only
def test_kill_and_resume_equals_uninterrupted(mnist_dir, tmp_path, monkeypatch):
    config = small(load_config("quick"), num_members=2)
    straight = train.train_and_evaluate(config, tmp_path / "straight")

    # Chunks of 3 steps, 8 steps an epoch: the loop looks after steps 3, 6, 8 and 11, and reads
    # each once the next chunk is dispatched (the epoch's last at once): the 4th look stops at 14.
    monkeypatch.setattr(train, "_StopSignal", lambda: StopAfter(3))
    with pytest.raises(train.Interrupted, match="run the same command to resume"):
        train.train_and_evaluate(config, tmp_path / "resumed")
    _, step = final_state(tmp_path / "resumed", config)
    assert step == 14  # mid-way through epoch 2
    monkeypatch.undo()
    resumed = train.train_and_evaluate(config, tmp_path / "resumed")

    a, _ = final_state(tmp_path / "straight", config)
    b, _ = final_state(tmp_path / "resumed", config)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)  # bitwise on the CPU
    assert straight["ensemble"]["test_accuracy"] == resumed["ensemble"]["test_accuracy"]
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]

    # A signal at the epoch's last look (the 3rd, at step 8) stops cleanly after its checkpoint.
    monkeypatch.setattr(train, "_StopSignal", lambda: StopAfter(2))
    with pytest.raises(train.Interrupted, match="at step 8"):
        train.train_and_evaluate(config, tmp_path / "boundary")
    monkeypatch.undo()

    # The same workdir with another config is refused, naming the field, and nothing is touched.
    before = (tmp_path / "resumed" / "config.json").read_text()
    other = small(load_config("quick"), num_members=2, seed=7)
    with pytest.raises(checkpoint.CheckpointError, match="seed: 0 -> 7"):
        train.train_and_evaluate(other, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "config.json").read_text() == before


@pytest.mark.slow
@pytest.mark.cpu_only
def test_several_steps_per_call_train_the_same_run_and_resume_exactly(mnist_dir, tmp_path, monkeypatch):
    """8 steps an epoch, a look every 3 steps, 2 steps a call: calls of 2, 1, 2, 1, 2 steps. The
    run trains as with one step a call (AdamW turns float rounding into visible differences, so
    the accuracies are compared; test_engine compares the states under SGD), and a resume from
    step 14 is bitwise."""
    single = small(load_config("quick"), num_members=2)
    looped = small(load_config("quick"), num_members=2, steps_per_call=2)
    single_results = train.train_and_evaluate(single, tmp_path / "single")
    looped_results = train.train_and_evaluate(looped, tmp_path / "looped")
    for m, n in zip(single_results["members"], looped_results["members"]):
        assert abs(m["val_accuracy"] - n["val_accuracy"]) <= 0.01
    monkeypatch.setattr(train, "_StopSignal", lambda: StopAfter(3))
    with pytest.raises(train.Interrupted, match="at step 14"):
        train.train_and_evaluate(looped, tmp_path / "resumed")
    monkeypatch.undo()
    train.train_and_evaluate(looped, tmp_path / "resumed")
    (b, step), (c, _) = (final_state(tmp_path / name, looped) for name in ("looped", "resumed"))
    assert step == 16
    for y, z in zip(jax.tree.leaves(b), jax.tree.leaves(c)):
        np.testing.assert_array_equal(y, z)


def test_a_checkpoint_resumes_only_into_the_model_defaults_it_was_trained_with(tmp_path, monkeypatch):
    """A model default changed since a run started (no config field differs) is refused by name;
    a checkpoint from before model fields were recorded resumes with today's defaults."""
    config = load_config("tiny20k")  # its dropout 0.3 is the model's default, not an override
    config.num_members = 1
    setup = run_lib.setup(config, 10, steps_per_epoch=1)
    state = run_lib.init_state(setup)
    new, old = checkpoint.manager(tmp_path / "new", keep=1), checkpoint.manager(tmp_path / "old", keep=1)
    run_lib.save(setup, new, state)
    # As checkpoints were written before: the config's fingerprint alone.
    checkpoint.save(old, 0, run_lib._tree(state),
                    {"config": config_lib.fingerprint(config), "step": 0, "wall_time_s": 0.0})
    new.close()
    old.close()
    assert run_lib.restore(setup, tmp_path / "new").step == 0

    cls, preset = models._REGISTRY["tiny20k"]
    monkeypatch.setitem(models._REGISTRY, "tiny20k", (cls, {**preset, "dropout_rate": 0.5}))
    changed = run_lib.setup(config, 10, steps_per_epoch=1)
    with pytest.raises(checkpoint.CheckpointError, match=r"model_fields\.dropout_rate: 0\.3 -> 0\.5"):
        run_lib.restore(changed, tmp_path / "new")
    assert run_lib.restore(changed, tmp_path / "old").step == 0


def test_a_config_that_trains_on_crops_is_evaluated_on_the_centre_crop():
    """Every training image of a cropping config is a zoomed-in crop, so validation, test and
    `analysis` see the centre crop resized back, not the whole image."""
    config = load_config("tiny20k")
    config.num_members = 1
    config.augment.crop = 20
    setup = run_lib.setup(config, 10, steps_per_epoch=1)
    members = run_lib.init_state(setup).members
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    key = jax.random.PRNGKey(0)
    got = run_lib.predictor(setup)(members, images, key)
    centre = engine.make_predict(setup.model, mesh=setup.mesh, strategy=setup.strategy,
                                 augment_fn=lambda k, x: augment.center_crop_resize(x, size=20))
    whole = engine.make_predict(setup.model, mesh=setup.mesh, strategy=setup.strategy)
    np.testing.assert_array_equal(got, centre(members, images, key))
    assert np.abs(np.asarray(got) - np.asarray(whole(members, images, key))).max() > 1e-3


def test_unretrieved_tensorstore_read_errors_are_not_logged(caplog):
    """asyncio's 'Future exception was never retrieved' for a failed checkpoint read is dropped
    (it came out at exit, sometimes, after the one-line fallback warning); other asyncio errors
    still show."""
    checkpoint._drop_failed_read_noise()
    log = logging.getLogger("asyncio")
    read_error = ValueError('OUT_OF_RANGE: Error reading "x" [tensorstore_spec=\'{}\']')
    for error in (read_error, ValueError("something else")):
        log.error("Future exception was never retrieved\nfuture: <Future>",
                  exc_info=(ValueError, error, None))
    assert "something else" in caplog.text and "tensorstore_spec" not in caplog.text


@pytest.mark.slow
def test_unreadable_newest_checkpoint_falls_back_to_the_previous(mnist_dir, tmp_path, caplog):
    config = small(load_config("quick"), num_members=1, keep_checkpoints=3)
    train.train_and_evaluate(config, tmp_path)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [8, 16]
    for f in (tmp_path / "checkpoints" / "16" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":  # array data cut short, as a full disk leaves it
            f.write_bytes(f.read_bytes()[:10])
    _, step = final_state(tmp_path, config)
    assert step == 8
    assert "unreadable" in caplog.text
    # From the command line: one warning line, then the fallback, and no orbax tracebacks.
    proc = subprocess.run([sys.executable, "-m", "mnist_jax.evaluate_main", f"--workdir={tmp_path}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("\n") == 1 and "checkpoint 16 is unreadable" in proc.stderr, proc.stderr
    assert "evaluated checkpoint step 8" in proc.stdout


@pytest.mark.slow
@pytest.mark.cpu_only  # its mesh, {member: 2, data: 1}, depends on the backend and device count
def test_quick_config_end_to_end_reads_test_only_at_the_end(mnist_dir, tmp_path, monkeypatch):
    reads = []
    real_load = data.load

    def spy(name, split, *args, **kwargs):
        reads.append(split)
        return real_load(name, split, *args, **kwargs)

    monkeypatch.setattr(data, "load", spy)
    epochs_done = []
    real_write = runfolder.MetricWriter.write
    monkeypatch.setattr(runfolder.MetricWriter, "write",
                        lambda self, record: (epochs_done.append(list(reads)), real_write(self, record)))
    config = small(load_config("quick"), num_members=2, num_epochs=1)
    results = train.train_and_evaluate(config, tmp_path)

    assert reads == ["train", "validation", "test"]
    assert "test" not in epochs_done[-1]  # every epoch was logged before the test split was read
    assert results["num_members"] == 2 and len(results["members"]) == 2
    assert 0.2 < results["ensemble"]["test_accuracy"] <= 1.0  # 8 steps: well above chance (0.1)
    assert results["checkpoint_step"] == 8
    # On the CPU members are not split over the data axis (data_parallel "auto"); 2 members
    # take one device each where there are two.
    assert results["mesh"] == {"member": min(2, jax.device_count()), "data": 1}
    for name in ("config.json", "classes.json", "metrics.jsonl", "results.json", "predictions.npz",
                 "misclassified.png", "confusion.png", "curves.png", "ensemble_size.png",
                 "reliability.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = np.load(tmp_path / "predictions.npz")
    assert saved["probs"].shape == (2, 10000, 10)
    np.testing.assert_allclose(saved["probs"].sum(-1), 1.0, atol=1e-5)
    acc = (saved["probs"].mean(0).argmax(-1) == saved["labels"]).mean()
    assert acc == pytest.approx(results["ensemble"]["test_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_a_diverging_member_is_reported_and_the_run_stops(mnist_dir, tmp_path):
    config = small(load_config("quick"), num_members=2, num_epochs=1)
    config.optim.schedule.name = "constant"
    config.optim.name = "sgd"
    config.optim.learning_rate = 1e12
    with pytest.raises(train.TrainingDiverged, match=r"member \d got a non-finite loss at step \d+"):
        train.train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("field,value,message", [
    ("num_members", 0, "num_members must be >= 1"),
    ("num_epochs", -1, "num_epochs must be >= 1"),
    ("model", "lenet", "unknown model 'lenet'; valid: senet"),
    ("member_strategy", "pmap", "unknown member_strategy"),
    ("data_parallel", "yes", "unknown data_parallel 'yes'; valid: auto, on, off"),
    ("bagging", 1.5, "bagging must be in"),
    ("progress_seconds", -1.0, "progress_seconds must be >= 0"),
])
def test_bad_configs_are_refused_before_compiling(field, value, message):
    config = load_config("quick")
    setattr(config, field, value)
    with pytest.raises(config_lib.ConfigError, match=message):
        run_lib.validate(config)


def test_bad_sections_are_refused_with_the_field_name():
    config = load_config("quick")
    config.optim.schedule.name = "cosine_restarts"
    with pytest.raises(ValueError, match="cosine_restarts"):
        run_lib.validate(config)
    config = load_config("quick")
    config.augment.rotation = -5.0
    with pytest.raises(ValueError, match="rotation"):
        run_lib.validate(config)
    config = load_config("quick")
    config.model_overrides.filters = 8  # tiny20k has no such field
    with pytest.raises(ValueError, match="filters"):
        run_lib.validate(config)


def test_a_batch_larger_than_the_split_is_refused():
    config = load_config("quick")
    config.batch_size = 600
    with pytest.raises(config_lib.ConfigError, match="batch_size 600 is larger than the 512"):
        config_lib.check_batch_fits(config, 512)

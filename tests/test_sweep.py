"""Per-member hyperparameters (`config.sweep`): one compiled step for the whole sweep, and member i
of a sweep trains as a run of its own with member i's values."""

import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mnist_jax import analysis, config as config_lib, plots, run as run_lib, train
from train_helpers import REPO, final_state, load_config, small

LEARNING_RATES = (0.001, 0.002, 0.004, 0.008)
ROTATIONS = (0.0, 5.0, 10.0, 15.0)


def swept_config():
    config = small(load_config("quick"), num_members=4, num_epochs=1)
    config.sweep.optim.learning_rate = LEARNING_RATES
    config.sweep.augment.rotation = ROTATIONS
    return config


def _member(state: dict, i: int) -> dict:
    return jax.tree.map(lambda a: a[i], {k: v for k, v in state.items() if k != "hparams"})


@pytest.mark.slow
@pytest.mark.cpu_only  # bitwise between a 4-member and a 1-member program
def test_member_two_of_a_sweep_trains_as_a_run_of_its_own(mnist_dir, tmp_path):
    """The quick config (AdamW) swept over 4 learning rates and rotations: member 2 equals, bitwise,
    a one-member run reading its values the same way, and reaches what a plain run with those
    values reaches (AdamW's sign-like first steps turn float rounding into visible differences;
    the next test compares the states under SGD)."""
    config = swept_config()
    results = train.train_and_evaluate(config, tmp_path / "sweep")
    assert [m["swept"] for m in results["members"]] == [
        {"optim.learning_rate": lr, "augment.rotation": r} for lr, r in zip(LEARNING_RATES, ROTATIONS)]
    exact = config_lib.member_config(config, 2, exact=True)
    train.train_and_evaluate(exact, tmp_path / "exact")
    swept_state, _ = final_state(tmp_path / "sweep", config)
    exact_state, _ = final_state(tmp_path / "exact", exact)
    for a, b in zip(jax.tree.leaves(_member(swept_state, 2)), jax.tree.leaves(_member(exact_state, 0))):
        np.testing.assert_array_equal(a, b)

    plain = config_lib.member_config(config, 2)
    assert (plain.seed, plain.optim.learning_rate, plain.augment.rotation) == (2, 0.004, 10.0)
    assert not config_lib.swept(plain)
    plain_results = train.train_and_evaluate(plain, tmp_path / "plain")
    # 5 of 500 validation images: float rounding moves a few (3 on the Xeon of 2026-12-07, 2 on a Zen 4).
    assert abs(results["members"][2]["val_accuracy"] - plain_results["members"][0]["val_accuracy"]) <= 0.01

    rows = analysis.sweep_table(tmp_path / "sweep")
    assert [(r["member"], r["learning_rate"], r["rotation"]) for r in rows] == \
        [(i, lr, rot) for i, (lr, rot) in enumerate(zip(LEARNING_RATES, ROTATIONS))]
    assert [r["val_accuracy"] for r in rows] == [m["val_accuracy"] for m in results["members"]]
    picture = Path(plots.sweep(tmp_path / "sweep.png", rows))
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(analysis.AnalysisError, match="is not a finished sweep"):
        analysis.sweep_table(tmp_path / "plain")
    records = [json.loads(line) for line in (tmp_path / "sweep" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["sweep.optim.learning_rate"] == list(LEARNING_RATES)


@pytest.mark.slow
def test_swept_values_train_as_plain_fields_to_float_rounding(mnist_dir, tmp_path):
    """Under SGD (no amplification of rounding) member 2 of a learning-rate, rotation,
    label-smoothing and weight-decay sweep and a plain run with its values end with the same state
    (the sweep's weight decay lives in the optimiser state, the plain run's in its code)."""
    config = swept_config()
    config.sweep.label_smoothing = (0.0, 0.05, 0.1, 0.2)
    config.sweep.optim.weight_decay = (0.0, 1e-4, 1e-2, 1e-3)
    config.optim.name, config.optim.weight_decay = "sgd", 0.0
    train.train_and_evaluate(config, tmp_path / "sweep")
    plain = config_lib.member_config(config, 2)
    train.train_and_evaluate(plain, tmp_path / "plain")
    swept_state, _ = final_state(tmp_path / "sweep", config)
    plain_state, _ = final_state(tmp_path / "plain", plain)
    assert plain.optim.weight_decay == 1e-2
    swept_member = _member({**swept_state, "opt_state": swept_state["opt_state"].inner_state}, 2)
    plain_member = _member({**plain_state, "opt_state": plain_state["opt_state"].inner_state}, 0)
    for a, b in zip(jax.tree.leaves(swept_member), jax.tree.leaves(plain_member)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_every_member_is_in_one_program_and_reads_its_values_from_the_state():
    config = swept_config()
    hparams = run_lib.member_hparams(config)
    np.testing.assert_allclose(hparams["lr_scale"], np.array(LEARNING_RATES) / config.optim.learning_rate,
                               rtol=1e-6)
    np.testing.assert_array_equal(hparams["rotation"], np.array(ROTATIONS, np.float32))
    assert run_lib.swept_augment(config) == ("rotation",)
    assert config_lib.sweep_label(config_lib.member_sweep(config, 1)) == "learning_rate=0.002 rotation=5"


@pytest.mark.parametrize("override,message", [
    ("--config.sweep.optim.learning_rate=(1e-3, 2e-3)",
     "sweep.optim.learning_rate has 2 values for 4 members; give one per member"),
    ("--config.sweep.batch_size=(32, 64, 64, 64)", "sweep.batch_size cannot be swept"),
    ("--config.sweep.num_epochs=(1, 2, 3, 4)", "sweep.num_epochs cannot be swept"),
    ("--config.sweep.dropout=(0.1, 0.2, 0.3, 0.4)", "unknown field 'sweep.dropout'"),
    ("--config.sweep.optim.weight_decay=(0.0, 1e-4, -1e-3, 0.0)",
     "weight_decay must be a number >= 0.0, got -0.001 \\(sweep, member 2\\)"),
    ("--config.sweep.label_smoothing=(0.1, 0.2, 1.5, 0.0)",
     "label_smoothing must be in \\[0, 1\\), got 1.5 \\(sweep, member 2\\)"),
])
def test_bad_sweeps_are_refused_in_one_line(override, message):
    done = subprocess.run([sys.executable, "-m", "mnist_jax.main", "--config=configs/quick.py",
                           "--workdir=/nonexistent/never", override], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnist_jax: error:"), done.stderr
    assert re.search(message, lines[0]), lines[0]


def test_a_run_without_a_sweep_keeps_the_checkpoint_layout_of_older_runs():
    """Run folders checkpointed before sweeps existed resume: without a sweep the member state
    has exactly their leaves; a sweep adds its values."""
    plain = load_config("quick")
    plain.num_members = 2
    keys = sorted(run_lib.init_state(run_lib.setup(plain, 10, steps_per_epoch=1)).members)
    assert keys == ["batch_stats", "ema_params", "key", "opt_state", "params"]
    swept = run_lib.init_state(run_lib.setup(swept_config(), 10, steps_per_epoch=1)).members
    assert sorted(swept["hparams"]) == ["lr_scale", "rotation"]


@pytest.mark.slow
def test_a_swept_ema_decay_of_zero_follows_the_weights(mnist_dir, tmp_path):
    """Members keep an EMA when any member's decay is above 0; a member whose decay is 0 averages
    nothing (its EMA is its weights), another's lags behind."""
    config = small(load_config("quick"), num_members=2, num_epochs=1)
    config.sweep.ema_decay = (0.0, 0.99)
    train.train_and_evaluate(config, tmp_path / "run")
    state, _ = final_state(tmp_path / "run", config)
    for ema, params in zip(jax.tree.leaves(state["ema_params"]), jax.tree.leaves(state["params"])):
        np.testing.assert_array_equal(ema[0], params[0])
    assert any(not np.allclose(e[1], p[1]) for e, p in zip(jax.tree.leaves(state["ema_params"]),
                                                           jax.tree.leaves(state["params"])))

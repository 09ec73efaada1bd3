"""experiments/time_to_accuracy.py on a cut-down cpu_fast: waves, the ensemble curve, the files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_jax import config as config_lib

REPO = Path(__file__).resolve().parents[1]

SMALL_CPU_FAST = f"""
from mnist_jax import config as config_lib


def get_config():
    # the real recipe, on a real-MNIST subset, one short epoch
    c = config_lib.from_file({str(REPO / "configs" / "cpu_fast.py")!r})
    c.train_subset = 256
    c.validation_size = 200
    c.batch_size = 64
    c.num_epochs = 1
    c.eval_batch_size = 1000
    return c
"""


@pytest.fixture
def tta(experiment):
    return experiment("time_to_accuracy")


def test_waves_grow_the_ensemble_and_the_files_say_so(tta, mnist_dir, tmp_path):
    config = tmp_path / "small_cpu_fast.py"
    config.write_text(SMALL_CPU_FAST)
    out = tmp_path / "out"
    summary = tta.main(["--config", str(config), "--max-waves", "2", "--out", str(out)])

    members = config_lib.total_members(tta.load_config(config))
    points = summary["points"]
    assert [p["members"] for p in points] == [members, 2 * members]
    assert points[0]["wall_time_s"] < points[1]["wall_time_s"] <= summary["total_wall_time_s"]
    # Each wave is its own run with its own seeds.
    seeds = [json.loads((out / f"wave_{w:02d}" / "config.json").read_text())["seed"] for w in (0, 1)]
    assert seeds == [0, members]
    # The second point is the mean probability of all four members, recomputed here.
    probs, labels = [], None
    for w in (0, 1):
        with np.load(out / f"wave_{w:02d}" / "predictions.npz") as npz:
            probs.append(npz["probs"])
            labels = npz["labels"]
    want = (np.concatenate(probs).mean(0).argmax(-1) == labels).mean()
    assert points[1]["test_accuracy"] == pytest.approx(want)
    assert points[0]["test_accuracy"] == pytest.approx(points[0]["wave_test_accuracy"])
    assert len(points[1]["wave_member_test_accuracies"]) == members
    saved = json.loads((out / "time_to_accuracy.json").read_text())
    assert saved["points"] == points and saved["peak_rss_gb"] > 0
    assert saved["accuracy_at_60_min"] == points[-1]["test_accuracy"]  # the last wave, not the best
    assert saved["first_reaching_s"] == {"0.9970": tta.first_reaching(points, 0.997)}
    assert saved["conv_backend"] in ("onednn", "xla") and saved["machine"] and saved["date"]
    assert saved["malloc"] in ("kept", "default")
    assert (out / "time_to_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_curve_starts_from_a_cold_compilation_cache(mnist_dir, tmp_path):
    """As the script is run, in its own process: a compilation cache in the environment (the
    suite's own, or a user's) is left alone, so no wave loads what an earlier run compiled."""
    config = tmp_path / "small_cpu_fast.py"
    config.write_text(SMALL_CPU_FAST)
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "time_to_accuracy.py"), "--config",
                           str(config), "--max-waves", "1", "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wave 0: 2 members" in proc.stdout and list(cache.iterdir()) == []


def test_a_used_output_folder_is_refused(tta, tmp_path, capsys):
    (tmp_path / "old.txt").write_text("an earlier run")
    with pytest.raises(SystemExit):
        tta.main(["--out", str(tmp_path)])
    assert "is not empty" in capsys.readouterr().err


def test_at_budget_is_the_last_ensemble_finished_within_it_not_the_best(tta):
    points = [{"wall_time_s": 600.0, "test_accuracy": 0.995},
              {"wall_time_s": 800.0, "test_accuracy": 0.990},
              {"wall_time_s": 1200.0, "test_accuracy": 0.993}]
    assert tta.at_budget(points, 15) == 0.990
    assert tta.at_budget(points, 60) == 0.993
    assert tta.at_budget(points, 5) is None


def test_the_table_has_a_row_per_wave_and_the_values_at_the_budgets(tta, tmp_path, capsys):
    points = [{"wave": 0, "members": 2, "wall_time_s": 780.0, "test_accuracy": 0.9968,
               "test_errors": 32, "wave_test_accuracy": 0.9968},
              {"wave": 1, "members": 4, "wall_time_s": 1560.0, "test_accuracy": 0.9972,
               "test_errors": 28, "wave_test_accuracy": 0.9966,
               "wave_member_test_accuracies": [0.9961, 0.9958]}]
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"points": points, "peak_rss_gb": 1.5}))
    tta.main(["--table", str(path)])
    out = capsys.readouterr().out
    assert "| 0 | 2 | 13.0 min | 99.68 % | 32 | 99.68 % | – |" in out  # an older JSON: no members
    assert "| 1 | 4 | 26.0 min | 99.72 % | 28 | 99.66 % | 99.61 / 99.58 |" in out
    assert "at 15 min 99.68 %, at 60 min 99.72 %; 99.70 % first at 26.0 min; peak memory 1.50 GB." in out


def test_the_first_crossing_is_read_in_wave_order(tta):
    points = [{"wall_time_s": 600.0, "test_accuracy": 0.9965},
              {"wall_time_s": 1200.0, "test_accuracy": 0.9971},
              {"wall_time_s": 1800.0, "test_accuracy": 0.9969},
              {"wall_time_s": 2400.0, "test_accuracy": 0.9975}]
    assert tta.first_reaching(points, 0.997) == 1200.0
    assert tta.first_reaching(points, 0.998) is None

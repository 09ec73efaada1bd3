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
    # the real recipe without its snapshots, on a real-MNIST subset, one short epoch
    c = config_lib.from_file({str(REPO / "configs" / "cpu_fast.py")!r})
    c.train_subset = 256
    c.validation_size = 200
    c.batch_size = 64
    c.num_epochs = 1
    c.snapshot.cycles = 0  # final weights only: one row a member
    c.eval_batch_size = 1000
    return c
"""


@pytest.fixture
def tta(experiment):
    return experiment("time_to_accuracy")


def test_waves_grow_the_ensemble_and_the_files_say_so(tta, mnist_dir, tmp_path):
    plain, snapshots = tmp_path / "small_cpu_fast.py", tmp_path / "small_fge.py"
    plain.write_text(SMALL_CPU_FAST)
    snapshots.write_text(SMALL_CPU_FAST.replace("c.num_epochs = 1", "c.num_epochs = 3").replace(
        "c.snapshot.cycles = 0", "c.snapshot.cycles, c.snapshot.warm_epochs = 2, 1"))
    out = tmp_path / "out"
    # Wave 0 runs the first config; waves 1 and 2 the second, which repeats.
    summary = tta.main(["--config", str(plain), "--config", str(snapshots), "--max-waves", "3",
                        "--out", str(out)])

    members = config_lib.total_members(tta.load_config(plain))
    points = summary["points"]
    assert [p["members"] for p in points] == [members, 2 * members, 3 * members]
    assert [p["rows"] for p in points] == [members, 3 * members, 5 * members]  # 2 snapshots each
    assert [Path(p["config"]).name for p in points] == [plain.name, snapshots.name, snapshots.name]
    assert points[0]["wall_time_s"] < points[1]["wall_time_s"] <= summary["total_wall_time_s"]
    # Each wave is its own run with its own seeds.
    seeds = [json.loads((out / f"wave_{w:02d}" / "config.json").read_text())["seed"] for w in (0, 1, 2)]
    assert seeds == [0, members, 2 * members]
    # The last point is the mean probability of every row of the three waves, recomputed here.
    probs, labels = [], None
    for w in (0, 1, 2):
        with np.load(out / f"wave_{w:02d}" / "predictions.npz") as npz:
            probs.append(npz["probs"])
            labels = npz["labels"]
    assert sum(len(p) for p in probs) == 5 * members
    want = (np.concatenate(probs).mean(0).argmax(-1) == labels).mean()
    assert points[2]["test_accuracy"] == pytest.approx(want)
    assert points[0]["test_accuracy"] == pytest.approx(points[0]["wave_test_accuracy"])
    assert len(points[1]["wave_row_test_accuracies"]) == 2 * members
    saved = json.loads((out / "time_to_accuracy.json").read_text())
    assert saved["points"] == points and saved["peak_rss_gb"] > 0
    assert saved["accuracy_at_60_min"] == points[-1]["test_accuracy"]  # the last wave, not the best
    assert saved["first_reaching_s"] == {"0.9970": tta.first_reaching(points, 0.997)}
    assert saved["spread"]["waves"]["n"] == 2 and saved["spread"]["rows"]["n"] == 4 * members
    assert saved["conv_backend"] in ("onednn", "xla") and saved["machine"] and saved["date"]
    assert saved["malloc"] in ("kept", "default")
    assert (out / "time_to_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_spread_is_over_the_repeating_config_s_waves(tta):
    points = [{"config": "a", "wave_test_accuracy": 0.90, "wave_row_test_accuracies": [0.8]},
              {"config": "b", "wave_test_accuracy": 0.99, "wave_row_test_accuracies": [0.97, 0.98]},
              {"config": "b", "wave_test_accuracy": 0.97, "wave_row_test_accuracies": [0.96]}]
    got = tta.spread(points)
    assert got["waves"] == {"mean": pytest.approx(0.98), "std": pytest.approx(0.02 ** 0.5 / 10), "n": 2}
    assert got["rows"]["n"] == 3 and got["rows"]["mean"] == pytest.approx(0.97)


@pytest.mark.slow
def test_the_curve_starts_from_a_cold_compilation_cache(mnist_dir, tmp_path):
    """As the script is run, in its own process: a compilation cache in the environment (the
    suite's own, or a user's) is left alone, so no wave loads what an earlier run compiled; the
    run keeps its programs in a new cache of its own."""
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
    assert "wave 0: 2 trajectories, 2 rows" in proc.stdout and list(cache.iterdir()) == []
    assert any((tmp_path / "out" / "jax_cache").iterdir())  # its own cache, new with the run


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
               "wave_member_test_accuracies": [0.9961, 0.9958]},
              {"wave": 2, "members": 6, "rows": 12, "wall_time_s": 3000.0, "test_accuracy": 0.9974,
               "test_errors": 26, "wave_test_accuracy": 0.9970,
               "wave_row_test_accuracies": [0.9961, 0.9958, 0.9965, 0.9960]}]
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"points": points, "peak_rss_gb": 1.5}))
    tta.main(["--table", str(path)])
    out = capsys.readouterr().out
    assert "| 0 | 2 | 2 | 13.0 min | 99.68 % | 32 | 99.68 % | – |" in out  # an older JSON: no rows
    assert "| 1 | 4 | 4 | 26.0 min | 99.72 % | 28 | 99.66 % | 99.61 / 99.58 |" in out
    assert "| 2 | 6 | 12 | 50.0 min | 99.74 % | 26 | 99.70 % | 99.58–99.65 |" in out
    assert ("at 15 min 99.68 %, at 30 min 99.72 %, at 60 min 99.74 %; 99.70 % first at 26.0 min; "
            "peak memory 1.50 GB.") in out


def test_the_first_crossing_is_read_in_wave_order(tta):
    points = [{"wall_time_s": 600.0, "test_accuracy": 0.9965},
              {"wall_time_s": 1200.0, "test_accuracy": 0.9971},
              {"wall_time_s": 1800.0, "test_accuracy": 0.9969},
              {"wall_time_s": 2400.0, "test_accuracy": 0.9975}]
    assert tta.first_reaching(points, 0.997) == 1200.0
    assert tta.first_reaching(points, 0.998) is None

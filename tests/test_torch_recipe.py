"""experiments/torch_recipe.py: the PyTorch peer warps as `augment.affine` does, refuses recipes
it does not mirror, and writes a run's row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mnist_jax import augment, config as config_lib

torch = pytest.importorskip("torch", reason="the PyTorch peer needs the optional `bench` extra")


@pytest.fixture
def recipe(experiment):
    return experiment("torch_recipe")


def test_the_torch_warp_is_augment_affine(recipe) -> None:
    rng = np.random.default_rng(0)
    images = rng.random((6, 28, 28, 1), dtype=np.float32)
    u = rng.uniform(-1, 1, (6, 6)).astype(np.float32)
    params = dict(rotation=15 * u[0], shift=(2.8 * u[1], 2.8 * u[2]), shear=10 * u[3],
                  zoom=(1 + 0.15 * u[4], 1 + 0.15 * u[5]))
    want = np.asarray(augment.affine(images, augment.affine_matrix(**params)))
    t = {k: (tuple(torch.from_numpy(x) for x in v) if isinstance(v, tuple) else torch.from_numpy(v))
         for k, v in params.items()}
    got = recipe.warp(torch.from_numpy(images).permute(0, 3, 1, 2), recipe.affine_matrices(**t))
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), want, atol=2e-5)


def test_a_recipe_it_does_not_mirror_is_refused_in_one_line(recipe, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        recipe.main(["--config=resnet_committee", "--members=1"])
    message = str(stop.value.code)
    assert "schedule 'one_cycle' is not mirrored" in message and "\n" not in message


def test_snapshot_members_are_refused_not_ignored(recipe) -> None:
    config = config_lib.from_file(recipe.REPO / "configs" / "cpu_fast.py")  # FGE snapshots
    with pytest.raises(recipe.RecipeError, match=r"snapshot.cycles=4 is not mirrored \(only 0\)"):
        recipe.check_supported(config)


def test_a_sweep_is_refused_not_ignored(recipe) -> None:
    config = config_lib.from_file(recipe.REPO / "configs" / "deotte15.py")
    config.num_members = 2
    config.sweep.augment.rotation = (10.0, 15.0)
    with pytest.raises(recipe.RecipeError, match=r"a sweep \(augment.rotation\) is not mirrored"):
        recipe.check_supported(config)


def test_a_smoke_run_learns_and_writes_its_row(recipe, mnist_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "torch_recipe.json"
    argv = ["--config=deotte15", "--members=2", "--epochs=2", "--train-subset=640", "--out", str(out)]
    recipe.main(argv)
    recipe.main(argv)  # the same key again replaces its row
    (row,) = json.loads(out.read_text())["runs"]
    assert (row["config"], row["members"], row["epochs"]) == ("deotte15", 2, 2)
    assert len(row["member_test_accuracies"]) == 2 and len(row["member_val_accuracies"]) == 2
    assert 0.0 <= row["ensemble_test_accuracy"] <= 1.0
    assert 0 < row["train_time_s"] < row["wall_time_s"]
    assert row["command"].startswith("python experiments/torch_recipe.py --config=deotte15")
    losses = [float(line.split("loss ")[1].split(",")[0]) for line in capsys.readouterr().out.splitlines()
              if line.startswith("member 0 epoch")]
    assert len(losses) == 4 and losses[1] < losses[0]  # 9 Adam steps per epoch lower it

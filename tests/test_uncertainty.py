"""Shifted test sets (mnist_jax.shift), RunView.shift / ood / uncertainty and
`evaluate_main --shift --ood`, on one small real run trained once for the module."""

from __future__ import annotations

import gzip
import json
import runpy
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mnist_jax import analysis, augment, data, evaluate_main, metrics, plots, runfolder, shift, train

REPO = Path(__file__).resolve().parents[1]


def small_config(**overrides) -> ml_collections.ConfigDict:
    """64 steps of two quick members: about 94 % accurate, enough to tell clothes from digits."""
    config = runpy.run_path(str(REPO / "configs" / "quick.py"))["get_config"]()
    config.train_subset, config.num_epochs, config.validation_size = 8192, 1, 1000
    config.num_members, config.log_every_steps = 2, 64
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def config_only(workdir: Path, **overrides) -> Path:
    """A run folder as training leaves it before its first checkpoint: enough for every refusal
    that comes before the model is restored."""
    workdir.mkdir(parents=True)
    runfolder.write_config(workdir, small_config(**overrides), tuple("0123456789"))
    return workdir


@pytest.fixture(scope="module")
def run_dir(mnist_path, tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNIST_JAX_DATA_DIR", str(mnist_path))
        workdir = tmp_path_factory.mktemp("run")
        train.train_and_evaluate(small_config(), workdir)
        return workdir


@pytest.fixture
def test_images(mnist_dir) -> np.ndarray:
    return data.load("mnist", "test").images[:64]


# ----------------------------------------------------------------------------- shifted sets


def test_each_image_of_each_level_is_fixed_by_the_seed(test_images):
    for kind, level in (("translate", 6), ("corrupt", "gaussian_noise"), ("corrupt", "stripe")):
        first = shift.apply(test_images, kind, level, seed=3)
        assert first.dtype == np.uint8 and first.shape == test_images.shape
        np.testing.assert_array_equal(first, shift.apply(test_images, kind, level, seed=3))
        # An image's draw depends on its index alone, not on the other images.
        np.testing.assert_array_equal(first[:5], shift.apply(test_images[:5], kind, level, seed=3))
        assert not np.array_equal(first, shift.apply(test_images, kind, level, seed=4))


def test_rotation_and_translation_move_the_pixels_as_stated(test_images):
    np.testing.assert_array_equal(shift.apply(test_images, "rotate", 0), test_images)
    np.testing.assert_array_equal(shift.apply(test_images, "translate", 0), test_images)
    turned = shift.apply(test_images, "rotate", 90).astype(int)
    assert np.abs(turned - np.rot90(test_images, 1, axes=(1, 2))).max() <= 1  # counter-clockwise
    moved = shift.apply(test_images, "translate", 2)
    padded = np.pad(test_images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    # Whole pixels up, down, left or right (background coming in): one of the four windows.
    windows = [padded[:, 2 + dy:30 + dy, 2 + dx:30 + dx] for dy, dx in ((2, 0), (-2, 0), (0, 2), (0, -2))]
    matches = np.stack([(moved == w).all(axis=(1, 2, 3)) for w in windows])  # [4, N]
    assert matches.any(axis=0).all() and matches.sum(axis=1).min() > 0  # every direction drawn


def test_corruptions_and_synthetic_sets(test_images):
    np.testing.assert_array_equal(shift.apply(test_images, "corrupt", "identity"), test_images)
    np.testing.assert_array_equal(shift.apply(test_images, "corrupt", "inversion"), 255 - test_images)
    np.testing.assert_array_equal(shift.synthetic("inverted", test_images), 255 - test_images)
    low = shift.apply(test_images, "corrupt", "contrast").astype(float)
    assert low.std() < 0.35 * test_images.std()
    noise = shift.synthetic("noise", test_images)
    assert noise.shape == test_images.shape and noise.dtype == np.uint8 and 100 < noise.mean() < 155
    assert set(shift.KINDS["corrupt"].levels) == set(shift.CORRUPTIONS)
    assert shift.KINDS["rotate"].levels == tuple(range(0, 181, 15)) and shift.KINDS["rotate"].unit == "degrees"
    assert shift.KINDS["translate"].levels[-1] == 14 and shift.KINDS["translate"].unit == "pixels"


@pytest.mark.parametrize("kind, levels, message", [
    ("spin", None, "unknown shift kind 'spin'; choose from rotate, translate, corrupt"),
    ("corrupt", ["fog"], "unknown corruption 'fog'; choose from identity,"),
    ("rotate", [400], "rotate level 400 must be a number of degrees in"),
    ("translate", [1.5], "translate level 1.5 must be a whole number of pixels"),
    ("rotate", [], "no levels given for shift 'rotate'"),
])
def test_bad_levels_are_one_line(kind, levels, message):
    with pytest.raises(ValueError, match=message) as error:
        shift.check_levels(kind, levels)
    assert "\n" not in str(error.value)


def test_gaussian_blur_matches_scipy():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(0).random((2, 28, 28, 1)).astype(np.float32)
    ours = np.asarray(augment.gaussian_blur(x, sigma=1.5))
    expected = np.stack([scipy_ndimage.gaussian_filter(i[..., 0], 1.5, mode="constant") for i in x])
    np.testing.assert_allclose(ours[..., 0], expected, atol=1e-6)
    with pytest.raises(ValueError, match="sigma must be a positive number"):
        augment.gaussian_blur(x, sigma=0)


# ----------------------------------------------------------------------------- pictures


def test_pictures_draw_from_uncertainty_json_alone(tmp_path):
    members = [{"accuracy": 0.9, "ece": 0.1, "brier": 0.2}] * 2
    entry = {"ensemble": {"accuracy": 0.95, "ece": 0.05, "brier": 0.1}, "members": members}
    shifts = {"rotate": [{"level": 0, **entry, "ensemble_scaled": entry["ensemble"]},
                         {"level": 15, **entry, "ensemble_scaled": entry["ensemble"]}],
              "corrupt": [{"level": "identity", **entry}, {"level": "inversion", **entry}]}
    histogram = {"edges": [0.0, 1.0, 2.0], "counts": {"test": [9, 1], "noise": [1, 9]}}
    curve = {"coverage": [0.5, 1.0], "accuracy": [1.0, 0.9], "area": 0.95}
    for path in (plots.shift(tmp_path / "s.png", shifts, {"rotate": "degrees", "corrupt": "corruption"}),
                 plots.entropy_histograms(tmp_path / "h.png", histogram),
                 plots.selective(tmp_path / "c.png", curve)):
        assert Image.open(path).size[0] > 100
    with pytest.raises(ValueError, match="'entropy_histogram'"):
        plots.entropy_histograms(tmp_path / "h.png", {"edges": [0, 1]})


# ----------------------------------------------------------------------------- refusals


def _error(workdir: Path, capsys, *flags: str) -> str:
    assert evaluate_main.main([f"--workdir={workdir}", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


@pytest.mark.parametrize("flags, message", [
    (["--shift=rotate,,translate"], "--shift='rotate,,translate' is malformed"),
    (["--ood="], "--ood='' is malformed"),
    (["--shift=rotate,spin"], "unknown shift kind 'spin'"),
    (["--ood=fashion_mnist,nowhere"], "unknown OOD set 'nowhere'; use noise, inverted or a dataset"),
    (["--shift=rotate", "--split=validation"], "--shift and --ood use the run's own test split"),
])
def test_malformed_shift_or_ood_is_refused_in_one_line(tmp_path, capsys, flags, message):
    assert message in _error(config_only(tmp_path / "run"), capsys, *flags)


def test_an_ood_set_of_another_image_size_is_refused_naming_it(tmp_path, capsys):
    folder = tmp_path / "big"
    folder.mkdir()
    for name, array in (("t10k-images-idx3-ubyte", np.zeros((3, 32, 32), np.uint8)),
                        ("t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))):
        header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
        (folder / f"{name}.gz").write_bytes(gzip.compress(header + array.tobytes()))
    err = _error(config_only(tmp_path / "run"), capsys, f"--ood=idx:{folder}")
    assert f"OOD set 'idx:{folder}'" in err and "32x32 but image_size=28" in err


def test_temperature_scaling_without_a_validation_split_is_refused(tmp_path, capsys):
    workdir = config_only(tmp_path / "run", validation_size=0)
    assert "has no validation split (validation_size=0)" in _error(workdir, capsys, "--shift=rotate")
    with pytest.raises(analysis.AnalysisError, match="validation_size > 0"):
        analysis.load_run(workdir).temperatures()


# ----------------------------------------------------------------------------- a trained run


@pytest.mark.slow
def test_cli_writes_uncertainty_json(run_dir, mnist_dir, data_root, capsys):
    assert evaluate_main.main([f"--workdir={run_dir}", "--shift=rotate",
                               "--ood=fashion_mnist,noise"]) == 0
    out = capsys.readouterr().out
    result = json.loads((run_dir / "uncertainty.json").read_text())
    rotate = result["shift"]["rotate"]
    assert [e["level"] for e in rotate] == list(range(0, 181, 15)) and result["units"]["rotate"] == "degrees"
    by_level = {e["level"]: e for e in rotate}
    assert by_level[90]["ensemble"]["accuracy"] < by_level[0]["ensemble"]["accuracy"]
    assert set(by_level[0]["ensemble"]) >= {"accuracy", "nll", "brier", "ece", "entropy",
                                            "mutual_information"}
    assert len(by_level[0]["members"]) == 2 and len(by_level[0]["members_scaled"]) == 2
    assert set(result["temperature"]) == {"ensemble", "members"}
    fashion = result["ood"]["fashion_mnist"]
    assert fashion["num_examples"] == 10_000 and result["ood"]["noise"]["num_examples"] == 10_000
    for score in ("entropy", "max_prob", "mutual_information"):
        assert set(fashion[score]) == {"auroc", "aupr", "fpr95"}
    assert max(fashion[s]["auroc"] for s in metrics.OOD_SCORES) >= 0.95
    assert 0.9 < result["selective"]["area"] <= 1.0 and len(result["selective"]["coverage"]) == 100
    assert set(result["entropy_histogram"]["counts"]) == {"test", "fashion_mnist", "noise"}
    correlation = np.array(result["diversity"]["error_correlation"], float)
    assert correlation.shape == (2, 2) and correlation[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert 0 < correlation[0, 1] < 1 and 0 < result["diversity"]["disagreement"] < 0.2
    for name in runfolder.UNCERTAINTY_PICTURES:
        assert runfolder.picture_path(run_dir, name).stat().st_size > 1000
    assert "OOD fashion_mnist (10000 images)" in out and f"wrote {run_dir / 'uncertainty.json'}" in out


@pytest.mark.slow
def test_run_view_shift_and_ood(run_dir, mnist_dir):
    view = analysis.load_run(run_dir)
    clean, inverted = view.shift("corrupt", ["identity", "inversion"])
    # The clean level is the test split: the numbers the run wrote when it finished.
    assert clean["level"] == "identity"
    assert clean["ensemble"]["accuracy"] == view.results["ensemble"]["test_accuracy"]
    assert inverted["ensemble"]["accuracy"] < clean["ensemble"]["accuracy"]
    assert "ensemble_scaled" not in clean
    ood = view.ood("inverted")
    assert ood["num_examples"] == 10_000 and set(ood) == {"num_examples", *metrics.OOD_SCORES}
    with pytest.raises(analysis.AnalysisError, match="unknown shift kind 'spin'"):
        view.shift("spin")

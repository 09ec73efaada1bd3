"""mnist_jax.plots: every picture is written as a real PNG of a sensible size, headless."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_jax import metrics, plots

NAMES = tuple("0123456789")


def assert_png(path: str | Path) -> tuple[int, int]:
    """Opens it with Pillow and checks nothing but the PNG is left in its folder."""
    path = Path(path)
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        width, height = image.size
    assert 200 <= width <= 5000 and 100 <= height <= 5000, image.size
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # No temporary file left.
    return width, height


def digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, n)


def probs_with_errors(labels: np.ndarray, num_wrong: int) -> np.ndarray:
    """Right with 90% confidence, except the first `num_wrong` examples, given to label + 1."""
    pred = labels.copy()
    pred[:num_wrong] = (labels[:num_wrong] + 1) % 10
    return np.full((len(labels), 10), 0.1 / 9) + np.eye(10)[pred] * (0.9 - 0.1 / 9)


def test_misclassified_some_errors(tmp_path):
    images, labels = digits(20)
    path = plots.misclassified(tmp_path / "m.png", images, labels, probs_with_errors(labels, 3),
                               NAMES)
    assert path == str(tmp_path / "m.png")
    assert_png(path)


def test_misclassified_no_errors(tmp_path):
    images, labels = digits(5)
    assert_png(plots.misclassified(tmp_path / "m.png", images, labels, np.eye(10)[labels], NAMES))


def test_misclassified_grid_grows_then_caps(tmp_path):
    images, labels = digits(40)
    sizes = {}
    for wrong in (2, 16, 40):
        path = tmp_path / str(wrong) / "m.png"
        plots.misclassified(path, images[..., 0], labels, probs_with_errors(labels, wrong), NAMES,
                            max_images=16)
        sizes[wrong] = assert_png(path)[1]
    assert sizes[2] < sizes[16] == sizes[40]  # 40 errors are capped to the 16-error grid.


def test_misclassified_overwrites_atomically(tmp_path):
    images, labels = digits(6)
    path = tmp_path / "m.png"
    path.write_bytes(b"old")
    plots.misclassified(path, images, labels, probs_with_errors(labels, 1), NAMES)
    assert_png(path)


@pytest.mark.parametrize("kwargs, message", [
    (dict(images=np.zeros((6, 28, 28, 1), np.float32)), "images must be uint8"),
    (dict(class_names=NAMES[:9]), "9 class_names"),
    (dict(labels=np.arange(5)), "must share N"),
    (dict(labels=np.full(6, 10)), "labels must be integer class ids"),
])
def test_misclassified_bad_input(tmp_path, kwargs, message):
    images, labels = digits(6)
    args = dict(images=images, labels=labels, probs=probs_with_errors(labels, 2),
                class_names=NAMES) | kwargs
    with pytest.raises(ValueError, match=message):
        plots.misclassified(tmp_path / "m.png", **args)
    assert not list(tmp_path.iterdir())


def test_confusion(tmp_path):
    labels = np.arange(100) % 10
    pred = np.where(np.arange(100) < 7, (labels + 3) % 10, labels)
    cm = np.asarray(metrics.confusion_matrix(pred, labels, 10))
    assert_png(plots.confusion(tmp_path / "c.png", cm, NAMES))
    with pytest.raises(ValueError, match="square"):
        plots.confusion(tmp_path / "bad.png", cm[:3], NAMES)


def record(epoch: int, members: int = 3, val: bool = True) -> dict:
    r = {"epoch": epoch, "train_loss": [1 / epoch + 0.01 * m for m in range(members)],
         "train_accuracy": [1 - 0.1 / epoch] * members, "learning_rate": 0.1 / epoch}
    if val:
        r |= {"val_loss": [1.1 / epoch] * members, "val_accuracy": [1 - 0.12 / epoch] * members,
              "val_ensemble_accuracy": 1 - 0.1 / epoch, "val_ensemble_nll": 0.9 / epoch}
    return r


@pytest.mark.parametrize("records", [
    [record(e) for e in range(1, 5)],
    [record(e, val=False) for e in range(1, 3)],
    [record(1, members=1)],
    [],  # A run with no finished epoch still gets a picture.
], ids=["val", "no-val", "one-epoch", "empty"])
def test_curves(tmp_path, records):
    assert_png(plots.curves(tmp_path / "curves.png", records))


def test_curves_reject_mixed_member_counts(tmp_path):
    with pytest.raises(ValueError, match="number of members"):
        plots.curves(tmp_path / "curves.png", [record(1, members=2), record(2, members=3)])


def test_ensemble_size(tmp_path):
    assert_png(plots.ensemble_size(tmp_path / "s.png", np.array([0.97, 0.98, 0.985])))
    with pytest.raises(ValueError, match="non-empty"):
        plots.ensemble_size(tmp_path / "bad.png", np.array([]))


def test_reliability(tmp_path):
    labels = np.arange(30) % 10
    rel = metrics.reliability(probs_with_errors(labels, 5), labels)
    assert_png(plots.reliability(tmp_path / "r.png", {k: np.asarray(v) for k, v in rel.items()}))
    with pytest.raises(ValueError, match="counts"):
        plots.reliability(tmp_path / "bad.png", {"edges": np.linspace(0, 1, 16)})

"""Evaluators: the metrics of an ensemble on one split, `Evaluator(predict, ...).run(members)`.

One evaluator serves the per-epoch validation, the final test (plain and test-time augmented)
and `analysis.RunView.evaluate`. The split lives on the device as uint8, padded to whole
batches; model selection only ever sees the validation split, and the train loop reads the test
split once, after training.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from mnist_jax import engine, metrics


class Evaluator:
    """Per-member logits and `metrics.summarize` of a split, for any state of the same run.

    `tta_samples` > 0 averages that many passes of a test-time-augmenting `predict` (the
    members' softmax is averaged; the logits returned are its log).
    """

    def __init__(self, predict: Callable, images: np.ndarray, labels: np.ndarray, *, mesh: Any,
                 batch_size: int, tta_samples: int = 0):
        self.host_images = images
        self.labels = labels
        self.predict = predict
        self.mesh = mesh
        self.batch_size = batch_size  # the most; `engine.eval_batch_size` bounds it per device
        self.tta_samples = tta_samples
        self._device_images: tuple[int, jax.Array] | None = None

    def logits(self, members: Any) -> np.ndarray:
        """Float32 logits [M, N, C] of every member's weights (`predict`'s first argument) on
        every image of the split."""
        if not self.tta_samples:
            return self._pass(members, jax.random.PRNGKey(0))
        probs = np.mean([np.asarray(metrics.member_probs(self._pass(members, jax.random.PRNGKey(s))))
                         for s in range(self.tta_samples)], axis=0)
        return metrics.probs_as_logits(probs)

    def row_logits(self, rows: list[Any]) -> np.ndarray:
        """Logits [M * R, N, C] of every ensemble row (`run.ensemble_rows`: R weight sets with
        the member axis leading), member-major: row m * R + r is row r of member m. Each row set
        goes through the same compiled `predict`."""
        logits = np.stack([self.logits(weights) for weights in rows], axis=1)
        return logits.reshape(-1, *logits.shape[2:])

    def run(self, members: Any) -> dict[str, Any]:
        """`metrics.summarize` of the split, unprefixed: accuracy, nll, member_accuracy, ..."""
        return metrics.summarize(self.logits(members), self.labels, prefix="")

    def _pass(self, members: Any, key: jax.Array) -> np.ndarray:
        batch, images = self._images(jax.tree.leaves(members)[0].shape[0])
        batches = [self.predict(members, images[i:i + batch], key)
                   for i in range(0, images.shape[0], batch)]
        return np.concatenate([engine.to_host(b) for b in batches], axis=1)[:, :len(self.labels)]

    def _images(self, num_members: int) -> tuple[int, jax.Array]:
        """The batch size for this many members, and the split on the device padded to whole
        batches (put there once)."""
        batch = engine.eval_batch_size(self.batch_size, len(self.labels), self.mesh, num_members)
        if self._device_images is None or self._device_images[0] != batch:
            n = len(self.labels)
            pad = np.zeros((-(-n // batch) * batch - n, *self.host_images.shape[1:]), np.uint8)
            self._device_images = batch, engine.put_replicated(
                np.concatenate([self.host_images, pad]), self.mesh)
        return self._device_images


def validation_record(summary: dict[str, Any]) -> dict[str, Any]:
    """The per-epoch validation numbers of metrics.jsonl, from an evaluator's `run`."""
    return {"val_accuracy": summary["member_accuracy"], "val_loss": summary["member_nll"],
            "val_ensemble_accuracy": summary["accuracy"], "val_ensemble_nll": summary["nll"]}

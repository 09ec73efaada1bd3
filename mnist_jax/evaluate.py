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
        n = len(labels)
        self.batch_size = min(batch_size, n)
        padded = -(-n // self.batch_size) * self.batch_size
        pad = np.zeros((padded - n, *images.shape[1:]), np.uint8)
        self.images = engine.put_replicated(np.concatenate([images, pad]), mesh)
        self.labels = labels
        self.predict = predict
        self.tta_samples = tta_samples

    def logits(self, members: Any) -> np.ndarray:
        """Float32 logits [M, N, C] of every member on every image of the split."""
        if not self.tta_samples:
            return self._pass(members, jax.random.PRNGKey(0))
        probs = np.mean([np.asarray(metrics.member_probs(self._pass(members, jax.random.PRNGKey(s))))
                         for s in range(self.tta_samples)], axis=0)
        return metrics.probs_as_logits(probs)

    def run(self, members: Any) -> dict[str, Any]:
        """`metrics.summarize` of the split, unprefixed: accuracy, nll, member_accuracy, ..."""
        return metrics.summarize(self.logits(members), self.labels, prefix="")

    def _pass(self, members: Any, key: jax.Array) -> np.ndarray:
        batches = [self.predict(members, self.images[i:i + self.batch_size], key)
                   for i in range(0, self.images.shape[0], self.batch_size)]
        return np.concatenate([engine.to_host(b) for b in batches], axis=1)[:, :len(self.labels)]


def validation_record(summary: dict[str, Any]) -> dict[str, Any]:
    """The per-epoch validation numbers of metrics.jsonl, from an evaluator's `run`."""
    return {"val_accuracy": summary["member_accuracy"], "val_loss": summary["member_nll"],
            "val_ensemble_accuracy": summary["accuracy"], "val_ensemble_nll": summary["nll"]}

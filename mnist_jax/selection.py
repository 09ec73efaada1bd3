"""Ensembles chosen on the validation split: greedy selection with replacement and top-k.

Members of one recipe make the same mistakes, so more of them stop helping; choosing which
members (of one run or of several) form the ensemble is a model choice, made on validation
probabilities only. The test split is then scored once, for the chosen ensemble
(`mnist_jax.analysis.select`).
"""

from __future__ import annotations

import numpy as np

METHODS = ("greedy", "top_k")


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def greedy(val_probs: np.ndarray, val_labels: np.ndarray, size: int) -> list[int]:
    """Caruana et al. (2004): `size` picks, each the member (again, if it helps most) whose
    addition gives the equal-weight mean the lowest validation NLL; ties to the lowest index.
    Returns the picked member indices in pick order, with repeats (a member's weight is its count)."""
    _check(val_probs, val_labels, size)
    picked: list[int] = []
    total = np.zeros(val_probs.shape[1:], np.float64)
    for n in range(1, size + 1):
        scores = [_nll((total + p) / n, val_labels) for p in val_probs]
        best = int(np.argmin(scores))
        picked.append(best)
        total += val_probs[best]
    return picked


def top_k(val_probs: np.ndarray, val_labels: np.ndarray, size: int) -> list[int]:
    """The `size` members of highest validation accuracy (ties to the lower validation NLL, then
    the lower index)."""
    _check(val_probs, val_labels, size)
    if size > len(val_probs):
        raise ValueError(f"top_k of {size} needs at least {size} members; there are {len(val_probs)}")
    accuracy = (val_probs.argmax(-1) == val_labels).mean(axis=1)
    nll = [_nll(p, val_labels) for p in val_probs]
    return sorted(range(len(val_probs)), key=lambda i: (-accuracy[i], nll[i], i))[:size]


def _check(val_probs: np.ndarray, val_labels: np.ndarray, size: int) -> None:
    if val_probs.ndim != 3 or val_probs.shape[1] != len(val_labels) or not len(val_probs):
        raise ValueError(f"validation probabilities must be [members, {len(val_labels)}, classes] "
                         f"with members >= 1; got shape {val_probs.shape}")
    if size < 1:
        raise ValueError(f"an ensemble needs size >= 1, got {size}")

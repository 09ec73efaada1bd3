"""Ensembles chosen on validation: greedy selection with replacement (Caruana et al. 2004), top-k."""

import itertools

import numpy as np
import pytest

from mnist_jax import selection


def _probs(rng, members: int, n: int = 200, classes: int = 4, skill=None) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(members, n, classes))
    for m, s in enumerate(skill or [1.0] * members):
        logits[m, np.arange(n), labels] += s
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return probs, labels


def _nll(probs, labels):
    return -np.log(probs[np.arange(len(labels)), labels]).mean()


def test_greedy_adds_the_member_that_lowers_validation_nll_most_at_each_pick():
    probs, labels = _probs(np.random.default_rng(0), 5, skill=[0.5, 2.0, 1.0, 1.5, 0.2])
    picked = selection.greedy(probs, labels, size=4)
    assert picked[0] == int(np.argmin([_nll(p, labels) for p in probs]))
    for n in range(1, 4):  # each later pick is the best one-member extension, repeats allowed
        base = probs[picked[:n]].sum(0)
        best = min(range(5), key=lambda i: (_nll((base + probs[i]) / (n + 1), labels), i))
        assert picked[n] == best
    assert 0 not in picked and 4 not in picked  # the weak members are never worth adding


def test_greedy_can_pick_a_member_again():
    """One good member and two poor ones: the best ensemble of 3 picks is the good one, thrice."""
    probs, labels = _probs(np.random.default_rng(1), 3, skill=[4.0, 0.0, 0.0])
    assert selection.greedy(probs, labels, size=3) == [0, 0, 0]


def test_top_k_takes_the_most_accurate_members():
    probs, labels = _probs(np.random.default_rng(2), 6, skill=[0.1, 3.0, 0.5, 2.0, 1.0, 2.5])
    accuracy = (probs.argmax(-1) == labels).mean(1)
    chosen = selection.top_k(probs, labels, size=3)
    assert sorted(accuracy[chosen]) == sorted(accuracy)[-3:]
    assert all(a >= b for a, b in itertools.pairwise(accuracy[chosen]))


@pytest.mark.parametrize("call,message", [
    (lambda p, l: selection.greedy(p, l, size=0), "size >= 1, got 0"),
    (lambda p, l: selection.top_k(p, l, size=9), "top_k of 9 needs at least 9 members; there are 3"),
    (lambda p, l: selection.greedy(p[0], l, size=2), "must be \\[members, 200, classes\\]"),
])
def test_bad_requests_are_refused_in_one_line(call, message):
    probs, labels = _probs(np.random.default_rng(3), 3)
    with pytest.raises(ValueError, match=message):
        call(probs, labels)

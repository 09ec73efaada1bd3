"""Ensemble metrics: pure functions on arrays of member logits.

Shapes: `logits` is [M, N, C] (members, examples, classes), `probs` is [N, C] and `labels` is [N]
integer class ids. Everything is computed with jnp in float32 so evaluation can stay on device.
The array functions are jitted (`method` and `num_bins` static) and can be called inside other
jitted code; `summarize` returns python numbers for logging. The uncertainty section scores each
example (entropies, mutual information, disagreement), judges an out-of-distribution detector
(AUROC, AUPR, FPR at 95 % TPR), selective prediction and temperature scaling;
`uncertainty_summary` and `ood_summary` return python numbers.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = Any  # A numpy or jax array.

METHODS = ("mean_prob", "mean_logit")


def _check_logits(logits: Array) -> jax.Array:
    logits = jnp.asarray(logits)
    if logits.ndim != 3 or 0 in logits.shape:
        raise ValueError(
            f"logits must have shape [members, examples, classes] with no empty axis; got shape "
            f"{tuple(logits.shape)} (for a single model add a members axis: logits[None])"
        )
    return logits.astype(jnp.float32)


def _check_probs(probs: Array, name: str = "probs") -> jax.Array:
    probs = jnp.asarray(probs)
    if probs.ndim != 2 or 0 in probs.shape:
        raise ValueError(
            f"{name} must have shape [examples, classes] with no empty axis; got shape "
            f"{tuple(probs.shape)} (combine member logits [M, N, C] with ensemble_probs first)"
        )
    return probs.astype(jnp.float32)


def _check_labels(labels: Array, num_examples: int, num_classes: int,
                  name: str = "labels") -> jax.Array:
    """Rejects one-hot, float, misaligned or (when concrete) out-of-range class ids in one line."""
    if not isinstance(labels, jax.core.Tracer):
        labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != num_examples:
        raise ValueError(
            f"{name} must be integer class ids of shape [{num_examples}]; got shape "
            f"{tuple(labels.shape)} (one-hot? pass {name}.argmax(-1))"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"{name} must have an integer dtype; got {labels.dtype} (cast with {name}.astype(int))"
        )
    if isinstance(labels, np.ndarray) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}); got values in [{labels.min()}, "
            f"{labels.max()}] (from another dataset, or the wrong number of classes?)"
        )
    return jnp.asarray(labels).astype(jnp.int32)  # uint8 labels * C would overflow.


def _jit_checking_labels(*static_argnames: str) -> Callable[[Callable], Callable]:
    """jit a `fn(scores, labels, ...)`, first checking concrete labels on the host: a jitted body
    sees only tracers, so it could not reject out-of-range label values."""

    def decorate(fn: Callable) -> Callable:
        jitted = jax.jit(fn, static_argnames=static_argnames)

        @functools.wraps(fn)
        def checked(scores: Array, labels: Array, *args, **kwargs):
            if np.ndim(scores) >= 2:
                _check_labels(labels, *np.shape(scores)[-2:])
            return jitted(scores, labels, *args, **kwargs)

        return checked

    return decorate


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")


def _hits(pred: jax.Array, labels: jax.Array) -> jax.Array:
    return (pred == labels).sum(axis=-1)


@jax.jit
def member_probs(logits: Array) -> jax.Array:
    """Per-member softmax [M, N, C] in float32 (max-subtracted, so stable for huge logits)."""
    return jax.nn.softmax(_check_logits(logits), axis=-1)


def probs_as_logits(probs: np.ndarray) -> np.ndarray:
    """Logits whose softmax is `probs` (their clipped log), for functions that take logits."""
    return np.log(np.clip(probs, 1e-12, 1.0))


@functools.partial(jax.jit, static_argnames="method")
def ensemble_probs(logits: Array, method: str = "mean_prob") -> jax.Array:
    """Combines member logits [M, N, C] into probabilities [N, C].

    'mean_prob' averages the member softmaxes (the deep-ensembles predictive distribution);
    'mean_logit' is the softmax of the mean logits (a normalised geometric mean, usually sharper).
    """
    _check_method(method)
    logits = _check_logits(logits)
    if method == "mean_logit":
        return jax.nn.softmax(logits.mean(axis=0), axis=-1)
    return jax.nn.softmax(logits, axis=-1).mean(axis=0)


@jax.jit
def vote(logits: Array) -> jax.Array:
    """Majority vote of the member argmaxes, [N] int.

    A tie between the most-voted classes goes to the one with the highest mean member
    probability, so an even split is settled by how sure the members were; an exact tie in that
    too goes to the lowest class id.
    """
    logits = _check_logits(logits)
    votes = jax.nn.one_hot(logits.argmax(-1), logits.shape[-1]).sum(axis=0)  # [N, C]
    tied = votes == votes.max(axis=-1, keepdims=True)
    mean_prob = jax.nn.softmax(logits, axis=-1).mean(axis=0)
    return jnp.where(tied, mean_prob, -1.0).argmax(axis=-1)


@_jit_checking_labels()
def accuracy(probs_or_logits: Array, labels: Array) -> jax.Array:
    """Fraction of examples whose argmax over the [N, C] scores equals the label."""
    scores = _check_probs(probs_or_logits, "probs_or_logits")
    labels = _check_labels(labels, *scores.shape)
    return _hits(scores.argmax(-1), labels) / labels.shape[0]


@_jit_checking_labels()
def nll(probs: Array, labels: Array, eps: float = 1e-12) -> jax.Array:
    """Mean negative log-likelihood of the labels.

    Probabilities are clipped to [eps, 1] so one confidently wrong example costs at most
    -log(eps) (27.6 nats) instead of making the mean inf.
    """
    probs = _check_probs(probs)
    labels = _check_labels(labels, *probs.shape)
    p_true = jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]
    return -jnp.log(jnp.clip(p_true, eps, 1.0)).mean()


@_jit_checking_labels()
def brier(probs: Array, labels: Array) -> jax.Array:
    """Multi-class Brier score: squared error to the one-hot label summed over classes, mean
    over examples; 0 is perfect and 2 is all mass on a wrong class."""
    probs = _check_probs(probs)
    labels = _check_labels(labels, *probs.shape)
    onehot = jax.nn.one_hot(labels, probs.shape[-1])
    return ((probs - onehot) ** 2).sum(axis=-1).mean()


def _bin_sums(probs: jax.Array, labels: jax.Array, num_bins: int):
    """Per-bin edges, example counts, correct counts and confidence sums.

    Bins are equal-width over [0, 1] and right-closed: bin b holds confidences in
    (b / B, (b + 1) / B], so a confidence of exactly 0.5 with B = 2 falls in the first bin.
    """
    if not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int; got {num_bins!r}")
    edges = jnp.linspace(0.0, 1.0, num_bins + 1)
    conf = probs.max(axis=-1)
    correct = (probs.argmax(-1) == labels).astype(jnp.float32)
    bins = jnp.searchsorted(edges[1:-1], conf, side="left")
    counts = jnp.bincount(bins, length=num_bins)
    hits = jnp.bincount(bins, weights=correct, length=num_bins)
    conf_sums = jnp.bincount(bins, weights=conf, length=num_bins)
    return edges, counts, hits, conf_sums


@_jit_checking_labels("num_bins")
def ece(probs: Array, labels: Array, num_bins: int = 15) -> jax.Array:
    """Expected calibration error, sum over bins of (n_b / N) * |accuracy_b - confidence_b|,
    with confidence = max probability and equal-width bins over [0, 1]."""
    probs = _check_probs(probs)
    labels = _check_labels(labels, *probs.shape)
    _, _, hits, conf_sums = _bin_sums(probs, labels, num_bins)
    return jnp.abs(hits - conf_sums).sum() / probs.shape[0]


@_jit_checking_labels("num_bins")
def reliability(probs: Array, labels: Array, num_bins: int = 15) -> dict[str, jax.Array]:
    """The per-bin terms behind `ece`, for a reliability diagram.

    Returns 'edges' [B + 1], 'accuracy' [B], 'confidence' [B] (both NaN in empty bins) and
    'counts' [B] int.
    """
    probs = _check_probs(probs)
    labels = _check_labels(labels, *probs.shape)
    edges, counts, hits, conf_sums = _bin_sums(probs, labels, num_bins)
    filled = jnp.maximum(counts, 1)
    return {
        "edges": edges,
        "accuracy": jnp.where(counts > 0, hits / filled, jnp.nan),
        "confidence": jnp.where(counts > 0, conf_sums / filled, jnp.nan),
        "counts": counts,
    }


@_jit_checking_labels("method")
def ensemble_size_curve(logits: Array, labels: Array, method: str = "mean_prob") -> jax.Array:
    """[M] accuracy of the ensemble of the first k members, for k = 1..M."""
    _check_method(method)
    logits = _check_logits(logits)
    labels = _check_labels(labels, *logits.shape[1:])
    scores = logits if method == "mean_logit" else jax.nn.softmax(logits, axis=-1)
    # Running sums give every prefix ensemble at once; argmax does not need the 1 / k.
    return _hits(jnp.cumsum(scores, axis=0).argmax(-1), labels) / labels.shape[0]


def confusion_matrix(pred: Array, labels: Array, num_classes: int) -> jax.Array:
    """[C, C] int counts; row = true label, column = predicted class."""
    pred = _check_labels(pred, np.shape(pred)[0] if np.ndim(pred) else 0, num_classes, "pred")
    return _confusion(pred, _check_labels(labels, pred.shape[0], num_classes), num_classes)


@functools.partial(jax.jit, static_argnames="num_classes")
def _confusion(pred: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    flat = labels * num_classes + pred
    return jnp.bincount(flat, length=num_classes * num_classes).reshape(num_classes, num_classes)


@jax.jit
def _summary_arrays(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Correct counts for the accuracies (divided on the host, so 5 / 50 logs as 0.1 and not as
    XLA's 5 * (1 / 50)) and the other ensemble metrics as arrays."""
    probs = member_probs(logits)
    ens = probs.mean(axis=0)
    return {
        "member_accuracy": _hits(probs.argmax(-1), labels),
        "accuracy": _hits(ens.argmax(-1), labels),
        "accuracy_mean_logit": _hits(logits.mean(axis=0).argmax(-1), labels),
        "accuracy_vote": _hits(vote(logits), labels),
        "size_curve": _hits(jnp.cumsum(probs, axis=0).argmax(-1), labels),
        "member_nll": jax.vmap(nll, in_axes=(0, None))(probs, labels),
        "nll": nll(ens, labels),
        "brier": brier(ens, labels),
        "ece": ece(ens, labels),
    }


def summarize(logits: Array, labels: Array, prefix: str) -> dict[str, Any]:
    """Every ensemble metric as python numbers, ready for a metrics.jsonl line.

    Keys are f"{prefix}_{name}" ('test' gives 'test_accuracy'; '' gives bare names). The
    ensemble is the mean of member softmaxes unless a name says otherwise.
        member_accuracy, member_nll  list[float], one per member
        accuracy                     ensemble accuracy
        accuracy_mean_logit          accuracy of the softmax of mean logits
        accuracy_vote                accuracy of the majority vote (ties as in `vote`)
        nll, brier, ece              of the ensemble (ece with 15 bins)
        errors                       int, examples the ensemble gets wrong
        num_examples                 int, N
        ensemble_gain                accuracy - mean(member_accuracy)
        size_curve                   list[float], accuracy of the first k members, k = 1..M
    """
    logits = _check_logits(logits)
    labels = _check_labels(labels, *logits.shape[1:])
    n = logits.shape[1]
    values = {k: np.asarray(v) for k, v in jax.device_get(_summary_arrays(logits, labels)).items()}
    hits = values["accuracy"].item()
    for name in ("member_accuracy", "accuracy", "accuracy_mean_logit", "accuracy_vote",
                 "size_curve"):
        values[name] = values[name] / n
    values["errors"] = n - hits
    values["num_examples"] = n
    values["ensemble_gain"] = values["accuracy"] - values["member_accuracy"].mean()
    tag = prefix.rstrip("_")
    return {f"{tag}_{name}" if tag else name: _to_python(v) for name, v in values.items()}


# ----------------------------------------------------------------------------- uncertainty
# Per-example scores are in nats and higher means less sure; OOD detection treats the
# out-of-distribution examples as the positive class.

TEMPERATURE_RANGE = (0.05, 20.0)  # where `fit_temperature` searches


def _entropy(probs: jax.Array) -> jax.Array:
    """Entropy in nats over the last axis, with 0 log 0 = 0."""
    return jax.scipy.special.entr(probs).sum(axis=-1)


def _entropies(probs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(predictive, expected) entropy [N] of member probabilities [M, N, C]."""
    return _entropy(probs.mean(axis=0)), _entropy(probs).mean(axis=0)


@jax.jit
def predictive_entropy(logits: Array) -> jax.Array:
    """[N] entropy of the ensemble's mean probabilities: all the uncertainty it expresses."""
    return _entropies(jax.nn.softmax(_check_logits(logits), axis=-1))[0]


@jax.jit
def expected_entropy(logits: Array) -> jax.Array:
    """[N] mean of the members' own entropies: the uncertainty each member has alone (aleatoric,
    as far as the members see it)."""
    return _entropies(jax.nn.softmax(_check_logits(logits), axis=-1))[1]


@jax.jit
def mutual_information(logits: Array) -> jax.Array:
    """[N] predictive minus expected entropy: the uncertainty that comes only from the members
    disagreeing (the ensemble's epistemic part); 0 for one member or identical members."""
    predictive, expected = _entropies(jax.nn.softmax(_check_logits(logits), axis=-1))
    return jnp.maximum(predictive - expected, 0.0)  # >= 0 by concavity; rounding can dip below.


@jax.jit
def disagreement(logits: Array) -> jax.Array:
    """[N] fraction of member pairs whose predicted classes differ (0 for a single member)."""
    logits = _check_logits(logits)
    m = logits.shape[0]
    if m == 1:
        return jnp.zeros(logits.shape[1], jnp.float32)
    votes = jax.nn.one_hot(logits.argmax(-1), logits.shape[-1]).sum(axis=0)  # [N, C]
    return 1.0 - (votes * (votes - 1)).sum(axis=-1) / (m * (m - 1))


@_jit_checking_labels()
def error_correlation(logits: Array, labels: Array) -> jax.Array:
    """[M, M] Pearson correlation of the members' error indicators (1 where a member is wrong):
    how much their mistakes coincide, 1 on the diagonal; NaN for a member with no error, or
    none right, whose errors do not vary."""
    logits = _check_logits(logits)
    labels = _check_labels(labels, *logits.shape[1:])
    errors = (logits.argmax(-1) != labels).astype(jnp.float32)  # [M, N]
    # From error rates and joint error rates (exact counts over N): float32 sums of centred
    # values would lose ~1e-4 over 10,000 examples.
    both = (errors @ errors.T) / errors.shape[1]
    rate = errors.mean(axis=1)
    spread = jnp.sqrt(rate * (1.0 - rate))
    return (both - rate[:, None] * rate[None, :]) / (spread[:, None] * spread[None, :])


def _check_scores(scores: Array, name: str) -> jax.Array:
    if not isinstance(scores, jax.core.Tracer):
        scores = np.asarray(scores)
        if scores.ndim == 1 and np.isnan(scores).any():
            raise ValueError(f"{name} holds NaN; score every example with a number")
    if scores.ndim != 1 or scores.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N] array of scores (higher = more out of "
                         f"distribution); got shape {tuple(scores.shape)}")
    return jnp.asarray(scores, jnp.float32)


def ood_detection(in_scores: Array, out_scores: Array) -> dict[str, jax.Array]:
    """How well a score separates out-of-distribution examples (the positive class) from
    in-distribution ones, when a higher score means more out of distribution (negate a
    confidence such as the max probability first).

    'auroc': P(an OOD score > an in-distribution one), ties counting half;
    'aupr': average precision of the OOD class (mean over OOD examples of the precision at their
    score; scikit-learn's average_precision_score);
    'fpr95': the fraction of in-distribution examples flagged at the highest threshold that flags
    at least 95 % of the OOD ones.
    """
    return _ood_detection(_check_scores(in_scores, "in_scores"),
                          _check_scores(out_scores, "out_scores"))


@jax.jit
def _ood_detection(in_scores: jax.Array, out_scores: jax.Array) -> dict[str, jax.Array]:
    n_in, n_out = in_scores.shape[0], out_scores.shape[0]
    in_sorted, out_sorted = jnp.sort(in_scores), jnp.sort(out_scores)
    in_below = jnp.searchsorted(in_sorted, out_scores, side="left")
    in_at_or_below = jnp.searchsorted(in_sorted, out_scores, side="right")
    auroc = jnp.minimum((in_below + 0.5 * (in_at_or_below - in_below)).mean() / n_in, 1.0)  # rounding
    flagged_out = n_out - jnp.searchsorted(out_sorted, out_scores, side="left")  # >= each score
    flagged_in = n_in - in_below
    aupr = (flagged_out / (flagged_out + flagged_in)).mean()
    threshold = out_sorted[n_out - (95 * n_out + 99) // 100]  # ceil(95 %) of OOD scores >= it
    fpr95 = (in_scores >= threshold).mean()
    return {"auroc": auroc, "aupr": aupr, "fpr95": fpr95}


@_jit_checking_labels()
def selective_prediction(probs: Array, labels: Array) -> dict[str, jax.Array]:
    """Accuracy on the k most confident examples (max probability) against coverage k / N.

    Returns 'coverage' [N], 'accuracy' [N] and 'area' (the mean of 'accuracy', the area under
    the curve). Examples of equal confidence are taken in random order, in expectation, so the
    curve does not depend on how they are listed.
    """
    probs = _check_probs(probs)
    labels = _check_labels(labels, *probs.shape)
    n = probs.shape[0]
    order = jnp.argsort(-probs.max(axis=-1))
    neg_conf = -probs.max(axis=-1)[order]
    hits = jnp.cumsum((probs.argmax(-1) == labels)[order].astype(jnp.float32))
    hits = jnp.concatenate([jnp.zeros(1), hits])  # hits[k]: correct among the first k
    start = jnp.searchsorted(neg_conf, neg_conf, side="left")  # each example's tie group
    end = jnp.searchsorted(neg_conf, neg_conf, side="right")
    taken = jnp.arange(1, n + 1) - start
    expected_hits = hits[start] + taken * (hits[end] - hits[start]) / (end - start)
    accuracy = expected_hits / jnp.arange(1, n + 1)
    return {"coverage": jnp.arange(1, n + 1) / n, "accuracy": accuracy, "area": accuracy.mean()}


@_jit_checking_labels("per_member")
def fit_temperature(logits: Array, labels: Array, per_member: bool = False) -> jax.Array:
    """The temperature T minimising the NLL of softmax(logits / T) on held-out (validation)
    examples: one per member [M] with `per_member`, else one [] for the ensemble (the mean of
    the members' softmax(logits / T)).

    A 1-D search over log T in TEMPERATURE_RANGE: a grid, then a finer grid around its best
    point (within 0.2 % of the grid optimum); T > 1 softens an overconfident model.
    """
    logits = _check_logits(logits)
    labels = _check_labels(labels, *logits.shape[1:])
    members = logits.shape[0]

    def loss(log_t: jax.Array) -> jax.Array:  # [M] per member, or [1]: the NLL [M] or [1]
        scaled = jax.nn.log_softmax(logits / jnp.exp(log_t)[:, None, None], axis=-1)
        picked = jnp.take_along_axis(scaled, labels[None, :, None], axis=-1)[..., 0]  # [M, N]
        if per_member:
            return -picked.mean(axis=-1)
        return -(jax.nn.logsumexp(picked, axis=0) - jnp.log(members)).mean(keepdims=True)

    def argmin(grid: jax.Array) -> jax.Array:  # [G, W] -> [W], each column's best point
        return jnp.take_along_axis(grid, jax.lax.map(loss, grid).argmin(axis=0)[None], axis=0)[0]

    lo, hi = math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])
    width = members if per_member else 1
    coarse = jnp.broadcast_to(jnp.linspace(lo, hi, 121)[:, None], (121, width))
    step = (hi - lo) / 120
    best = argmin(argmin(coarse)[None] + jnp.linspace(-step, step, 101)[:, None])
    return jnp.exp(best if per_member else best[0])


@jax.jit
def _uncertainty_arrays(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    probs = jax.nn.softmax(logits, axis=-1)
    ens = probs.mean(axis=0)
    predictive, expected = _entropies(probs)
    per_member = jax.vmap(lambda p: (nll(p, labels), brier(p, labels), ece(p, labels)))(probs)
    return {
        "member_hits": _hits(probs.argmax(-1), labels),
        "member_nll": per_member[0], "member_brier": per_member[1], "member_ece": per_member[2],
        "member_entropy": _entropy(probs).mean(axis=-1),
        "hits": _hits(ens.argmax(-1), labels),
        "nll": nll(ens, labels), "brier": brier(ens, labels), "ece": ece(ens, labels),
        "entropy": predictive.mean(),
        "mutual_information": jnp.maximum(predictive - expected, 0.0).mean(),
        "disagreement": disagreement(logits).mean(),
    }


def uncertainty_summary(logits: Array, labels: Array) -> dict[str, Any]:
    """An ensemble's and each member's numbers on one (possibly shifted) set, as python numbers:
    {"ensemble": {accuracy, nll, brier, ece, entropy, mutual_information, disagreement},
    "members": [{accuracy, nll, brier, ece, entropy}, ...]}; entropies are means over examples in
    nats, the ensemble is the mean of member softmaxes and ece has 15 bins."""
    logits = _check_logits(logits)
    labels = _check_labels(labels, *logits.shape[1:])
    n = logits.shape[1]
    v = {k: np.asarray(x) for k, x in jax.device_get(_uncertainty_arrays(logits, labels)).items()}
    ensemble = {"accuracy": v["hits"].item() / n,
                **{k: _to_python(v[k]) for k in ("nll", "brier", "ece", "entropy",
                                                 "mutual_information", "disagreement")}}
    members = [{"accuracy": int(v["member_hits"][m]) / n,
                **{k: _to_python(v[f"member_{k}"][m]) for k in ("nll", "brier", "ece", "entropy")}}
               for m in range(logits.shape[0])]
    return {"ensemble": ensemble, "members": members}


OOD_SCORES = ("entropy", "max_prob", "mutual_information")


def ood_summary(in_logits: Array, out_logits: Array) -> dict[str, dict[str, float]]:
    """`ood_detection` of an ensemble under each of OOD_SCORES, as python numbers: predictive
    entropy, max probability of the mean (negated, so higher = more OOD) and mutual information."""
    def scores(logits: Array) -> dict[str, jax.Array]:
        return {"entropy": predictive_entropy(logits),
                "max_prob": -ensemble_probs(logits).max(axis=-1),
                "mutual_information": mutual_information(logits)}

    inside, outside = scores(in_logits), scores(out_logits)
    return {name: {k: _to_python(v) for k, v in
                   jax.device_get(ood_detection(inside[name], outside[name])).items()}
            for name in OOD_SCORES}


def _to_python(value: Any) -> Any:
    """float32 -> the shortest decimal that round-trips (2.5150588, not 2.515058755874634)."""
    value = np.asarray(value)
    if value.dtype == np.float32:
        return float(str(value)) if value.ndim == 0 else [float(str(v)) for v in value]
    return value.tolist()


def truncated(value: float, places: int) -> str:
    """`value` cut, never rounded up, to `places` decimals: tables of results must not flatter them."""
    return f"{math.floor(value * 10 ** places + 1e-6) / 10 ** places:,.{places}f}"

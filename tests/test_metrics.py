"""mnist_jax.metrics against values worked out by hand on tiny arrays."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_jax import metrics

# Four examples, four classes: confidences 0.9 (right), 0.7 (wrong), 0.35 (right), 0.85 (wrong).
ECE_PROBS = np.array([[0.9, 0.1, 0.0, 0.0],
                      [0.7, 0.3, 0.0, 0.0],
                      [0.35, 0.25, 0.2, 0.2],
                      [0.85, 0.15, 0.0, 0.0]])
ECE_LABELS = np.array([0, 1, 0, 1])

# Member 0 likes class 1, member 1 all but rules it out: the mean of probabilities keeps class 1,
# the mean of logits (a geometric mean) drops it.
SPLIT_LOGITS = np.array([[[0.0, 3.0, 0.0]], [[0.0, -20.0, 0.0]]], np.float32)


def random_logits(m=5, n=64, c=10, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(m, n, c)).astype(np.float32)
    logits[:, np.arange(n), labels] += 1.0  # Better than chance, so members disagree usefully.
    return logits, labels


def test_member_probs_is_a_stable_float32_softmax():
    probs = metrics.member_probs(np.array([[[1000.0, 0.0], [0.0, 0.0]]], np.float16))
    assert probs.dtype == jnp.float32
    np.testing.assert_allclose(probs, [[[1.0, 0.0], [0.5, 0.5]]])


def test_accuracy_of_probs_and_of_logits():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert float(metrics.accuracy(probs, np.array([0, 0, 0]))) == pytest.approx(2 / 3)
    assert float(metrics.accuracy(np.log(probs), np.array([0, 1, 0]))) == 1.0


def test_vote_majority_and_tie_broken_by_mean_probability():
    # Three members vote 1, 1, 0 on the first example: the majority wins although the lone
    # dissenter is far surer.
    logits = np.array([[[0.0, 1.0]], [[0.0, 1.0]], [[9.0, 0.0]]])
    assert metrics.vote(logits).tolist() == [1]
    # Two members, one vote each for classes 1 and 2. Class 0 has the highest mean probability
    # but no vote, so it cannot win; of the tied classes, 1 has the higher mean probability.
    probs = np.array([[[0.44, 0.56, 1e-9]], [[0.45, 1e-9, 0.55]]])
    assert metrics.ensemble_probs(np.log(probs)).argmax(-1).tolist() == [0]
    assert metrics.vote(np.log(probs)).tolist() == [1]
    # The same tie with the confidences swapped goes to the higher class id.
    probs = np.array([[[0.45, 0.55, 1e-9]], [[0.44, 1e-9, 0.56]]])
    assert metrics.vote(np.log(probs)).tolist() == [2]


def test_nll_by_hand_and_clipped():
    probs = np.array([[0.5, 0.5], [0.25, 0.75]])
    expected = (math.log(2) + math.log(4 / 3)) / 2
    assert float(metrics.nll(probs, np.array([0, 1]))) == pytest.approx(expected, rel=1e-6)
    zero = float(metrics.nll(np.array([[1.0, 0.0]]), np.array([1])))
    assert zero == pytest.approx(-math.log(1e-12), rel=1e-5)


def test_brier_by_hand():
    probs = np.array([[0.5, 0.5], [0.25, 0.75]])
    # (0.25 + 0.25 + 0.0625 + 0.0625) / 2 examples.
    assert float(metrics.brier(probs, np.array([0, 1]))) == pytest.approx(0.3125)
    assert float(metrics.brier(np.eye(3), np.array([0, 1, 2]))) == 0.0
    assert float(metrics.brier(np.eye(3), np.array([1, 2, 0]))) == 2.0


def test_ece_by_hand():
    # Bins of width 0.2: (0.8, 1] holds 0.9 and 0.85 (accuracy 0.5, confidence 0.875),
    # (0.6, 0.8] holds 0.7 (accuracy 0) and (0.2, 0.4] holds 0.35 (accuracy 1):
    # ECE = 2/4 * 0.375 + 1/4 * 0.7 + 1/4 * 0.65 = 0.525.
    assert float(metrics.ece(ECE_PROBS, ECE_LABELS, num_bins=5)) == pytest.approx(0.525)


def test_reliability_bins_match_ece():
    rel = metrics.reliability(ECE_PROBS, ECE_LABELS, num_bins=5)
    np.testing.assert_allclose(rel["edges"], [0, 0.2, 0.4, 0.6, 0.8, 1.0], atol=1e-7)
    assert rel["counts"].tolist() == [0, 1, 0, 1, 2]
    np.testing.assert_allclose(rel["accuracy"], [np.nan, 1, np.nan, 0, 0.5])
    np.testing.assert_allclose(rel["confidence"], [np.nan, 0.35, np.nan, 0.7, 0.875], rtol=1e-6)


def test_bins_are_right_closed():
    # 0.5 is the edge between two bins: it belongs to the lower one; 1.0 to the last.
    rel = metrics.reliability(np.array([[0.5, 0.5], [1.0, 0.0]]), np.array([0, 0]), num_bins=2)
    assert rel["counts"].tolist() == [1, 1]


def test_mean_logit_and_mean_prob_can_disagree():
    np.testing.assert_allclose(metrics.ensemble_probs(SPLIT_LOGITS, "mean_prob").sum(-1), 1.0,
                               rtol=1e-6)
    assert metrics.ensemble_probs(SPLIT_LOGITS, "mean_prob").argmax(-1).tolist() == [1]
    assert metrics.ensemble_probs(SPLIT_LOGITS, "mean_logit").argmax(-1).tolist() == [0]
    summary = metrics.summarize(SPLIT_LOGITS, np.array([1]), prefix="")
    assert summary["accuracy"] == 1.0 and summary["accuracy_mean_logit"] == 0.0


@pytest.mark.parametrize("method", metrics.METHODS)
def test_size_curve_endpoints(method):
    logits, labels = random_logits()
    curve = np.asarray(metrics.ensemble_size_curve(logits, labels, method))
    assert curve.shape == (5,)
    assert curve[0] == pytest.approx(float(metrics.accuracy(logits[0], labels)))
    assert curve[-1] == pytest.approx(
        float(metrics.accuracy(metrics.ensemble_probs(logits, method), labels)))


def test_summarize_keys_and_consistency():
    logits, labels = random_logits(m=4, n=50)
    summary = metrics.summarize(logits, labels, prefix="test")
    names = ["member_accuracy", "member_nll", "accuracy", "accuracy_mean_logit", "accuracy_vote",
             "nll", "brier", "ece", "errors", "num_examples", "ensemble_gain", "size_curve"]
    assert set(summary) == {f"test_{n}" for n in names}
    json.dumps(summary)  # Plain python numbers, ready for metrics.jsonl.

    probs = metrics.ensemble_probs(logits)
    assert summary["test_accuracy"] == pytest.approx(float(metrics.accuracy(probs, labels)))
    assert summary["test_accuracy_vote"] == np.mean(np.asarray(metrics.vote(logits)) == labels)
    assert summary["test_nll"] == pytest.approx(float(metrics.nll(probs, labels)), rel=1e-6)
    assert summary["test_brier"] == pytest.approx(float(metrics.brier(probs, labels)), rel=1e-6)
    assert summary["test_ece"] == pytest.approx(float(metrics.ece(probs, labels)), rel=1e-6)
    assert summary["test_member_accuracy"] == [
        pytest.approx(float(metrics.accuracy(member, labels))) for member in logits]
    assert len(summary["test_member_nll"]) == 4
    assert summary["test_num_examples"] == 50
    assert summary["test_errors"] == round(50 * (1 - summary["test_accuracy"]))
    assert summary["test_ensemble_gain"] == pytest.approx(
        summary["test_accuracy"] - np.mean(summary["test_member_accuracy"]))
    assert summary["test_size_curve"][-1] == summary["test_accuracy"]
    assert summary["test_size_curve"][0] == summary["test_member_accuracy"][0]
    assert set(metrics.summarize(logits, labels, prefix="")) == set(names)


def test_summary_accuracies_are_exact_fractions():
    logits = np.zeros((1, 50, 2), np.float32)
    logits[0, :5, 1] = 1.0
    assert metrics.summarize(logits, np.ones(50, int), "val")["val_accuracy"] == 0.1


def test_confusion_matrix_rows_are_true_labels():
    cm = metrics.confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    # uint8 labels (as stored in IDX files) with 47 classes: 46 * 47 must not wrap around.
    cm = metrics.confusion_matrix(np.array([46, 1]), np.array([46, 0], np.uint8), 47)
    assert cm[46, 46] == 1 and cm[0, 1] == 1 and cm.sum() == 2


def test_callable_inside_jit_with_numpy_or_jax_inputs():
    logits, labels = random_logits()

    @jax.jit
    def evaluate(logits, labels):
        probs = metrics.ensemble_probs(logits)
        return metrics.nll(probs, labels), metrics.ece(probs, labels, num_bins=10)

    nll, ece = evaluate(jnp.asarray(logits), jnp.asarray(labels))
    probs = np.asarray(metrics.ensemble_probs(logits))
    assert float(nll) == pytest.approx(float(metrics.nll(probs, labels)), rel=1e-6)
    assert float(ece) == pytest.approx(float(metrics.ece(probs, labels, 10)), rel=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda: metrics.ensemble_probs(np.zeros((4, 10))), r"logits must have shape \[members"),
    (lambda: metrics.ensemble_probs(np.zeros((1, 4, 10)), "median"), "method must be one of"),
    (lambda: metrics.accuracy(np.zeros((2, 4, 10)), np.zeros(4, int)), r"\[examples, classes\]"),
    (lambda: metrics.nll(np.full((2, 3), 1 / 3), np.eye(3)[:2]), "one-hot"),
    (lambda: metrics.nll(np.full((2, 3), 1 / 3), np.array([0.0, 1.0])), "integer dtype"),
    (lambda: metrics.nll(np.full((2, 3), 1 / 3), np.array([0, 3])), r"lie in \[0, 3\)"),
    (lambda: metrics.summarize(np.zeros((1, 3, 2)), np.zeros(4, int), "t"), r"shape \[3\]"),
    (lambda: metrics.ece(np.full((2, 2), 0.5), np.zeros(2, int), num_bins=0), "num_bins"),
    (lambda: metrics.confusion_matrix(np.zeros((2, 2)), np.zeros(2, int), 2), "pred must be"),
    (lambda: metrics.confusion_matrix(np.array([0, 2]), np.zeros(2, int), 2), "pred must lie"),
])
def test_bad_input_is_one_clear_line(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- uncertainty

# Two members over three classes: (1/2, 1/2, 0) and (1/2, 0, 1/2). Their mean (1/2, 1/4, 1/4) has
# entropy 1.5 log 2, each member log 2, so the mutual information is 0.5 log 2.
HALVES = np.array([[[0.0, 0.0, -1e4]], [[0.0, -1e4, 0.0]]], np.float32)


def test_entropies_and_mutual_information_by_hand():
    assert float(metrics.predictive_entropy(HALVES)[0]) == pytest.approx(1.5 * math.log(2))
    assert float(metrics.expected_entropy(HALVES)[0]) == pytest.approx(math.log(2))
    assert float(metrics.mutual_information(HALVES)[0]) == pytest.approx(0.5 * math.log(2))
    # Sure members that disagree: all the uncertainty is epistemic.
    opposed = np.array([[[30.0, -30.0]], [[-30.0, 30.0]]], np.float32)
    assert float(metrics.expected_entropy(opposed)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(metrics.mutual_information(opposed)[0]) == pytest.approx(math.log(2))


def test_mutual_information_is_zero_for_identical_members():
    logits, _ = random_logits(m=1)
    same = np.repeat(logits, 4, axis=0)
    np.testing.assert_allclose(metrics.mutual_information(same), 0.0, atol=1e-6)
    np.testing.assert_allclose(metrics.predictive_entropy(same), metrics.expected_entropy(same),
                               rtol=1e-5)
    np.testing.assert_allclose(metrics.mutual_information(logits), 0.0, atol=1e-6)


def test_disagreement_counts_member_pairs():
    # Votes 0, 0, 1: one agreeing pair of three; all alike: none differ; a lone member: 0.
    logits = np.array([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])
    np.testing.assert_allclose(metrics.disagreement(logits), [2 / 3, 0.0], rtol=1e-6)
    assert metrics.disagreement(logits[:1]).tolist() == [0.0, 0.0]


def test_error_correlation_by_hand():
    right, wrong = [1.0, 0.0], [0.0, 1.0]
    logits = np.array([[wrong, right, wrong, right],    # errors 1 0 1 0
                       [wrong, right, wrong, right],    # the same errors
                       [right, wrong, right, wrong],    # the opposite ones
                       [wrong, wrong, right, right]])   # errors 1 1 0 0: uncorrelated with the first
    corr = np.asarray(metrics.error_correlation(logits, np.zeros(4, int)))
    np.testing.assert_allclose(corr[0], [1.0, 1.0, -1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(corr, corr.T)
    never_wrong = np.array([[right] * 4, [wrong, right, wrong, right]])
    assert np.isnan(metrics.error_correlation(never_wrong, np.zeros(4, int))[0, 1])


def test_ood_detection_by_hand():
    separable = metrics.ood_detection(np.array([0.0, 1.0, 2.0]), np.array([3.0, 4.0]))
    assert {k: float(v) for k, v in separable.items()} == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    reversed_ = metrics.ood_detection(np.array([3.0, 4.0]), np.array([0.0, 1.0, 2.0]))
    assert float(reversed_["auroc"]) == 0.0 and float(reversed_["fpr95"]) == 1.0
    tied = metrics.ood_detection(np.ones(3), np.ones(2))  # one threshold: chance, precision 2/5
    assert float(tied["auroc"]) == 0.5 and float(tied["aupr"]) == pytest.approx(0.4)
    # in 0 1 2 3, out 2.5 3 4: the out scores beat 3, 3.5 (a tie counts half) and 4 of the 4
    # in-distribution ones; the precision at each out score is 3/4, 2/3 and 1; flagging all three
    # out scores (threshold 2.5) flags one in four in-distribution examples.
    overlap = metrics.ood_detection(np.array([0.0, 1.0, 2.0, 3.0]), np.array([2.5, 3.0, 4.0]))
    assert float(overlap["auroc"]) == pytest.approx((3 + 3.5 + 4) / 12)
    assert float(overlap["aupr"]) == pytest.approx((3 / 4 + 2 / 3 + 1) / 3)
    assert float(overlap["fpr95"]) == pytest.approx(0.25)


def test_fpr95_threshold_keeps_95_percent_of_ood():
    # 20 OOD scores 1..20: 95 % is 19 of them, so the threshold is 2 and the in-distribution
    # score 1.5 stays below it while 2 and 3 are flagged.
    result = metrics.ood_detection(np.array([1.5, 2.0, 3.0, 0.0]), np.arange(1.0, 21.0))
    assert float(result["fpr95"]) == pytest.approx(0.5)


def test_selective_prediction_by_hand():
    # Confidences 0.9 (right), 0.8 (wrong), 0.6 (right), 0.55 (wrong).
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]])
    curve = metrics.selective_prediction(probs, np.array([0, 1, 0, 1]))
    np.testing.assert_allclose(curve["coverage"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve["accuracy"], [1.0, 0.5, 2 / 3, 0.5], rtol=1e-6)
    assert float(curve["area"]) == pytest.approx((1.0 + 0.5 + 2 / 3 + 0.5) / 4)
    # A tie of one right and one wrong example counts half of each, in either order.
    tied = np.array([[0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    for labels in ([0, 0, 1], [0, 1, 0]):
        curve = metrics.selective_prediction(tied, np.array(labels))
        np.testing.assert_allclose(curve["accuracy"], [1.0, 0.75, 2 / 3], rtol=1e-6)


def test_fit_temperature_finds_the_calibrating_temperature():
    # Every example has logits (z, 0) and 3 in 4 are class 0: the NLL is least where
    # sigmoid(z / T) = 3/4, i.e. T = z / log 3.
    labels = np.array([0, 0, 0, 1])
    logits = np.array([[[4.0, 0.0]] * 4, [[2.0, 0.0]] * 4], np.float32)
    per_member = metrics.fit_temperature(logits, labels, per_member=True)
    np.testing.assert_allclose(per_member, [4 / math.log(3), 2 / math.log(3)], rtol=2e-3)
    # One temperature for an ensemble of identical members is that member's own.
    same = np.repeat(logits[:1], 3, axis=0)
    assert float(metrics.fit_temperature(same, labels)) == pytest.approx(4 / math.log(3), rel=2e-3)
    assert metrics.fit_temperature(same, labels).shape == ()


def test_uncertainty_summary_agrees_with_summarize():
    logits, labels = random_logits()
    summary = metrics.uncertainty_summary(logits, labels)
    plain = metrics.summarize(logits, labels, prefix="")
    for key in ("accuracy", "nll", "brier", "ece"):
        assert summary["ensemble"][key] == pytest.approx(plain[key], rel=1e-5)
    assert [m["accuracy"] for m in summary["members"]] == pytest.approx(plain["member_accuracy"])
    assert summary["ensemble"]["entropy"] == pytest.approx(
        float(metrics.predictive_entropy(logits).mean()), rel=1e-5)
    assert summary["ensemble"]["mutual_information"] > 0
    json.dumps(summary)  # python numbers only


def test_ood_summary_scores_max_prob_negated():
    sure = np.zeros((2, 50, 10), np.float32)  # both members sure of the same class
    sure[:, np.arange(50), np.arange(50) % 10] = 30.0
    # Out of distribution the two members are as sure, of different classes.
    split = np.zeros((2, 40, 10), np.float32)
    split[0, :, 0] = split[1, :, 1] = 30.0
    result = metrics.ood_summary(sure, split)
    assert set(result) == set(metrics.OOD_SCORES)
    for score in metrics.OOD_SCORES:
        assert result[score] == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}, score
    assert metrics.ood_summary(split, sure)["max_prob"]["auroc"] == 0.0


@pytest.mark.parametrize("call, message", [
    (lambda: metrics.ood_detection(np.zeros((2, 2)), np.zeros(2)), r"in_scores must be a non-empty \[N\]"),
    (lambda: metrics.ood_detection(np.zeros(2), np.array([np.nan])), "out_scores holds NaN"),
    (lambda: metrics.fit_temperature(np.zeros((1, 2, 3)), np.eye(3)[:2]), "one-hot"),
    (lambda: metrics.selective_prediction(np.zeros((1, 2, 3)), np.zeros(2, int)), r"\[examples, classes\]"),
    (lambda: metrics.mutual_information(np.zeros((2, 3))), r"logits must have shape \[members"),
])
def test_bad_uncertainty_input_is_one_clear_line(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)

"""experiments/uncertainty.py: MC dropout of a restored member, and the table of its JSON."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from mnist_jax import analysis, data, metrics, train

from train_helpers import load_config, small


@pytest.fixture
def uncertainty(experiment):
    return experiment("uncertainty")


def trained(tmp_path, dropout_rate: float):
    config = small(load_config("quick"), num_members=1, num_epochs=1, train_subset=128)
    config.model_overrides.dropout_rate = dropout_rate
    train.train_and_evaluate(config, tmp_path)
    return tmp_path


@pytest.mark.slow
def test_mc_dropout_varies_by_pass_and_keeps_batchnorm_in_inference(uncertainty, mnist_dir, tmp_path):
    images = data.load("mnist", "test").images[:200]
    # Without dropout every pass is the restored member's own prediction: BatchNorm uses its
    # running statistics, not those of the 200 test images.
    workdir = trained(tmp_path / "plain", 0.0)
    passes = uncertainty.mc_dropout(workdir, 2)(images)
    plain = analysis.load_run(workdir).predict(images)[0]
    np.testing.assert_allclose(np.asarray(metrics.member_probs(passes)), np.stack([plain] * 2), atol=1e-5)
    workdir = trained(tmp_path / "dropout", 0.5)
    passes = uncertainty.mc_dropout(workdir, 3)(images)
    assert passes.shape == (3, 200, 10)
    assert not np.allclose(passes[0], passes[1])  # each pass drops other units
    np.testing.assert_array_equal(passes, uncertainty.mc_dropout(workdir, 3)(images))


def test_table_lists_every_method_at_the_chosen_levels(uncertainty):
    summary = {"accuracy": 0.5, "ece": 0.1, "brier": 0.6}
    scores = {s: {"auroc": 0.9, "aupr": 0.8, "fpr95": 0.3} for s in metrics.OOD_SCORES}
    result = {"shift": {kind: {m: [{"level": level, **summary} for level in levels]
                               for m in uncertainty.METHODS}
                        for kind, levels in (("rotate", range(0, 181, 15)), ("translate", range(0, 15, 2)))},
              "ood": {name: {m: scores for m in uncertainty.METHODS} for name in uncertainty.OOD_SETS}}
    lines = uncertainty.table(result).splitlines()
    rows = [line for line in lines if line.startswith("| ensemble of 8 |")]
    assert len(rows) == 2 and rows[0].count("50.0 / 0.100 / 0.600") == 8
    assert rows[1].count("0.900 / 0.800 / 0.300") == 6
    assert "| method | rotate 0 | rotate 45 | rotate 90 | rotate 180 | translate 0 |" in lines[2]


def test_results_table_is_the_one_made_from_the_json(uncertainty):
    table = uncertainty.table(json.loads(uncertainty.RESULTS.read_text()))
    assert table.strip() in (uncertainty.RESULTS.parent / "uncertainty.md").read_text(), (
        "experiments/results/uncertainty.md's tables are stale: paste `python experiments/uncertainty.py --table`")


def test_fge_and_swa_methods_take_their_rows_of_the_second_run(uncertainty):
    """Rows are member-major (snapshots, then SWA, per trajectory): each method takes its kind."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=(8, 5)).astype(np.float32)
    members = types.SimpleNamespace(predict=lambda images: probs)
    kinds = ["snapshot"] * 3 + ["swa"] + ["snapshot"] * 3 + ["swa"]
    fge_probs = rng.dirichlet(np.ones(10), size=(8, 5)).astype(np.float32)
    fge = types.SimpleNamespace(predict=lambda images: fge_probs,
                                results={"members": [{"kind": k} for k in kinds]})
    logits = uncertainty.method_logits(members, fge, lambda images: probs[:2], np.zeros((5, 28, 28, 1)),
                                       {"one member": 1.0, "ensemble": 1.0})
    assert set(logits) == set(uncertainty.METHODS)
    np.testing.assert_allclose(metrics.member_probs(logits["FGE snapshots"]), fge_probs[[0, 1, 2, 4, 5, 6]], atol=1e-6)
    np.testing.assert_allclose(metrics.member_probs(logits["SWA"]), fge_probs[[3, 7]], atol=1e-6)


@pytest.mark.parametrize("results", [None, {"members": [{"kind": "final"}, {"kind": "final"}]}])
def test_a_second_run_without_snapshot_and_swa_rows_is_refused_in_one_line(uncertainty, results):
    fge = types.SimpleNamespace(workdir="runs/plain", results=results)
    with pytest.raises(SystemExit, match=r"^runs/plain is not a finished FGE run .*pass a new --fge-workdir"):
        uncertainty.check_fge_run(fge)
    uncertainty.check_fge_run(types.SimpleNamespace(
        workdir="runs/fge", results={"members": [{"kind": "snapshot"}, {"kind": "swa"}]}))

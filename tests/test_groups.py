"""Grouped runs: members of several architectures in one run (`config.groups`), on real MNIST."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from mnist_jax import analysis, config as config_lib, evaluate_main, run as run_lib, runfolder, train

REPO = Path(__file__).resolve().parents[1]


def grouped_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(str(REPO / "configs" / "quick.py"))["get_config"]()
    config.train_subset, config.num_epochs, config.validation_size = 1024, 1, 1000
    config.log_every_steps = 4
    config.groups = ml_collections.ConfigDict({
        "tiny": {"num_members": 2},
        "base": {"model": "baseline", "num_members": 1, "augment": {"rotation": 0.0},
                 "optim": {"learning_rate": 3e-3}},
    })
    return config


def test_each_group_is_the_config_with_its_overrides_and_seeds_follow_on():
    config = grouped_config()
    groups = config_lib.group_configs(config)
    assert list(groups) == ["base", "tiny"]  # name order
    assert [g.model for g in groups.values()] == ["baseline", "tiny20k"]
    assert [g.seed for g in groups.values()] == [0, 1]  # tiny's members are seeds 1, 2, not 0, 1
    assert groups["base"].optim.learning_rate == 3e-3
    assert groups["base"].optim.name == config.optim.name  # nested overrides merge, not replace
    assert groups["base"].augment.shift == config.augment.shift
    assert not groups["base"].groups
    assert not groups["base"].model_overrides  # quick's were tiny20k's
    assert groups["tiny"].model_overrides == config.model_overrides
    assert config_lib.total_members(config) == 3
    assert config_lib.total_members(config_lib.base_config()) == 1


@pytest.mark.parametrize("overrides, message", [
    ({"x": {"seed": 3}}, "groups.x.seed cannot differ between groups"),
    ({"x": {"validation_size": 0}}, "groups.x.validation_size cannot differ"),
    ({"x": {"num_member": 3}}, "did you mean 'num_members'? (in groups.x)"),
    ({"a b": {"num_members": 1}}, "group name 'a b'"),
    ({"x": {"model": "resnet9000"}}, "unknown model 'resnet9000'"),
    ({"x": {"model_overrides": {"width": 3}}}, "(in groups.x)"),
    ({"x": {"num_members": 0}}, "num_members must be >= 1"),
])
def test_a_bad_group_is_refused_in_one_line_naming_it(overrides, message):
    config = grouped_config()
    config.groups = ml_collections.ConfigDict(overrides)
    with pytest.raises(config_lib.ConfigError) as e:
        run_lib.validate(config)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def grouped_run(mnist_path, tmp_path_factory) -> tuple[Path, dict]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNIST_JAX_DATA_DIR", str(mnist_path))
        workdir = tmp_path_factory.mktemp("grouped")
        return workdir, train.train_and_evaluate(grouped_config(), workdir)


def test_a_grouped_run_is_one_ensemble_of_every_member(grouped_run):
    workdir, results = grouped_run
    assert results["num_members"] == 3 and results["model"] == "baseline+tiny20k"
    assert [(m["index"], m["group"], m["model"], m["seed"]) for m in results["members"]] == [
        (0, "base", "baseline", 0), (1, "tiny", "tiny20k", 1), (2, "tiny", "tiny20k", 2)]
    # Each group is an ordinary run folder; the whole ensemble is the mean of all members.
    predictions = runfolder.read_predictions(workdir, 10)
    parts = [runfolder.read_predictions(runfolder.group_dir(workdir, g), 10) for g in ("base", "tiny")]
    np.testing.assert_array_equal(predictions["probs"], np.concatenate([p["probs"] for p in parts]))
    for split, labels in (("probs", "labels"), ("val_probs", "val_labels")):
        accuracy = (predictions[split].mean(0).argmax(-1) == predictions[labels]).mean()
        key = "test_accuracy" if split == "probs" else "val_accuracy"
        assert results["ensemble"][key] == pytest.approx(accuracy)
    assert predictions["val_probs"].shape == (3, 1000, 10)
    group = runfolder.read_results(runfolder.group_dir(workdir, "base"))
    assert group["members"][0]["test_accuracy"] == results["members"][0]["test_accuracy"]
    assert json.loads((workdir / "results.json").read_text()) == json.loads(json.dumps(results))
    for name in runfolder.PICTURES:
        assert runfolder.picture_path(workdir, name).read_bytes()[:4] == b"\x89PNG"


def test_analysis_sees_a_grouped_run_member_by_member(grouped_run, capsys):
    workdir, results = grouped_run
    view = analysis.load_run(workdir)
    assert list(view.groups) == ["base", "tiny"]
    assert len(view.metrics) == 1 and len(view.metrics[0]["val_accuracy"]) == 3
    assert runfolder.member_names(view.results) == ["base (baseline)", "tiny (tiny20k)",
                                                    "tiny (tiny20k)"]
    row = analysis.compare([workdir])[0]
    assert row["members"] == 3 and row["model"] == "baseline+tiny20k"
    evaluated = view.evaluate(split="validation")
    assert evaluated["accuracy"] == pytest.approx(results["ensemble"]["val_accuracy"])
    assert evaluated["checkpoint_step"] == {"base": 8, "tiny": 8}
    test = run_lib.load_split(view.config, "test")
    np.testing.assert_allclose(view.predict(test.images[:5]), view.predictions["probs"][:, :5],
                               atol=1e-5)
    with pytest.raises(analysis.AnalysisError, match="grouped run: restore one of its groups"):
        analysis.restore(workdir)
    assert evaluate_main.main(["--workdir", str(workdir), "--split", "validation"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "tiny20k" in out


def test_a_finished_grouped_run_rerun_resumes_each_group_to_the_same_results(grouped_run):
    workdir, results = grouped_run
    again = train.train_and_evaluate(grouped_config(), workdir)
    assert again["ensemble"]["test_accuracy"] == results["ensemble"]["test_accuracy"]
    assert [m["test_accuracy"] for m in again["members"]] == \
        [m["test_accuracy"] for m in results["members"]]

"""mnist_jax.analysis and the evaluate_main CLI, on one small real run trained once for the module."""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from mnist_jax import analysis, checkpoint, evaluate_main, run as run_lib, runfolder, train
from mnist_jax.atomic import write_bytes

REPO = Path(__file__).resolve().parents[1]


def small_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(str(REPO / "configs" / "quick.py"))["get_config"]()
    config.train_subset, config.num_epochs, config.validation_size = 1024, 1, 1000
    config.num_members, config.log_every_steps = 2, 4
    return config


def write_config(workdir: Path) -> Path:
    """A run folder as training leaves it before its first checkpoint: config and classes only."""
    workdir.mkdir(parents=True, exist_ok=True)
    runfolder.write_config(workdir, small_config(), tuple("0123456789"))
    return workdir


@pytest.fixture(scope="module")
def _slot() -> dict:
    return {}


@pytest.fixture
def run_dir(mnist_dir, _slot, tmp_path_factory) -> Path:
    """Trained on first use (it needs the function-scoped mnist_dir), then shared by the module."""
    if "run_dir" not in _slot:
        workdir = tmp_path_factory.mktemp("run")
        train.train_and_evaluate(small_config(), workdir)
        _slot["run_dir"] = workdir
    return _slot["run_dir"]


@pytest.fixture
def view(run_dir, _slot) -> analysis.RunView:
    """One RunView for the module, so the checkpoint is restored and compiled once."""
    if "view" not in _slot:
        _slot["view"] = analysis.load_run(run_dir)
    return _slot["view"]


@pytest.fixture
def results(run_dir) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_load_run_round_trips_the_run_directory(run_dir, results):
    view = analysis.load_run(run_dir)
    assert view.results == results
    assert view.config.num_members == 2 and view.config.model == "tiny20k"
    assert view.class_names == tuple("0123456789")
    assert [r["epoch"] for r in view.metrics] == [1]
    probs, labels = view.predictions["probs"], view.predictions["labels"]
    assert probs.shape == (2, 10_000, 10) and labels.shape == (10_000,)
    assert (probs.mean(0).argmax(-1) == labels).mean() == results["ensemble"]["test_accuracy"]
    assert "_restored" not in vars(view)  # reading numbers does not restore the model


@pytest.mark.slow
def test_member_rows_split_per_member_lists(view):
    record = view.metrics[0]
    rows = analysis.member_rows(view.metrics)
    assert [(r["epoch"], r["member"]) for r in rows] == [(1, 0), (1, 1)]
    assert [r["train_loss"] for r in rows] == record["train_loss"]
    assert [r["val_accuracy"] for r in rows] == record["val_accuracy"]
    assert {r["val_ensemble_accuracy"] for r in rows} == {record["val_ensemble_accuracy"]}


@pytest.mark.slow
def test_dataframe_without_pandas_says_how_to_get_it(view, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` fail
    with pytest.raises(analysis.AnalysisError, match="pip install pandas"):
        view.dataframe()


@pytest.mark.slow
def test_dataframe(view):
    pytest.importorskip("pandas")
    frame = view.dataframe()
    assert len(frame) == 2 and list(frame["member"]) == [0, 1]


@pytest.mark.slow
def test_evaluate_restored_ensemble_reproduces_results(view, results):
    ev = view.evaluate(split="test")
    assert ev["checkpoint_step"] == results["checkpoint_step"] == 8
    assert ev["accuracy"] == results["ensemble"]["test_accuracy"]
    assert ev["member_accuracy"] == [m["test_accuracy"] for m in results["members"]]
    assert ev["nll"] == pytest.approx(results["ensemble"]["test_nll"], rel=1e-6)
    assert (ev["dataset"], ev["split"], ev["tta_samples"], ev["num_examples"]) == ("mnist", "test", 0, 10_000)


@pytest.mark.slow
def test_restore_gives_the_trained_state(run_dir, view):
    setup, state = analysis.restore(run_dir)
    assert state.step == 8 and setup.config.to_dict() == view.config.to_dict()
    for leaf in jax.tree.leaves(state.members["params"]):
        assert leaf.shape[0] == 2  # one slice per member
    np.testing.assert_array_equal(  # what predict uses is what restore returns
        jax.tree.leaves(state.members["params"])[0],
        jax.tree.leaves(view._restored.state.members["params"])[0])


@pytest.mark.slow
def test_a_run_folder_of_an_older_version_still_loads(run_dir, results, tmp_path):
    """Fields added to the schema after a run was written (here `groups` and `augment.crop`)
    take their defaults, in config.json and in the checkpoints' saved fingerprints alike."""
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    for path in [old / "config.json", *old.glob("checkpoints/*/meta/metadata")]:
        saved = json.loads(path.read_text())
        config = saved.get("config", saved)
        del config["groups"], config["augment"]["crop"]
        path.write_text(json.dumps(saved))
    ev = analysis.load_run(old).evaluate(split="test")
    assert ev["accuracy"] == results["ensemble"]["test_accuracy"]


@pytest.mark.slow
def test_evaluate_with_tta_of_an_unaugmented_run_changes_nothing(view):
    plain, tta = view.evaluate(split="validation"), view.evaluate(split="validation", tta=True)
    assert tta["tta_samples"] == analysis.DEFAULT_TTA_SAMPLES
    assert tta["accuracy"] == plain["accuracy"]
    assert tta["nll"] == pytest.approx(plain["nll"], rel=1e-5)


def image_folder(root: Path, classes: str) -> str:
    """One black 40x40 PNG per class (the loader resizes them to the run's 28x28)."""
    for name in classes:
        (root / name).mkdir(parents=True)
        Image.new("L", (40, 40)).save(root / name / "a.png")
    return f"image_folder:{root}"


@pytest.mark.slow
def test_evaluate_on_another_dataset(view, tmp_path):
    ev = view.evaluate(dataset=image_folder(tmp_path / "ten", "0123456789"))
    assert ev["dataset"] == f"image_folder:{tmp_path / 'ten'}" and ev["num_examples"] == 10
    with pytest.raises(analysis.AnalysisError, match="has 2 classes but the run's model predicts 10"):
        view.evaluate(dataset=image_folder(tmp_path / "two", "01"))


@pytest.mark.slow
def test_evaluate_validation_matches_the_logged_epoch(view):
    ev = view.evaluate(split="validation")
    assert ev["accuracy"] == view.metrics[-1]["val_ensemble_accuracy"]
    assert ev["num_examples"] == 1000


@pytest.mark.slow
def test_predict_gives_member_probabilities(view):
    images = run_lib.load_split(view.config, "test").images[:5]
    probs = view.predict(images)
    assert probs.shape == (2, 5, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probs, view.predictions["probs"][:, :5], atol=1e-5)
    np.testing.assert_array_equal(view.predict(images[..., 0]), probs)  # [N, H, W] works too


@pytest.mark.slow
@pytest.mark.parametrize("bad", [np.zeros((3, 28, 28, 1), np.float32), np.zeros((3, 32, 32), np.uint8),
                                 np.zeros((0, 28, 28, 1), np.uint8), np.zeros((28, 28, 1, 1), np.uint8)])
def test_predict_refuses_bad_images(view, bad):
    with pytest.raises(analysis.AnalysisError, match=r"must be uint8 \[N, 28, 28, 1\]"):
        view.predict(bad)


@pytest.mark.slow
@pytest.mark.parametrize("name", analysis.PLOTS)
def test_plot_redraws_each_picture(view, name, tmp_path):
    path = Path(view.plot(name, tmp_path / f"{name}.png"))
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_plot_unknown_name(view):
    with pytest.raises(analysis.AnalysisError, match="unknown plot 'roc'; choose one of misclassified"):
        view.plot("roc")


@pytest.mark.slow
def test_compare_rows_and_markdown(run_dir, results, tmp_path):
    unfinished = write_config(tmp_path / "unfinished")
    finished, pending = analysis.compare([run_dir, unfinished])
    ensemble = results["ensemble"]
    member_acc = [m["test_accuracy"] for m in results["members"]]
    assert finished["name"] == run_dir.name and finished["model"] == "tiny20k"
    assert (finished["members"], finished["epochs"], finished["num_epochs"]) == (2, 1, 1)
    assert finished["val_ensemble_accuracy"] == ensemble["val_accuracy"]
    assert finished["test_member_mean"] == pytest.approx(np.mean(member_acc))
    assert finished["test_member_std"] == pytest.approx(np.std(member_acc))
    assert finished["test_ensemble_accuracy"] == ensemble["test_accuracy"]
    assert finished["test_vote_accuracy"] == ensemble["test_accuracy_vote"]
    assert (finished["test_nll"], finished["test_ece"]) == (ensemble["test_nll"], ensemble["test_ece"])
    assert finished["wall_time_s"] == results["wall_time_s"]
    assert pending["epochs"] == 0 and pending["test_ensemble_accuracy"] is None
    table = analysis.to_markdown([finished, pending]).splitlines()
    assert len(table) == 4 and table[0].startswith("| run | model | M | epochs |")
    assert f"| {100 * ensemble['test_accuracy']:.2f} |" in table[2]
    assert "| unfinished | tiny20k | 2 | 0/1 | – |" in table[3]


def test_markdown_cuts_accuracies_and_never_rounds_them_up():
    row = {"name": "r", "model": "m", "members": 3, "epochs": 2, "num_epochs": 2,
           "val_ensemble_accuracy": 0.9976, "test_member_mean": 0.995967, "test_member_std": 0.00046,
           "test_ensemble_accuracy": 0.9973, "test_vote_accuracy": 0.99699, "test_nll": 0.01,
           "test_ece": 0.002, "wall_time_s": 60.0}
    line = analysis.to_markdown([row]).splitlines()[2]
    assert "| 99.76 | 99.59 ± 0.05 | 99.73 | 99.69 |" in line


@pytest.mark.slow
@pytest.mark.parametrize("method", analysis.COMBINE_METHODS)
def test_combine_run_with_itself_is_the_run(run_dir, results, method):
    combined = analysis.combine([run_dir, run_dir], method=method)
    ensemble = results["ensemble"]
    assert combined["accuracy"] == ensemble["test_accuracy"]
    assert combined["errors"] == ensemble["test_errors"]
    assert combined["run_accuracy"] == [ensemble["test_accuracy"]] * 2
    assert combined["nll"] == pytest.approx(ensemble["test_nll"], rel=1e-5)
    assert combined["ece"] == pytest.approx(ensemble["test_ece"], abs=1e-5)


@pytest.mark.slow
def test_combine_refuses_runs_with_other_labels(run_dir, tmp_path):
    other = write_config(tmp_path / "other")
    probs = np.full((1, 10_000, 10), 0.1, np.float32)
    labels = np.roll(analysis.load_run(run_dir).predictions["labels"], 1)
    np.savez(other / "predictions.npz", probs=probs, labels=labels)
    with pytest.raises(analysis.AnalysisError, match="other test labels"):
        analysis.combine([run_dir, other])
    with pytest.raises(analysis.AnalysisError, match="unknown combine method 'median'"):
        analysis.combine([run_dir], method="median")


@pytest.mark.slow
def test_cli_writes_eval_json_and_prints(run_dir, results, capsys):
    assert evaluate_main.main([f"--workdir={run_dir}"]) == 0
    written = json.loads((run_dir / "eval_test.json").read_text())
    assert written["checkpoint_step"] == results["checkpoint_step"]
    assert written["accuracy"] == results["ensemble"]["test_accuracy"]
    out = capsys.readouterr().out
    assert "checkpoint step 8" in out and f"{results['ensemble']['test_accuracy']:.4f}" in out
    assert f"wrote {run_dir / 'eval_test.json'}" in out


@pytest.mark.slow
def test_an_ensemble_is_chosen_on_validation_and_scored_on_test_once(run_dir, tmp_path, capsys):
    """Candidates from two runs (the second a copy whose member 1 is made poor on validation and
    perfect on test): top-1 never picks it, so no test number steered the choice."""
    other = tmp_path / "other"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("checkpoints"))
    saved = dict(np.load(other / "predictions.npz"))
    saved["val_probs"][1] = 1.0 / saved["val_probs"].shape[-1]  # knows nothing on validation
    saved["probs"][1] = np.eye(saved["probs"].shape[-1])[saved["labels"]]  # perfect on test
    np.savez(other / "predictions.npz", **saved)
    chosen = analysis.select([run_dir, other], method="top_k", size=1)["chosen"]
    assert chosen != [{"run": str(other), "member": 1, "weight": 1}] and len(chosen) == 1

    assert evaluate_main.main([f"--workdir={run_dir}", "--select=greedy", "--size=3",
                               f"--also={other}"]) == 0
    written = json.loads((run_dir / "selection_greedy_3.json").read_text())
    assert written["candidates"] == 4 and sum(c["weight"] for c in written["chosen"]) == 3
    assert {"run": str(other), "member": 1} not in [{k: c[k] for k in ("run", "member")}
                                                     for c in written["chosen"]]
    assert 0.0 < written["test_accuracy"] <= 1.0 and written["val_nll"] > 0
    out = capsys.readouterr().out
    assert "chosen on validation" in out and "scored once after the choice" in out
    assert evaluate_main.main([f"--workdir={run_dir}", "--select=top_k", "--size=9"]) == 2
    assert "top_k of 9 needs at least 9 members; there are 2" in capsys.readouterr().err


def test_missing_checkpoint_is_one_clear_error(tmp_path):
    view = analysis.load_run(write_config(tmp_path / "run"))
    assert view.results is None and view.predictions is None and view.metrics == []
    with pytest.raises(checkpoint.CheckpointError, match=f"no checkpoint in {tmp_path / 'run'}"):
        view.evaluate()
    with pytest.raises(runfolder.RunFolderError, match="predictions.npz not found"):
        view.plot("confusion")


@pytest.mark.parametrize("name", ["results.json", "config.json", "classes.json", "predictions.npz",
                                  "metrics.jsonl"])
def test_damaged_file_is_named(tmp_path, name):
    workdir = write_config(tmp_path / "run")
    write_bytes(workdir / name, b"{not json")
    with pytest.raises(runfolder.RunFolderError, match=f"{workdir / name} is damaged"):
        analysis.load_run(workdir)


def test_missing_run_directory(tmp_path):
    with pytest.raises(analysis.AnalysisError, match="is not a folder"):
        analysis.load_run(tmp_path / "nope")
    with pytest.raises(runfolder.RunFolderError, match="config.json not found"):
        analysis.load_run(tmp_path)


@pytest.mark.parametrize("damage, message", [
    (None, "no checkpoint in"),
    ("results.json", "results.json is damaged"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, damage, message):
    workdir = write_config(tmp_path / "run")
    if damage:
        write_bytes(workdir / damage, b"{not json")
    proc = subprocess.run([sys.executable, "-m", "mnist_jax.evaluate_main", f"--workdir={workdir}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnist_jax.evaluate_main: error: "), proc.stderr
    assert message in lines[0] and str(workdir) in lines[0]
    assert not list(workdir.glob("eval_*.json"))

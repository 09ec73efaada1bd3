"""experiments/reproduce.py: a run becomes one row of reproduction.json, and the table is made from it."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest



@pytest.fixture
def reproduce(experiment):
    return experiment("reproduce")


def test_cut_takes_fewer_members_and_scales_the_schedule(reproduce):
    config = reproduce.cut(reproduce.load_config("senet_ensemble"), members=2, epochs=10)
    assert (config.num_members, config.num_epochs) == (2, 10)
    assert list(config.optim.schedule.boundaries) == [6, 8]  # 13, 16 of 20 epochs
    assert len(config.optim.schedule["values"]) == 3
    assert reproduce.cut(reproduce.load_config("deotte15"), None, None).num_members == 15


def test_cut_steepens_an_exponential_decay_to_end_at_the_recipes_rate(reproduce):
    recipe = reproduce.load_config("simple_m5")  # 1e-3 x 0.98^epoch over 150 epochs
    config = reproduce.cut(reproduce.load_config("simple_m5"), members=1, epochs=20)
    last = lambda c: c.optim.schedule.decay_rate ** (c.num_epochs - 1)  # noqa: E731
    assert config.num_epochs == 20
    assert config.optim.schedule.decay_rate < recipe.optim.schedule.decay_rate
    assert last(config) == pytest.approx(last(recipe), rel=1e-9)


def test_a_run_is_recorded_once_and_tabled(reproduce, mnist_dir, tmp_path, monkeypatch):
    real = reproduce.load_config

    def small(name):  # the real recipe on a real-MNIST subset
        config = real(name)
        config.train_subset, config.validation_size, config.eval_batch_size = 512, 200, 1000
        return config
    monkeypatch.setattr(reproduce, "load_config", small)
    results = tmp_path / "reproduction.json"
    args = ["--config=tiny20k", "--epochs=1", f"--out={tmp_path / 'runs'}", f"--results={results}"]
    reproduce.main(args)
    reproduce.main(args)  # the same run again replaces its row (it resumes: nothing retrained)
    runs = json.loads(results.read_text())["runs"]
    assert len(runs) == 1
    run = runs[0]
    assert (run["config"], run["members"], run["epochs"], run["recipe_epochs"]) == ("tiny20k", 1, 1, 19)
    saved = json.loads((tmp_path / "runs" / "tiny20k_m1_e1" / "results.json").read_text())
    assert run["ensemble_test_accuracy"] == saved["ensemble"]["test_accuracy"]
    assert run["member_test_accuracies"] == [saved["members"][0]["test_accuracy"]]
    assert run["command"].startswith("python experiments/reproduce.py --config=tiny20k --epochs=1")
    table = reproduce.table(runs).splitlines()
    assert len(table) == 3 and "| 1 of 1 | **1 of 19** |" in table[2]
    assert f"{100 * run['ensemble_test_accuracy']:.2f}" in table[2]


def test_a_row_is_replaced_only_by_a_run_on_the_same_device(reproduce, tmp_path):
    """Rows are measurements of one machine: a re-run on another CPU adds its row; `--first-member`
    grows the newest row that keeps its predictions."""
    results = tmp_path / "reproduction.json"
    row = {"config": "deotte15", "members": 8, "epochs": 30, "ensemble_test_accuracy": 0.9971}
    xeon, zen3 = {**row, "device": "Xeon"}, {**row, "device": "Zen 3", "parts": ["a", "b"]}
    for run in (xeon, zen3, {**zen3, "ensemble_test_accuracy": 0.9974}):
        reproduce.record(run, results)
    runs = json.loads(results.read_text())["runs"]
    assert [(r["device"], r["ensemble_test_accuracy"]) for r in runs] == [("Xeon", 0.9971), ("Zen 3", 0.9974)]
    assert reproduce.row_to_grow([zen3, xeon], "deotte15", 8, 30) is zen3
    assert reproduce.row_to_grow([xeon], "deotte15", 8, 30) is xeon  # which then says it keeps none
    assert reproduce.row_to_grow([xeon], "deotte15", 4, 30) is None


def test_first_member_grows_an_ensemble_into_one_row(reproduce, mnist_dir, tmp_path, monkeypatch,
                                                     capsys):
    """Members 2.. join the recorded row of members 0..1 from the predictions kept beside the
    JSON: the earlier run folder can be gone (another machine, another session)."""
    real = reproduce.load_config

    def small(name):
        config = real(name)
        config.train_subset, config.validation_size, config.eval_batch_size = 512, 200, 1000
        return config
    monkeypatch.setattr(reproduce, "load_config", small)
    results, out = tmp_path / "reproduction.json", tmp_path / "runs"
    store = tmp_path / "reproduction"
    common = ["--config=tiny20k", "--epochs=1", f"--out={out}", f"--results={results}"]
    with pytest.raises(SystemExit):  # members 0..1 have not been recorded yet
        reproduce.main([*common, "--members=1", "--first-member=2"])
    assert "record it first (--members=2)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # by default the recipe's other members: tiny20k has no more
        reproduce.main([*common, "--first-member=1"])
    assert "recipe has 1 members" in capsys.readouterr().err
    reproduce.main([*common, "--members=2"])
    earlier, later = out / "tiny20k_m2_e1", out / "tiny20k_m1_e1_from2"
    saved = [json.loads((earlier / "results.json").read_text())]
    probs = [dict(np.load(earlier / "predictions.npz"))]
    assert (store / earlier.name / "predictions.npz").read_bytes() == (earlier / "predictions.npz").read_bytes()
    shutil.rmtree(out)  # only the JSON and the kept predictions remain
    reproduce.main([*common, "--members=1", "--first-member=2"])

    assert json.loads((later / "config.json").read_text())["seed"] == 2  # member 2's own seed
    runs = {r["members"]: r for r in json.loads(results.read_text())["runs"]}
    assert set(runs) == {2, 3}
    joined = runs[3]
    assert joined["parts"] == [earlier.name, later.name]
    saved.append(json.loads((later / "results.json").read_text()))
    probs.append(dict(np.load(later / "predictions.npz")))
    assert joined["member_test_accuracies"] == [m["test_accuracy"] for s in saved for m in s["members"]]
    assert joined["wall_time_s"] == pytest.approx(saved[0]["wall_time_s"] + saved[1]["wall_time_s"])
    for key, labels in (("probs", "labels"), ("val_probs", "val_labels")):
        mean = np.concatenate([p[key] for p in probs]).mean(axis=0)
        accuracy = (mean.argmax(-1) == probs[0][labels]).mean()
        assert joined[{"probs": "ensemble_test_accuracy", "val_probs": "ensemble_val_accuracy"}[key]] \
            == pytest.approx(accuracy)
    assert joined["command"] == (
        f"python experiments/reproduce.py {' '.join(common)} --members=2 && "
        f"python experiments/reproduce.py {' '.join(common)} --members=1 --first-member=2")
    assert "| 3 of 1 |" in reproduce.table([joined])


def test_first_member_refuses_a_row_without_kept_predictions(reproduce, tmp_path):
    """A row recorded before predictions were kept cannot be joined: one line says to re-run it,
    before any training."""
    results = tmp_path / "reproduction.json"
    row = {"config": "tiny20k", "members": 2, "epochs": 1, "command": "python experiments/reproduce.py X"}
    results.write_text(json.dumps({"runs": [row]}))
    message = ("keeps no predictions (it predates them); re-run it (its command: python "
               "experiments/reproduce.py X)")
    with pytest.raises(SystemExit, match=re.escape(message)):
        reproduce.main(["--config=tiny20k", "--epochs=1", "--members=1", "--first-member=2",
                        f"--out={tmp_path / 'runs'}", f"--results={results}"])
    assert not (tmp_path / "runs").exists()


def test_the_member_mean_is_truncated_never_rounded_up(reproduce):
    row = {"config": "tiny20k", "members": 3, "recipe_members": 1, "epochs": 19, "recipe_epochs": 19,
           "member_test_accuracies": [0.9959, 0.996, 0.996], "ensemble_test_accuracy": 0.9961,
           "wall_time_s": 60.0, "time_per_epoch_s": 3.0, "date": "2026-12-04", "device": "cpu",
           "conv_backend": "xla", "command": "c"}
    assert "| 99.59 ± 0.00 |" in reproduce.table([row])  # the mean is 99.5967


def _row(config: str, members: int, recipe_members: int, epochs: int, recipe_epochs: int,
         accuracies: list[float], device: str = "2 x cpu (cpu, x86_64, AMD EPYC (family 25, model 1; avx2))"):
    return {"config": config, "members": members, "recipe_members": recipe_members, "epochs": epochs,
            "recipe_epochs": recipe_epochs, "member_test_accuracies": accuracies,
            "ensemble_test_accuracy": max(accuracies), "wall_time_s": 600.0, "device": device}


def test_summary_has_one_row_per_reference_system_from_its_most_complete_run(reproduce):
    runs = [_row("deotte15", 4, 15, 30, 30, [0.996, 0.997, 0.9965, 0.9961]),
            _row("deotte15", 15, 15, 30, 30, [0.9966] * 15),
            _row("deotte15", 8, 15, 30, 30, [0.9962] * 8),
            _row("simple_m3", 1, 3, 15, 150, [0.9968]), _row("simple_m5", 1, 3, 20, 150, [0.9964])]
    lines = reproduce.summary(runs).splitlines()[2:]
    assert len(lines) == len(reproduce.REFERENCE_SYSTEMS)
    deotte = next(line for line in lines if line.startswith("| Deotte"))
    assert "| 15/15 × 30/30 | full |" in deotte
    assert "2 x AMD EPYC (family 25, model 1; avx2)" in deotte and "(cpu, x86_64" not in deotte
    an = next(line for line in lines if line.startswith("| An et al."))
    assert "| M3 99.68; M5 99.64 | M3 1/3 × 15/150; M5 1/3 × 20/150 | partial |" in an
    assert "20.0 min" in an  # both nets' wall time
    assert "| not run |" in next(line for line in lines if line.startswith("| SE-net"))


def test_the_committed_summary_fits_a_readable_table(reproduce):
    """No cell over 200 characters (the README's table; the full one is in reproduction.md)."""
    for line in reproduce.summary(reproduce.read_runs(reproduce.RESULTS)).splitlines():
        cells = line.strip("|").split(" | ")
        assert max(map(len, cells)) <= 200, line

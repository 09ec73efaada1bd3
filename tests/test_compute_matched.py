"""experiments/compute_matched.py: what an ensemble costs in member-epochs, and the curves it draws."""

import numpy as np


def rows(kinds_epochs, members=2, run_epochs=4, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for member in range(members):
        for kind, epoch in kinds_epochs:
            probs = rng.dirichlet(np.ones(3), size=5).astype(np.float32)
            out.append({"member": member, "kind": kind, "epoch": epoch, "run_epochs": run_epochs,
                        "val_probs": probs, "val_tta_probs": None})
    return out


def test_snapshots_join_at_their_epoch_of_their_trajectory(experiment):
    """Trajectory t's snapshot of epoch e costs t * E + e; the ensemble is the mean of what is in."""
    cm = experiment("compute_matched")
    snapshot_rows = rows([("snapshot", 2), ("snapshot", 4), ("swa", 4)])
    labels = np.array([0, 1, 2, 0, 1])
    points = cm.curve(snapshot_rows, labels, ("snapshot",), tta=False)
    assert [(p["member_epochs"], p["rows"]) for p in points] == [(2, 1), (4, 2), (6, 3), (8, 4)]
    chosen = [r for r in snapshot_rows if r["kind"] == "snapshot"]
    mean = np.mean([r["val_probs"] for r in chosen], axis=0)
    assert points[-1]["val_errors"] == int((mean.argmax(-1) != labels).sum())
    last = cm.curve(snapshot_rows, labels, ("snapshot",), tta=False, last_only=True)
    assert [(p["member_epochs"], p["rows"]) for p in last] == [(4, 1), (8, 2)]
    assert cm.curve(snapshot_rows, labels, ("snapshot",), tta=True) == []  # no TTA rows kept
    names = cm.variants("run", snapshot_rows, labels, tta=False)
    assert set(names) == {"run: snapshots", "run: last snapshot of each", "run: SWA", "run: snapshots + SWA"}


def test_a_cell_is_the_largest_ensemble_within_the_budget(experiment):
    cm = experiment("compute_matched")
    points = [{"member_epochs": 8, "rows": 1}, {"member_epochs": 16, "rows": 2}]
    assert cm.at(points, 7) is None and cm.at(points, 15)["rows"] == 1 and cm.at(points, 16)["rows"] == 2

"""experiments/shared_errors.py: counting the mistakes members share, and its one-line errors."""

from __future__ import annotations


import numpy as np
import pytest



@pytest.fixture
def shared_errors(experiment):
    return experiment("shared_errors")


def one_hot(classes: list[int]) -> np.ndarray:
    return np.eye(3)[classes]


def test_report_counts_shared_mistakes_and_what_other_runs_fix(shared_errors):
    labels = np.array([0, 1, 2, 0])
    first = np.stack([one_hot([1, 1, 2, 0]),    # wrong on image 0
                      one_hot([1, 0, 2, 0]) * 0.8 + 0.2 / 3])  # wrong on 0 and 1, less sure
    other = np.stack([one_hot([0, 1, 2, 0]) * 0.9 + 0.1 / 3])  # right everywhere, less sure
    text, shared = shared_errors.report(["a", "b"], [first, other], labels)
    assert shared.tolist() == [0]
    assert "members' errors [1, 2], ensemble 1 of 4" in text
    assert "k=1: 1, k=2: 1" in text
    assert "b: members' errors [0]; of the 1, wrong too [0]; ensemble with a: 1 errors" in text
    assert "all" not in text.splitlines()[-1]  # two runs: no separate line for all together

    # A third run, sure and right: with a alone image 0 stays wrong; all three outvote a on it.
    sure = np.stack([one_hot([0, 1, 2, 0])])
    text, _ = shared_errors.report(["a", "b", "c"], [first, other, sure], labels)
    assert "c: members' errors [0]; of the 1, wrong too [0]; ensemble with a: 1 errors" in text
    assert text.splitlines()[-1] == "all 3 runs' members together: 0 errors"


def test_a_missing_run_is_one_line(shared_errors, tmp_path):
    with pytest.raises(SystemExit, match=r"^shared_errors: .*nope is not a folder"):
        shared_errors.main([str(tmp_path / "nope")])

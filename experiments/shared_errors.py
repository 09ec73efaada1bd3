"""Which images the members of finished runs get wrong together: the limit of an ensemble.

    python experiments/shared_errors.py runs/reproduce/deotte15_m4_e30 runs/reproduce/resnet_committee_m1_e10
    python experiments/shared_errors.py RUN [RUN ...] [--split validation|test] [--picture FILE]

An ensemble fixes the mistakes its members do not share. For the first run this prints each
member's errors, how many images k of its members get wrong (k = 1 .. M), its ensemble's errors,
and, for the images all of its members get wrong, how many of those every other run's members
(other recipes or architectures) get wrong too, and the errors once each other run's members
join the first run's, and once all runs' members are together (mean probability, every member
weighing the same). The default split is validation, so this can guide a choice; `--picture`
draws the images all members of the first run get wrong. The runs are restored from their
newest checkpoints and must share the split (same dataset and validation images).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mnist_jax import analysis, plots, run as run_lib  # noqa: E402  (the repo on the path first, for a plain checkout)
from mnist_jax.platform import configure_cpu  # noqa: E402


def member_probs(workdirs: list[str], split: str) -> tuple[list[np.ndarray], np.ndarray, np.ndarray,
                                                           tuple[str, ...]]:
    """Each run's member probabilities [M, N, C] on `split`, and the split's images and labels."""
    probs, images, labels, class_names = [], None, None, ()
    for workdir in workdirs:
        view = analysis.load_run(workdir)
        data = run_lib.load_split(view.config, split)
        if labels is None:
            images, labels, class_names = data.images, data.labels, view.class_names
        elif not (np.array_equal(data.labels, labels) and np.array_equal(data.images, images)):
            raise analysis.AnalysisError(
                f"{workdir}'s {split} split holds other images than {workdirs[0]}'s; compare runs "
                f"with the same dataset, validation_size and validation_seed")
        probs.append(view.predict(data.images))
    return probs, images, labels, class_names


def report(names: list[str], probs: list[np.ndarray], labels: np.ndarray) -> tuple[str, np.ndarray]:
    """The printed summary, and the indices of the images every member of the first run gets wrong."""
    wrong = [p.argmax(-1) != labels for p in probs]  # [M, N] per run
    first = wrong[0]

    def ensemble_errors(*runs: np.ndarray) -> int:  # every member weighs the same
        mean = np.concatenate(runs).mean(axis=0)
        return int((mean.argmax(-1) != labels).sum())

    lines = [f"{names[0]}: members' errors {first.sum(axis=1).tolist()}, "
             f"ensemble {ensemble_errors(probs[0])} of {len(labels)}"]
    counts = np.bincount(first.sum(axis=0), minlength=len(first) + 1)[1:]
    lines.append("images wrong by k of its members: "
                 + ", ".join(f"k={k}: {n}" for k, n in enumerate(counts, start=1)))
    shared = np.flatnonzero(first.all(axis=0))
    lines.append(f"wrong by all {len(first)} members: {len(shared)} images {shared.tolist()}")
    for name, p, w in zip(names[1:], probs[1:], wrong[1:]):
        lines.append(f"{name}: members' errors {w.sum(axis=1).tolist()}; of the {len(shared)}, "
                     f"wrong too {w[:, shared].sum(axis=1).tolist()}; ensemble with "
                     f"{names[0]}: {ensemble_errors(probs[0], p)} errors")
    if len(probs) > 2:
        lines.append(f"all {len(probs)} runs' members together: {ensemble_errors(*probs)} errors")
    return "\n".join(lines), shared


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders of finished or interrupted runs")
    parser.add_argument("--split", default="validation", choices=("validation", "test"))
    parser.add_argument("--picture", default=None, help="PNG of the images all of the first "
                                                        "run's members get wrong")
    args = parser.parse_args(argv)
    configure_cpu()
    try:
        probs, images, labels, class_names = member_probs(args.runs, args.split)
        text, shared = report([Path(r).name for r in args.runs], probs, labels)
        print(f"{args.split} split\n{text}")
        if args.picture:
            path = plots.misclassified(args.picture, images[shared], labels[shared],
                                       probs[0].mean(axis=0)[shared], class_names)
            print(f"wrote {path}")
    except (ValueError, OSError) as e:  # AnalysisError, RunFolderError, CheckpointError, DataError
        raise SystemExit(f"shared_errors: {' '.join(str(e).split())}") from None


if __name__ == "__main__":
    main()

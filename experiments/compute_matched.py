"""Ensemble validation error and NLL against member-epochs spent: independent members of several
lengths, snapshot (cosine) and FGE members, SWA, each with and without test-time augmentation.

    python experiments/compute_matched.py --arch=deotte --out runs/compute_matched
    python experiments/compute_matched.py --arch=tiny20k --out runs/compute_matched
    python experiments/compute_matched.py --table experiments/results/compute_matched_deotte.json

Trains each run of the architecture's plan that OUT/<arch>/ does not hold finished (a stopped run
resumes: run the same command), then writes OUT/compute_matched_<arch>.json and .png. Everything
is measured on the same 5,000 validation images (the last 5,000 training images); no test number
is read. The cost of an ensemble is the member-epochs of training behind its rows: trajectory t
of a run of E epochs costs E, and a snapshot taken at epoch e of trajectory t is there once t * E
+ e member-epochs are spent (trajectories counted one after another, in seed order). Evaluation,
TTA passes and SWA's BatchNorm pass are not counted (a fraction of an epoch each: the JSON keeps
the wall times). `--reuse` adds runs trained elsewhere on the same validation split (for deotte,
the 15 committed 30-epoch recipe members of experiments/results/reproduction/).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mnist_jax import augment, config as config_lib, metrics, runfolder, train  # noqa: E402
from mnist_jax.atomic import write_bytes, write_json  # noqa: E402
from mnist_jax.platform import configure_cpu, cpu_model, device_description  # noqa: E402

# Each plan: run name -> (config file, overrides). Chosen before any run, from the recipes: the
# independent lengths are the recipe's own (deotte 30, its cut to 8, cpu_fast until 2026-12-07; for
# tiny20k the quick config's 3, and 2x and 4x that); snapshot and FGE runs take the length whose two
# trajectories cost what the shortest independent members' ensemble does. FGE's cycle range
# follows Garipov et al. (high 1/2, low 1/50 of the peak rate after a warm phase of half the run),
# SWA averages FGE's cycles (Izmailov et al.).
PLANS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "deotte": {
        "independent_8": ("deotte15.py", {"num_members": 4, "num_epochs": 8,
                                          "optim.schedule.decay_rate": 0.7}),
        "snapshot_16": ("deotte15.py", {"num_members": 2, "num_epochs": 16, "snapshot.cycles": 4}),
        "fge_swa_16": ("deotte15.py", {"num_members": 2, "num_epochs": 16, "snapshot.cycles": 4,
                                       "snapshot.shape": "fge", "snapshot.warm_epochs": 8,
                                       "snapshot.high": 0.5, "snapshot.low": 0.02, "swa.epochs": 8}),
        # Added for the hour (time_to_accuracy): shorter FGE trajectories, whose first wave can
        # end inside 15 minutes on the Zen 3.
        "fge_8": ("deotte15.py", {"num_members": 4, "num_epochs": 8, "snapshot.cycles": 4,
                                  "snapshot.shape": "fge", "snapshot.warm_epochs": 4,
                                  "snapshot.high": 0.5, "snapshot.low": 0.02}),
        "fge_6": ("deotte15.py", {"num_members": 2, "num_epochs": 6, "snapshot.cycles": 3,
                                  "snapshot.shape": "fge", "snapshot.warm_epochs": 3,
                                  "snapshot.high": 0.5, "snapshot.low": 0.02}),
        # Added after the hour: the two plans it weighed (cpu_fast now and before), again from
        # other seeds, to see whether their gap at 32 member-epochs outlasts the seed.
        "fge_16_seed100": ("cpu_fast.py", {"seed": 100}),
        "independent_8_seed100": ("deotte15.py", {"num_members": 4, "num_epochs": 8,
                                                  "optim.schedule.decay_rate": 0.7, "seed": 100}),
    },
    "tiny20k": {
        "independent_3": ("quick.py", {"num_members": 8, "num_epochs": 3}),
        "independent_6": ("quick.py", {"num_members": 4, "num_epochs": 6}),
        "independent_12": ("quick.py", {"num_members": 2, "num_epochs": 12}),
        "snapshot_12": ("quick.py", {"num_members": 2, "num_epochs": 12, "snapshot.cycles": 4}),
        "fge_swa_12": ("quick.py", {"num_members": 2, "num_epochs": 12, "snapshot.cycles": 3,
                                    "snapshot.shape": "fge", "snapshot.warm_epochs": 6,
                                    "snapshot.high": 0.5, "snapshot.low": 0.02, "swa.epochs": 6}),
    },
}
# Every plan's runs keep the validation split and, where the recipe augments, score TTA on it.
COMMON = {"validation_size": 5000, "tta_samples": 4}
# Committed runs on the same validation split: (epochs, folders), in the order their seeds follow.
REUSE = {"deotte": (30, sorted((REPO / "experiments/results/reproduction").glob("deotte15_*"),
                              key=lambda f: int(f.name.split("from")[-1]) if "from" in f.name else 0))}


def plan_config(arch: str, name: str):
    path, overrides = PLANS[arch][name]
    config = config_lib.from_file(REPO / "configs" / path)
    config.update_from_flattened_dict({**COMMON, **overrides})
    if not augment.moves_pixels(config.augment):
        config.tta_samples = 0  # without augmentation a TTA pass is the plain pass
    return config


def run_rows(folder: Path, epochs: int | None = None
             ) -> tuple[list[dict[str, Any]], np.ndarray, float | None]:
    """One entry per ensemble row of a finished run (its trajectory, kind, epoch and validation
    probabilities: plain, and under TTA when kept), the validation labels and the run's wall time.
    A folder holding only predictions.npz (the committed reproduction runs) has one final row per
    member, trained for `epochs`."""
    results = runfolder.read_results(folder)
    predictions = runfolder.read_predictions(folder, None)
    if predictions is None or "val_probs" not in predictions:
        raise SystemExit(f"compute_matched: {folder} has no validation predictions; finish it first")
    members = (results or {}).get("members") or [{"index": i} for i in range(len(predictions["probs"]))]
    epochs = epochs or max(m["epoch"] for m in members)
    rows = []
    for i, m in enumerate(members):
        rows.append({"member": m.get("member", m["index"]), "kind": m.get("kind", "final"),
                     "epoch": m.get("epoch", epochs), "run_epochs": epochs,
                     "val_probs": predictions["val_probs"][i],
                     "val_tta_probs": predictions["val_tta_probs"][i] if "val_tta_probs" in predictions else None})
    return rows, predictions["val_labels"], (results or {}).get("wall_time_s")


def curve(rows: list[dict[str, Any]], labels: np.ndarray, kinds: tuple[str, ...], tta: bool,
          last_only: bool = False) -> list[dict[str, Any]]:
    """The ensemble of the rows of `kinds` available after each row's cost, in cost order."""
    chosen = [r for r in rows if r["kind"] in kinds]
    if last_only:  # one row per trajectory: its last snapshot (the end of its schedule)
        chosen = [r for r in chosen if r["epoch"] == r["run_epochs"]]
    key = "val_tta_probs" if tta else "val_probs"
    if not chosen or any(r[key] is None for r in chosen):
        return []
    trajectories = sorted({r["member"] for r in chosen})
    cost = lambda r: trajectories.index(r["member"]) * r["run_epochs"] + r["epoch"]
    chosen.sort(key=cost)
    points, total = [], np.zeros_like(chosen[0][key], np.float64)
    for n, row in enumerate(chosen, 1):
        total += row[key]
        mean = (total / n).astype(np.float32)
        points.append({"member_epochs": cost(row), "rows": n,
                       "val_errors": int((mean.argmax(-1) != labels).sum()),
                       "val_nll": float(metrics.nll(mean, labels))})
    return points


def variants(name: str, rows: list[dict[str, Any]], labels: np.ndarray, tta: bool) -> dict[str, list]:
    """The curves a run gives: its final members, and, when it has them, its snapshots (all, or the
    last of each trajectory), its SWA rows and snapshots with SWA; each plain and, with `tta`,
    under TTA."""
    kinds = {r["kind"] for r in rows}
    wanted = {name: (("final",), False)} if kinds == {"final"} else {}
    if "snapshot" in kinds:
        wanted[f"{name}: snapshots"] = (("snapshot",), False)
        wanted[f"{name}: last snapshot of each"] = (("snapshot",), True)
    if "swa" in kinds:
        wanted[f"{name}: SWA"] = (("swa",), False)
        wanted[f"{name}: snapshots + SWA"] = (("snapshot", "swa"), False)
    out = {}
    for label, (chosen, last_only) in wanted.items():
        for augmented in (False, True) if tta else (False,):
            points = curve(rows, labels, chosen, augmented, last_only)
            if points:
                out[label + (" + TTA" if augmented else "")] = points
    return out


def plot(curves: dict[str, list], title: str) -> bytes:
    fig = Figure(figsize=(11, 4.5))
    for ax, key, ylabel in zip(fig.subplots(1, 2), ("val_errors", "val_nll"),
                               ("validation errors (of 5,000)", "validation NLL")):
        colours = iter(matplotlib.colormaps["tab20"].colors + matplotlib.colormaps["tab20b"].colors)  # one a curve (up to 40)
        for label, points in curves.items():
            style = "--" if label.endswith("TTA") else "-"
            ax.plot([p["member_epochs"] for p in points], [p[key] for p in points], style,
                    marker=".", label=label, color=next(colours))
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("member-epochs of training")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.axes[1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside, not over
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def at(points: list[dict[str, Any]], budget: float) -> dict[str, Any] | None:
    """The ensemble with the most member-epochs within `budget` (None if none fits)."""
    within = [p for p in points if p["member_epochs"] <= budget]
    return within[-1] if within else None


def table(result: dict[str, Any]) -> str:
    budgets = result["budgets"]
    head = "| ensemble | " + " | ".join(f"≤ {b} member-epochs: errors / NLL (rows)" for b in budgets) + " |"
    lines = [head, "|---|" + "---|" * len(budgets)]
    for label, points in result["curves"].items():
        cells = []
        for b in budgets:
            p = at(points, b)
            cells.append("–" if p is None else f"{p['val_errors']} / {p['val_nll']:.4f} ({p['rows']})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


BUDGETS = {"deotte": [8, 16, 32, 60, 120, 450], "tiny20k": [3, 6, 12, 24]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(PLANS))
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "compute_matched")
    parser.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True,
                        help="add the committed runs of REUSE (deotte's 30-epoch recipe members)")
    parser.add_argument("--table", type=Path, help="print the Markdown table of a written JSON")
    parser.add_argument("--finished-only", action="store_true",
                        help="map the runs already finished, train nothing (the JSON lists the rest)")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    if not args.arch:
        parser.error("give --arch (or --table)")
    configure_cpu()
    curves, runs, unfinished = {}, {}, []
    labels = None
    for name in PLANS[args.arch]:
        folder = args.out / args.arch / name
        config = plan_config(args.arch, name)
        if not (runfolder.read_results(folder) if folder.is_dir() else None):
            if args.finished_only:
                unfinished.append(name)
                continue
            print(f"training {name} in {folder}", flush=True)
            train.train_and_evaluate(config, folder)
        rows, labels_run, wall = run_rows(folder)
        if labels is not None and not np.array_equal(labels, labels_run):
            raise SystemExit(f"compute_matched: {folder} was validated on other images")
        labels = labels_run
        runs[name] = {"config": json.loads(config.to_json()), "wall_time_s": wall, "rows": len(rows)}
        curves.update(variants(name, rows, labels, tta=bool(config.tta_samples)))
    if args.reuse:
        epochs, folders = REUSE.get(args.arch, (0, []))
        reused = [run_rows(folder, epochs) for folder in folders]
        if reused:
            labels = reused[0][1] if labels is None else labels
            if any(not np.array_equal(labels, r[1]) for r in reused):
                raise SystemExit("compute_matched: the reused runs were validated on other images")
            rows = []  # the committed runs' members, renumbered one after another
            for folder_rows, _, _ in reused:
                offset = len({r["member"] for r in rows})
                rows += [{**r, "member": offset + r["member"]} for r in folder_rows]
            name = f"independent_{rows[0]['run_epochs']} (committed recipe runs)"
            curves.update(variants(name, rows, labels, tta=False))
            runs[name] = {"folders": [str(f.relative_to(REPO)) for f in folders], "rows": len(rows)}
    result = {"arch": args.arch, "command": " ".join(sys.argv), "machine": cpu_model(),
              "device": device_description(), "date": datetime.date.today().isoformat(),
              "validation_images": int(len(labels)), "budgets": BUDGETS[args.arch], "runs": runs,
              "not_yet_trained": unfinished, "curves": curves}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"compute_matched_{args.arch}.json", result)
    write_bytes(args.out / f"compute_matched_{args.arch}.png",
                plot(curves, f"{args.arch}: validation error and NLL against member-epochs"))
    print(table(result))


if __name__ == "__main__":
    main()

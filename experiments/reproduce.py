"""Train the reference configs and write the reproduction table (markdown) of what was measured.

    python experiments/reproduce.py --budget=0.1 --out=runs/reproduce
    python experiments/reproduce.py --configs=tiny20k,baseline --budget=1

`--budget` scales each recipe's epochs and members down for a CPU (at least 1 of each); the
table says what was actually run. Every number comes from the run's `results.json`: test
numbers evaluated once at the end, all choices made on validation.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from mnist_jax import config as config_lib, train
from mnist_jax.platform import configure_cpu

REPO = Path(__file__).resolve().parents[1]

# name -> (config file[:arg], system, published single accuracy, published ensemble accuracy)
SYSTEMS = {
    "senet_ensemble": ("senet_ensemble", "SE-net ensemble (MNIST-0.17, Keras)", "99.69–99.81", "99.84 (20)"),
    "deotte15": ("deotte15", "Deotte's 15-CNN ensemble", "≈99.75", "99.79 (15)"),
    "tiny20k": ("tiny20k", "15,578-parameter net (MNIST_99.4)", "99.43", "—"),
    "resnet_committee": ("resnet_committee", "35-member residual committee", "99.73", "99.82 (35)"),
    "baseline": ("baseline", "plain 2-conv baseline (Géron)", "99.14", "—"),
    "simple_m3": ("simple:m3", "An et al. 2020 M3", "—", "99.87 (vote M3+M5+M7)"),
    "simple_m5": ("simple:m5", "An et al. 2020 M5", "—", "99.87 (vote M3+M5+M7)"),
    "simple_m7": ("simple:m7", "An et al. 2020 M7", "—", "99.87 (vote M3+M5+M7)"),
}


def load_config(spec: str):
    name, _, arg = spec.partition(":")
    return config_lib.from_file(REPO / "configs" / f"{name}.py", arg or None)


def scaled(config, budget: float):
    """The recipe with epochs and members scaled by `budget`; epoch-based boundaries follow."""
    if budget >= 1:
        return config
    epochs = max(1, math.ceil(config.num_epochs * budget))
    factor = epochs / config.num_epochs
    schedule = config.optim.schedule
    if schedule.name == "piecewise":
        schedule.boundaries = sorted({min(epochs, max(1, round(b * factor))) for b in schedule.boundaries})
        schedule["values"] = list(schedule["values"])[: len(schedule.boundaries) + 1]
    config.num_epochs = epochs
    config.clean_final_epochs = min(config.clean_final_epochs, max(0, epochs - 1))
    config.num_members = max(2, math.ceil(config.num_members * budget)) if config.num_members > 1 else 1
    return config


def row(name: str, results: dict, config) -> str:
    _, system, single, ensemble = SYSTEMS[name]
    member = np.array([m["test_accuracy"] for m in results["members"]]) * 100
    e = results["ensemble"]
    tta = f" / TTA {e['test_accuracy_tta'] * 100:.2f}" if "test_accuracy_tta" in e else ""
    return (f"| {system} | {single} | {ensemble} | {member.mean():.2f} ± {member.std():.2f} | "
            f"{e['test_accuracy'] * 100:.2f}{tta} | {results['num_members']} | {config.num_epochs} | "
            f"{results['wall_time_s'] / 60:.1f} min | {results['device']} |")


def main() -> None:
    configure_cpu()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(SYSTEMS), help="comma-separated names: " + ", ".join(SYSTEMS))
    parser.add_argument("--budget", type=float, default=1.0, help="fraction of each recipe's epochs and members")
    parser.add_argument("--out", default="runs/reproduce", help="folder for the runs and table.md")
    args = parser.parse_args()
    names = args.configs.split(",")
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        parser.error(f"unknown config(s) {', '.join(unknown)}; valid: {', '.join(SYSTEMS)}")
    out = Path(args.out)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores ({platform.machine()}), "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s), budget {args.budget}: "
        f"`python experiments/reproduce.py --budget={args.budget} --configs={args.configs}`",
        "",
        "| system | published single | published ensemble | ours: single (mean ± std) | ours: ensemble | members | epochs | wall time | device |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name in names:
        config = scaled(load_config(SYSTEMS[name][0]), args.budget)
        results = train.train_and_evaluate(config, out / name)
        lines.append(row(name, results, config))
        (out / "table.md").write_text("\n".join(lines) + "\n")  # after each run: a partial table survives
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

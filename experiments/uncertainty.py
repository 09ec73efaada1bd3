"""Ovadia et al. (2019)'s protocol on MNIST: how methods hold up under shift and flag unseen data.

    python experiments/uncertainty.py --workdir=runs/uncertainty_m8      # trains it first if needed
    python experiments/uncertainty.py --table              # the markdown of the JSON; redraws the figures

One run of `configs/quick.py` with 8 members (tiny20k, dropout 0.1) gives every method, so they
share weights and differ only in how they predict:
  one member           member 0 alone (Ovadia's "vanilla");
  temperature scaling  member 0 with one temperature fitted on the validation split by NLL;
  MC dropout           member 0 with dropout left on, the mean of `--passes` passes (Gal &
                       Ghahramani 2016; BatchNorm keeps its running statistics);
  ensemble of k        members 0 .. k-1, k = 2, 4, 8, the mean of their softmaxes;
  ensemble + TS        the 8-member ensemble with one temperature fitted on validation;
  FGE snapshots        the 6 snapshots of a second run (`fge_config`: 2 trajectories of 12
                       epochs, fast geometric ensembling), which costs what the 8 members do;
  SWA                  that run's 2 SWA rows (each trajectory's weights averaged over its cycles).
Each is scored on the test split rotated (0-180 degrees) and translated (0-14 pixels) with
`mnist_jax.shift` (seed 0: the same images for every method), and on Fashion-MNIST and uniform
noise as out-of-distribution sets against the clean test split (`metrics.ood_summary`). Writes
experiments/results/uncertainty.json and uncertainty_shift.png, uncertainty_ood.png beside it.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import platform as host_platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import ml_collections
import numpy as np
from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mnist_jax import analysis, config as config_lib, data, metrics, run as run_lib, shift, train  # noqa: E402
from mnist_jax.atomic import write_bytes  # noqa: E402
from mnist_jax.platform import configure_cpu  # noqa: E402
import compute_matched  # noqa: E402  (next to this script: the FGE plan's one owner)

RESULTS = REPO / "experiments" / "results" / "uncertainty.json"
SIZES = (2, 4, 8)
OOD_SETS = ("fashion_mnist", "noise")
METHODS = ("one member", "temperature scaling", "MC dropout", *(f"ensemble of {k}" for k in SIZES),
           "ensemble + TS", "FGE snapshots", "SWA")


def config(members: int) -> ml_collections.ConfigDict:
    c = config_lib.from_file(REPO / "configs" / "quick.py")
    c.num_members = members
    return c


def fge_config() -> ml_collections.ConfigDict:
    """compute_matched's tiny20k FGE plan `fge_swa_12`: 2 trajectories of 12 epochs (6 warm epochs
    of the quick recipe, then 3 FGE cycles of 2, SWA over them), 24 member-epochs like the 8
    members of 3 epochs; seeded after those 8 members, so no trajectory shares a member's
    initialisation."""
    path, overrides = compute_matched.PLANS["tiny20k"]["fge_swa_12"]
    c = config_lib.from_file(REPO / "configs" / path)
    c.update_from_flattened_dict({**overrides, "seed": 8})
    return c


def mc_dropout(workdir: Path, passes: int) -> Callable[[np.ndarray], np.ndarray]:
    """`logits(images)` [passes, N, C] of member 0 with dropout on (pass p drops with key p) and
    BatchNorm in inference mode: an interceptor applies each `nn.Dropout` itself, so nothing
    else about the model changes."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    setup, state = analysis.restore(workdir)
    if setup.config.ema_decay:
        raise SystemExit("MC dropout here uses the raw weights; train without ema_decay")
    weights = {k: jax.tree.map(lambda a: a[0], state.members[k]) for k in ("params", "batch_stats")}

    def dropout_on(next_fun, args, kwargs, context):
        module = context.module
        if not (isinstance(module, nn.Dropout) and context.method_name == "__call__") or not module.rate:
            return next_fun(*args, **kwargs)
        keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - module.rate, args[0].shape)
        return jnp.where(keep, args[0] / (1.0 - module.rate), 0.0)

    @jax.jit
    def forward(batch: jax.Array, key: jax.Array) -> jax.Array:
        with nn.intercept_methods(dropout_on):
            return setup.model.apply(weights, batch.astype(jnp.float32) / 255.0, train=False,
                                     rngs={"dropout": key})

    batch = setup.config.eval_batch_size

    def logits(images: np.ndarray) -> np.ndarray:
        return np.stack([np.concatenate([np.asarray(forward(images[i:i + batch], jax.random.PRNGKey(p)))
                                         for i in range(0, len(images), batch)])
                         for p in range(passes)])

    return logits


def method_logits(view: analysis.RunView, fge: analysis.RunView, dropout: Callable,
                  images: np.ndarray, temperature: dict[str, float]) -> dict[str, np.ndarray]:
    """Each method's logits [k, N, C] on uint8 images (members' log-probabilities: softmax of
    them is the member's prediction, and a temperature divides them as it would the logits)."""
    members = metrics.probs_as_logits(view.predict(images))
    rows = metrics.probs_as_logits(fge.predict(images))
    kinds = np.array([m["kind"] for m in fge.results["members"]])
    return {"FGE snapshots": rows[kinds == "snapshot"], "SWA": rows[kinds == "swa"],
            "one member": members[:1],
            "temperature scaling": members[:1] / temperature["one member"],
            "MC dropout": dropout(images),
            **{f"ensemble of {k}": members[:k] for k in SIZES},
            "ensemble + TS": members / temperature["ensemble"]}


def check_fge_run(fge: analysis.RunView) -> None:
    """Refuses, in one line, a second run without the snapshot and SWA rows its methods take."""
    kinds = {m.get("kind") for m in (fge.results or {}).get("members", ())}
    if not {"snapshot", "swa"} <= kinds:
        raise SystemExit(f"{fge.workdir} is not a finished FGE run with snapshot and SWA rows (it has "
                         f"{sorted(k for k in kinds if k) or 'no rows'}); pass a new --fge-workdir "
                         "and this script trains `fge_config()` there")


def measure(workdir: Path, fge_workdir: Path, passes: int) -> dict:
    view, fge = analysis.load_run(workdir), analysis.load_run(fge_workdir)
    check_fge_run(fge)
    if view.config.num_members < SIZES[-1]:
        raise SystemExit(f"{workdir} has {view.config.num_members} members; the protocol needs {SIZES[-1]}")
    validation = run_lib.load_split(view.config, "validation")
    members = metrics.probs_as_logits(view.predict(validation.images))
    temperature = {"one member": float(metrics.fit_temperature(members[:1], validation.labels)),
                   "ensemble": float(metrics.fit_temperature(members, validation.labels))}
    test = run_lib.load_split(view.config, "test")
    dropout = mc_dropout(workdir, passes)
    clean = method_logits(view, fge, dropout, test.images, temperature)
    result = {"temperature": temperature, "passes": passes, "shift": {}, "ood": {},
              "units": {kind: shift.KINDS[kind].unit for kind in ("rotate", "translate")}}
    for kind in ("rotate", "translate"):
        rows = {method: [] for method in METHODS}
        for level in shift.KINDS[kind].levels:
            logits = (clean if level == 0 else  # level 0 is the clean split itself
                      method_logits(view, fge, dropout, shift.apply(test.images, kind, level), temperature))
            for method in METHODS:
                summary = metrics.uncertainty_summary(logits[method], test.labels)["ensemble"]
                rows[method].append({"level": level, **summary})
        result["shift"][kind] = rows
    ood_images = {"fashion_mnist": data.load("fashion_mnist", "test").images,
                  "noise": shift.synthetic("noise", test.images)}
    for name in OOD_SETS:
        out = method_logits(view, fge, dropout, ood_images[name], temperature)
        result["ood"][name] = {method: metrics.ood_summary(clean[method], out[method])
                               for method in METHODS}
    return result


def figures(result: dict, folder: Path) -> list[Path]:
    """uncertainty_shift.png (accuracy, ECE, Brier against rotation and translation, a line per
    method) and uncertainty_ood.png (AUROC per OOD set, method and score)."""
    shift_path, ood_path = folder / "uncertainty_shift.png", folder / "uncertainty_ood.png"
    styles = {"one member": ("C0", "-"), "temperature scaling": ("C0", "--"),
              "MC dropout": ("C2", "-"), "ensemble of 2": ("C1", ":"), "ensemble of 4": ("C1", "-."),
              "ensemble of 8": ("C3", "-"), "ensemble + TS": ("C3", "--"),
              "FGE snapshots": ("C4", "-"), "SWA": ("C5", "-")}
    fig = Figure(figsize=(12, 6.6))
    axes = fig.subplots(2, 3)
    for row, kind in zip(axes, ("rotate", "translate")):
        for ax, metric in zip(row, ("accuracy", "ece", "brier")):
            for method, entries in result["shift"][kind].items():
                color, line = styles[method]
                ax.plot([e["level"] for e in entries], [e[metric] for e in entries], line,
                        color=color, label=method)
            ax.set_xlabel(f"{kind} ({result['units'][kind]})")
            ax.set_title({"accuracy": "accuracy", "ece": "ECE", "brier": "Brier score"}[metric])
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    save(fig, shift_path)

    fig = Figure(figsize=(12, 3.6))
    width = 0.8 / len(metrics.OOD_SCORES)
    for panel, name in enumerate(OOD_SETS):
        ax = fig.add_subplot(1, len(OOD_SETS), panel + 1)
        for i, score in enumerate(metrics.OOD_SCORES):
            values = [result["ood"][name][m][score]["auroc"] for m in METHODS]
            ax.bar(np.arange(len(METHODS)) + i * width, values, width, label=score)
        ax.set_xticks(np.arange(len(METHODS)) + width, METHODS, rotation=25, ha="right", fontsize=8)
        ax.set_ylim(0.4, 1.0)
        ax.set_title(f"{name} against the MNIST test split", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.axes[0].set_ylabel("AUROC (OOD positive)")
    fig.axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save(fig, ood_path)
    return [shift_path, ood_path]


def save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_bytes(path, buffer.getvalue())


def table(result: dict) -> str:
    """Markdown: per method, accuracy / ECE / Brier at chosen levels, and OOD AUROC per score."""
    pick = {"rotate": (0, 45, 90, 180), "translate": (0, 4, 8, 14)}
    head = ["method"] + [f"{kind} {level}" for kind, levels in pick.items() for level in levels]
    lines = ["accuracy % / ECE / Brier on the shifted test split:", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in METHODS:
        cells = [method]
        for kind, levels in pick.items():
            by_level = {e["level"]: e for e in result["shift"][kind][method]}
            cells += [f"{100 * by_level[l]['accuracy']:.1f} / {by_level[l]['ece']:.3f} / "
                      f"{by_level[l]['brier']:.3f}" for l in levels]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Out of distribution, AUROC / AUPR / FPR@95 (OOD positive):", ""]
    head = ["method"] + [f"{name}, {score}" for name in OOD_SETS for score in metrics.OOD_SCORES]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in METHODS:
        cells = [method] + [f"{r['auroc']:.3f} / {r['aupr']:.3f} / {r['fpr95']:.3f}"
                            for name in OOD_SETS
                            for r in (result["ood"][name][method][s] for s in metrics.OOD_SCORES)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/uncertainty_m8")
    parser.add_argument("--fge-workdir", default="runs/uncertainty_fge",
                        help="the FGE/SWA run (`fge_config`), trained first if needed")
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--passes", type=int, default=8, help="MC dropout passes")
    parser.add_argument("--table", action="store_true",
                        help=f"print the markdown of {RESULTS.name} and redraw its figures")
    args = parser.parse_args(argv)
    if args.table:
        result = json.loads(RESULTS.read_text())
        figures(result, RESULTS.parent)
        print(table(result))
        return 0
    configure_cpu()
    started = time.time()
    workdir, fge_workdir = Path(args.workdir), Path(args.fge_workdir)
    for folder, make in ((workdir, lambda: config(args.members)), (fge_workdir, fge_config)):
        if not (folder / "results.json").exists():
            train.train_and_evaluate(make(), folder)
    trained = time.time()
    result = measure(workdir, fge_workdir, args.passes)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines()
                       if line.startswith("Model name")), host_platform.processor())
    result["meta"] = {"command": " ".join(["python", "experiments/uncertainty.py", *sys.argv[1:]]),
                      "workdir": str(workdir), "fge_workdir": str(fge_workdir),
                      "members": args.members, "cpu": model_name,
                      "date": datetime.date.today().isoformat(),
                      "train_s": round(trained - started), "measure_s": round(time.time() - trained),
                      "test_accuracy": json.loads((workdir / "results.json").read_text())["ensemble"]["test_accuracy"],
                      "fge_test_accuracy": json.loads((fge_workdir / "results.json").read_text())["ensemble"]["test_accuracy"]}
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    for path in figures(result, RESULTS.parent):
        print(f"wrote {path}")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

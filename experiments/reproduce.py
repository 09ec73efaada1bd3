"""Train a reference config and record what was measured in experiments/results/reproduction.json.

    python experiments/reproduce.py --config=deotte15 --members=4
    python experiments/reproduce.py --config=senet_ensemble --members=2 --epochs=5
    python experiments/reproduce.py --config=deotte15 --members=4 --first-member=4
    python experiments/reproduce.py --summary      # the README's table: one row per system
    python experiments/reproduce.py --table        # every run (experiments/results/reproduction.md)

Each run is the config's published recipe; `--members` takes fewer members (the first ones, with
their own seeds), and `--epochs` cuts the schedule only where one member does not fit the time
(the table then says so). `--first-member=K` grows an ensemble across sessions: it trains members
K, K+1, ... (by default up to the recipe's count; with the seeds one run of all of them would
give them) and records them joined with the recorded row of members 0..K-1 as one row. Every
number comes from the runs' results.json and predictions.npz: test numbers evaluated once, at the
end, every choice made on validation. A run interrupted by a signal resumes when the same command
is run again; the JSON gets its row only when the run finished.

Each row keeps its members' predictions beside the JSON (`reproduction/<run folder>/predictions.npz`,
one folder per run the row joins, listed in its `parts`), so an ensemble can grow on another
machine, or after the run folders are gone.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mnist_jax import analysis, config as config_lib, metrics, runfolder, train  # noqa: E402  (the repo on the path first, for a plain checkout)
from mnist_jax.atomic import write_bytes, write_json  # noqa: E402
from mnist_jax.platform import configure_cpu  # noqa: E402

RESULTS = REPO / "experiments" / "results" / "reproduction.json"

_AN_VOTE = "99.87 (vote M3+M5+M7; best of 1,000 triples)"
# name -> (config file[:arg], system, published single accuracy, published ensemble accuracy);
# what each figure is (a mean over runs, a range, a best test epoch): "Published figures" in
# experiments/results/reproduction.md.
SYSTEMS = {
    "senet_ensemble": ("senet_ensemble", "SE-net ensemble (MNIST-0.17, Keras)", "99.69–99.81 (its 20 nets)",
                       "99.84 (20)"),
    "deotte15": ("deotte15", "Deotte's 15-CNN ensemble", "99.641 ± 0.047 (100 trials)",
                 "99.745 ± 0.020 (100 trials; max 99.79)"),
    "tiny20k": ("tiny20k", "15,578-parameter net (MNIST_99.4)", "99.43 (best of 19 test epochs)", "—"),
    "resnet_committee": ("resnet_committee", "35-member residual committee", "99.73 (mean)", "99.82 (35)"),
    "baseline": ("baseline", "plain 2-conv baseline (Géron)", "99.14", "—"),
    "simple_m3": ("simple:m3", "An et al. 2020 M3", "99.699 ± 0.032 (logs of 30 runs)", _AN_VOTE),
    "simple_m5": ("simple:m5", "An et al. 2020 M5", "99.692 ± 0.029 (logs of 30 runs)", _AN_VOTE),
    "simple_m7": ("simple:m7", "An et al. 2020 M7", "99.703 (logs of 3 runs)", _AN_VOTE),
}


# The README's table: one row per reference system, its configs (An et al.'s three nets are one
# system), and the heading of experiments/results/reproduction.md that tells its runs.
REFERENCE_SYSTEMS = {
    "SE-net ensemble (MNIST-0.17, Keras)": (("senet_ensemble",), "se-net-ensemble-mnist-017"),
    "Deotte's 15-CNN ensemble": (("deotte15",), "deottes-15-cnn-ensemble"),
    "15,578-parameter net (MNIST_99.4)": (("tiny20k",),
                                          "the-15578-parameter-net-and-the-plain-2-conv-baseline"),
    "35-member residual committee": (("resnet_committee",), "the-35-member-residual-committee"),
    "plain 2-conv baseline (Géron)": (("baseline",),
                                      "the-15578-parameter-net-and-the-plain-2-conv-baseline"),
    "An et al. 2020 simple CNNs": (("simple_m3", "simple_m5", "simple_m7"), "an-et-al-2020-m5-m7-and-m3"),
}
DETAILS = "experiments/results/reproduction.md"


def load_config(name: str):
    file, _, arg = SYSTEMS[name][0].partition(":")
    return config_lib.from_file(REPO / "configs" / f"{file}.py", arg or None)


def cut(config, members: int | None, epochs: int | None):
    """The recipe with fewer members and, if asked, fewer epochs: the schedule is compressed
    with them (piecewise boundaries scaled, a per-epoch exponential decay steepened so the last
    epoch's learning rate is the recipe's), so a short run still anneals as the recipe does."""
    if members is not None:
        config.num_members = members
    if epochs is not None and epochs < config.num_epochs:
        factor = epochs / config.num_epochs
        schedule = config.optim.schedule
        if schedule.name == "piecewise":
            schedule.boundaries = sorted({min(epochs, max(1, round(b * factor)))
                                          for b in schedule.boundaries})
            schedule["values"] = list(schedule["values"])[: len(schedule.boundaries) + 1]
        elif schedule.name == "exponential":  # lr * d**(E - 1) at the last epoch, as in the recipe
            schedule.decay_rate = schedule.decay_rate ** ((config.num_epochs - 1) / max(1, epochs - 1))
        config.clean_final_epochs = min(config.clean_final_epochs, max(0, epochs - 1))
        config.num_epochs = epochs
    return config


def run_record(name: str, config, results: dict[str, Any], command: str) -> dict[str, Any]:
    recipe = load_config(name)
    e = results["ensemble"]
    return {
        "config": name,
        "members": results["num_members"],
        "epochs": config.num_epochs,
        "recipe_members": recipe.num_members,
        "recipe_epochs": recipe.num_epochs,
        "member_test_accuracies": [m["test_accuracy"] for m in results["members"]],
        "ensemble_test_accuracy": e["test_accuracy"],
        "ensemble_test_accuracy_tta": e.get("test_accuracy_tta"),
        "ensemble_val_accuracy": e["val_accuracy"],
        "wall_time_s": results["wall_time_s"],
        "time_per_epoch_s": results["wall_time_s"] / config.num_epochs,
        "device": results["device"],
        "conv_backend": results.get("conv_backend"),
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
    }


def keep_predictions(workdir: Path, store: Path) -> None:
    """Copy the finished run's predictions.npz to `store/<run folder>/`, beside the JSON."""
    (store / workdir.name).mkdir(parents=True, exist_ok=True)
    source = runfolder.predictions_path(workdir)
    write_bytes(runfolder.predictions_path(store / workdir.name), source.read_bytes())


def stored_predictions(row: dict[str, Any], store: Path) -> dict[str, np.ndarray]:
    """The predictions of every member of a recorded row, from its parts' stored copies."""
    folders = [store / part for part in row.get("parts", [])]
    missing = [f for f in folders if not runfolder.predictions_path(f).exists()]
    if not folders or missing:
        why = f"{runfolder.predictions_path(missing[0])} is missing" if missing else "it predates them"
        raise SystemExit(f"reproduce: the row of {row['config']} with {row['members']} members keeps "
                         f"no predictions ({why}); re-run it (its command: {row['command']})")
    try:
        parts = [runfolder.read_predictions(f, None) for f in folders]
    except ValueError as e:
        raise SystemExit(f"reproduce: {e}") from None
    return {key: (parts[0][key] if key.endswith("labels") else np.concatenate([p[key] for p in parts]))
            for key in parts[0] if all(key in p for p in parts)}


def joined_record(run: dict[str, Any], earlier: dict[str, Any], before: dict[str, np.ndarray],
                  later: Path) -> dict[str, Any]:
    """`run`, of members K.. in `later`, joined with the recorded row `earlier` of members
    0..K-1 (their predictions `before`): every member weighs the same in the ensemble (mean
    probability, as within one run), wall times add up, the command is both rows' commands, and
    the device both rows' devices where they differ."""
    after = analysis.load_run(later).predictions
    if not np.array_equal(before["labels"], after["labels"]):
        raise SystemExit(f"reproduce: the row of {earlier['members']} members and {later} were "
                         f"tested on different labels; join runs of the same dataset")

    def accuracy(key: str, labels_key: str) -> float | None:  # None unless both runs saved it
        if key not in before or key not in after:
            return None
        probs = np.concatenate([before[key], after[key]]).mean(axis=0)
        return float((probs.argmax(-1) == before[labels_key]).mean())

    wall_time_s = earlier["wall_time_s"] + run["wall_time_s"]
    device = run["device"] if earlier["device"] == run["device"] else f"{earlier['device']} + {run['device']}"
    return {**run,
            "device": device,
            "members": earlier["members"] + run["members"],
            "member_test_accuracies": earlier["member_test_accuracies"] + run["member_test_accuracies"],
            "ensemble_test_accuracy": accuracy("probs", "labels"),
            "ensemble_test_accuracy_tta": accuracy("tta_probs", "labels"),
            "ensemble_val_accuracy": accuracy("val_probs", "val_labels"),
            "wall_time_s": wall_time_s,
            "time_per_epoch_s": wall_time_s / run["epochs"],
            "command": f"{earlier['command']} && {run['command']}",
            "parts": earlier["parts"] + run["parts"]}


def row_key(run: dict[str, Any]) -> tuple[str, int, int, str]:
    """A row is a measurement on one machine: the same recipe run on another CPU is a row of its
    own, beside the first."""
    return run["config"], run["members"], run["epochs"], run["device"]


def read_runs(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["runs"] if path.exists() else []


def record(run: dict[str, Any], path: Path = RESULTS) -> None:
    """Add `run` to the JSON, replacing an earlier run of the same config, members and epochs on
    the same device."""
    runs = [r for r in read_runs(path) if row_key(r) != row_key(run)] + [run]
    write_json(path, {"runs": runs})


def row_to_grow(runs: list[dict[str, Any]], config: str, members: int,
                epochs: int) -> dict[str, Any] | None:
    """The recorded row `--first-member` joins: the newest of `members` members and `epochs`
    epochs that keeps its predictions, else the newest at all (which then says it keeps none)."""
    rows = [r for r in runs if (r["config"], r["members"], r["epochs"]) == (config, members, epochs)]
    return ([r for r in rows if r.get("parts")] or rows or [None])[-1]


def table(runs: list[dict[str, Any]]) -> str:
    """The README's reproduction table: one row per run, member mean ± std beside the paper."""
    lines = ["| system | published single | published ensemble | ours: member mean ± std | "
             "ours: ensemble | members | epochs | wall time | per epoch | date, device, command |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in runs:
        _, system, single, ensemble = SYSTEMS[r["config"]]
        acc = 100 * np.asarray(r["member_test_accuracies"])
        tta = (f" (TTA {100 * r['ensemble_test_accuracy_tta']:.2f})"
               if r.get("ensemble_test_accuracy_tta") is not None else "")
        members = f"{r['members']} of {r['recipe_members']}"
        spread = f" ± {acc.std():.2f}" if len(acc) > 1 else ""  # one net has no spread
        epochs = (f"{r['epochs']}" if r["epochs"] == r["recipe_epochs"]
                  else f"**{r['epochs']} of {r['recipe_epochs']}**")
        lines.append(
            f"| {system} | {single} | {ensemble} | {metrics.truncated(acc.mean(), 2)}{spread} | "
            f"{100 * r['ensemble_test_accuracy']:.2f}{tta} | {members} | {epochs} | "
            f"{r['wall_time_s'] / 60:.1f} min | {r['time_per_epoch_s']:.0f} s | "
            f"{r['date']}, {r['device']}, {r['conv_backend']}: `{r['command']}` |")
    return "\n".join(lines)


def completeness(run: dict[str, Any]) -> float:
    """The share of the recipe a run trained: members × epochs over the recipe's."""
    return run["members"] * run["epochs"] / (run["recipe_members"] * run["recipe_epochs"])


def most_complete(runs: list[dict[str, Any]], config: str) -> dict[str, Any] | None:
    """The run of `config` that trained the most of its recipe (the newest of equals)."""
    rows = [r for r in runs if r["config"] == config]
    return max(reversed(rows), key=completeness) if rows else None


def short_device(device: str) -> str:
    """'2 x cpu (cpu, x86_64, AMD EPYC (family 25, model 1; avx2))' -> '2 x AMD EPYC (family
    25, model 1; avx2)': the count and the processor, without the platform said twice."""
    count, _, rest = device.partition(" x ")
    kind, _, description = rest.partition(" (")
    name = description[:-1].split(", ", 2)[-1] if description.endswith(")") else rest
    return (f"{count} x {name}" if kind == "cpu" else f"{count} x {rest}").replace("(R)", "")


def _accuracy_cell(run: dict[str, Any]) -> str:
    acc = 100 * np.asarray(run["member_test_accuracies"])
    tta = run.get("ensemble_test_accuracy_tta")
    tta = f" (TTA {metrics.truncated(100 * tta, 2)})" if tta is not None else ""
    if len(acc) == 1:  # the members column says it is one net
        return f"{metrics.truncated(acc[0], 2)}{tta}"
    return (f"**{metrics.truncated(100 * run['ensemble_test_accuracy'], 2)}** ensemble{tta}; "
            f"nets {metrics.truncated(acc.mean(), 2)} ± {acc.std():.2f}")


def summary(runs: list[dict[str, Any]]) -> str:
    """The README's table: per reference system its most complete recorded run (a system of
    several nets: each net's), beside the published figures; every run is in `table`."""
    lines = ["| system | published | ours (test %) | members × epochs run | status | cost | details |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for system, (configs, anchor) in REFERENCE_SYSTEMS.items():
        # A system of several nets labels each with its short name (An et al.'s "M3").
        label = {c: f"{SYSTEMS[c][1].rsplit(' ', 1)[-1]} " if len(configs) > 1 else "" for c in configs}
        single, ensemble = SYSTEMS[configs[0]][2:]
        published = single if ensemble == "—" else ensemble
        if len(configs) == 1 and ensemble != "—":
            published += f"; nets {single}"
        details = f"[details]({DETAILS}#{anchor})"
        chosen = [(c, r) for c in configs if (r := most_complete(runs, c)) is not None]
        if not chosen:
            lines.append(f"| {system} | {published} | not run | — | — | — | {details} |")
            continue
        ours = "; ".join(f"{label[c]}{_accuracy_cell(r)}" for c, r in chosen)
        run = "; ".join(f"{label[c]}{r['members']}/{r['recipe_members']} × {r['epochs']}/{r['recipe_epochs']}"
                        for c, r in chosen)
        full = len(chosen) == len(configs) and all(completeness(r) >= 1 for _, r in chosen)
        minutes = sum(r["wall_time_s"] for _, r in chosen) / 60
        devices = " / ".join(sorted({short_device(r["device"]) for _, r in chosen}))
        lines.append(f"| {system} | {published} | {ours} | {run} | {'full' if full else 'partial'} | "
                     f"{minutes:.1f} min, {devices} | {details} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=list(SYSTEMS), help="the reference system to train")
    parser.add_argument("--members", type=int, default=None,
                        help="default: the recipe's (with --first-member=K, the recipe's after K)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--first-member", type=int, default=0,
                        help="train members K.. and record them joined with the run of members 0..K-1")
    parser.add_argument("--out", default="runs/reproduce", help="folder for the run folders")
    parser.add_argument("--results", default=str(RESULTS), help="the JSON to add the run to")
    parser.add_argument("--table", action="store_true",
                        help="print every run of --results (experiments/results/reproduction.md)")
    parser.add_argument("--summary", action="store_true",
                        help="print one row per reference system (the README's table)")
    args = parser.parse_args(argv)
    results_path = Path(args.results)
    if args.table or args.summary:
        if not results_path.exists():
            parser.error(f"{results_path} does not exist yet: run a config first")
        print((table if args.table else summary)(read_runs(results_path)))
        return
    if args.config is None:
        parser.error("pass --config=NAME (or --table)")
    if (args.members is not None and args.members < 1) or (args.epochs is not None and args.epochs < 1):
        parser.error("--members and --epochs must be >= 1")
    if args.first_member < 0:
        parser.error("--first-member must be >= 0")
    members = args.members
    if args.first_member and members is None:  # the rest of the recipe's members
        members = load_config(args.config).num_members - args.first_member
        if members < 1:
            parser.error(f"{args.config}'s recipe has {members + args.first_member} members; "
                         f"pass --members to add more than that")
    configure_cpu()
    config = cut(load_config(args.config), members, args.epochs)
    workdir = Path(args.out) / f"{args.config}_m{config.num_members}_e{config.num_epochs}"
    command = shlex.join(["python", "experiments/reproduce.py",
                          *(sys.argv[1:] if argv is None else argv)])
    store = results_path.with_suffix("")  # the rows' predictions, beside the JSON
    if args.first_member:
        earlier = row_to_grow(read_runs(results_path), args.config, args.first_member,
                              config.num_epochs)
        if earlier is None:
            parser.error(f"--first-member={args.first_member} joins the recorded row of members "
                         f"0..{args.first_member - 1} ({args.config}, {config.num_epochs} epochs), "
                         f"which {results_path} does not have: record it first "
                         f"(--members={args.first_member})")
        before = stored_predictions(earlier, store)  # before training: fail in seconds, not hours
        config.seed += args.first_member
        workdir = workdir.with_name(f"{workdir.name}_from{args.first_member}")
    try:
        results = train.train_and_evaluate(config, workdir)
        run = {**run_record(args.config, config, results, command), "parts": [workdir.name]}
        if args.first_member:
            run = joined_record(run, earlier, before, workdir)
        keep_predictions(workdir, store)
    except (train.Interrupted, train.TrainingDiverged, ValueError, OSError) as e:
        raise SystemExit(f"reproduce: {e}") from None  # Interrupted: the same command resumes
    record(run, results_path)
    print(table([run]))


if __name__ == "__main__":
    main()

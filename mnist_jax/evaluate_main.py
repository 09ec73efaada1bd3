"""Re-evaluate a run folder from its newest checkpoint (finished or interrupted) and write
eval_<split>[_<dataset>][_tta].json beside it; or choose an ensemble from its members (and other
runs') on the validation split and score it on test once, writing selection_<method>_<size>.json.

    python -m mnist_jax.evaluate_main --workdir=DIR [--split=test|validation] [--dataset=NAME] [--tta]
    python -m mnist_jax.evaluate_main --workdir=DIR --select=greedy|top_k --size=K [--also=DIR2 ...] [--tta]
    python -m mnist_jax.evaluate_main --workdir=DIR --shift=rotate,translate,corrupt --ood=fashion_mnist,noise

The third measures uncertainty (`analysis.RunView.uncertainty`): the test split shifted at each
level of each kind, OOD detection against each set, temperature scaling fitted on validation
beside the raw numbers; it writes uncertainty.json and its pictures.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mnist_jax import analysis, config as config_lib, metrics, platform, run as run_lib, runfolder, selection


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_jax.evaluate_main",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="run folder of python -m mnist_jax.main")
    parser.add_argument("--split", default="test", choices=("test", "validation"))
    parser.add_argument("--dataset", default=None,
                        help="'mnist', 'idx:<dir>' or 'image_folder:<dir>' (default: the run's own)")
    parser.add_argument("--tta", action="store_true", help="average test-time-augmented passes "
                        "(with --select: choose on the run's saved TTA probabilities)")
    parser.add_argument("--select", choices=selection.METHODS,
                        help="choose an ensemble on validation from the saved predictions")
    parser.add_argument("--size", type=int, default=10, help="--select: picks (greedy) or members (top_k)")
    parser.add_argument("--also", action="append", default=[], metavar="DIR",
                        help="--select: another run whose members are candidates too (repeatable)")
    parser.add_argument("--shift", default=None, metavar="KINDS",
                        help="comma-separated shifts of the test split: rotate, translate, corrupt")
    parser.add_argument("--ood", default=None, metavar="SETS",
                        help="comma-separated out-of-distribution sets: a dataset ('fashion_mnist', "
                        "'idx:<dir>', ...) or a synthetic one (noise, inverted)")
    parser.add_argument("--no-temperature", action="store_true",
                        help="--shift: leave temperature scaling (fitted on validation) out")
    args = parser.parse_args(argv)
    if args.select:
        return _select(args)
    if args.shift is not None or args.ood is not None:
        return _uncertainty(args)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it reads
    platform.configure_cpu()
    try:
        view = analysis.load_run(args.workdir)
        result = view.evaluate(dataset=args.dataset, split=args.split, tta=args.tta)
        path = runfolder.write_evaluation(Path(args.workdir), result, split=args.split,
                                          dataset=args.dataset, tta=args.tta)
    except (ValueError, OSError) as e:  # DataError, ConfigError, CheckpointError, RunFolderError, ...
        print(f"mnist_jax.evaluate_main: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    tta = f", TTA x{result['tta_samples']}" if result["tta_samples"] else ""
    print(f"evaluated checkpoint step {result['checkpoint_step']} of {args.workdir} on "
          f"{result['dataset']} {args.split} ({result['num_examples']} images){tta}")
    print(f"{'':10s} {'accuracy':>9s} {'NLL':>8s}")
    groups = config_lib.group_configs(view.config).values() or [view.config]
    rows = [(g.model, kind) for g in groups for _ in range(g.num_members) for kind in run_lib.row_records(g)]
    for i, (acc, nll, (model, kind)) in enumerate(zip(result["member_accuracy"], result["member_nll"], rows)):
        what = "" if kind["kind"] == "final" else f" ({kind['kind']}, epoch {kind['epoch']})"
        print(f"member {i:<3d} {acc:9.4f} {nll:8.4f}  {model}{what}")
    print(f"{'ensemble':10s} {result['accuracy']:9.4f} {result['nll']:8.4f}  ECE {result['ece']:.4f}  "
          f"vote {result['accuracy_vote']:.4f}  errors {result['errors']}")
    print(f"wrote {path}")
    return 0


def _select(args: argparse.Namespace) -> int:
    try:
        result = analysis.select([args.workdir, *args.also], method=args.select, size=args.size,
                                 tta=args.tta)
        path = runfolder.write_selection(Path(args.workdir), result)
    except (ValueError, OSError) as e:
        print(f"mnist_jax.evaluate_main: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"{args.select} selection of {args.size} from {result['candidates']} members, chosen on "
          f"validation (accuracy {result['val_accuracy']:.4f}, NLL {result['val_nll']:.4f}):")
    for c in result["chosen"]:
        print(f"  {c['run']} member {c['member']} x{c['weight']}")
    print(f"test, scored once after the choice: accuracy {result['test_accuracy']:.4f}, "
          f"{result['test_errors']} errors, NLL {result['test_nll']:.4f}")
    print(f"wrote {path}")
    return 0


def _uncertainty(args: argparse.Namespace) -> int:
    logging.getLogger("absl").setLevel(logging.WARNING)
    platform.configure_cpu()
    try:
        if args.split != "test" or args.dataset or args.tta:
            raise ValueError("--shift and --ood use the run's own test split; drop --split, "
                             "--dataset and --tta")
        shifts = _names(args.shift, "--shift", "rotate,translate")
        oods = _names(args.ood, "--ood", "fashion_mnist,noise")
        view = analysis.load_run(args.workdir)
        result = view.uncertainty(shifts, oods, temperature=not args.no_temperature)
        path = runfolder.write_uncertainty(Path(args.workdir), result)
    except (ValueError, OSError) as e:
        print(f"mnist_jax.evaluate_main: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    temperature = result["temperature"]
    print(f"uncertainty of checkpoint step {result['checkpoint_step']} of {args.workdir}"
          + (f"; temperature on validation: ensemble {temperature['ensemble']:.3f}" if temperature else ""))
    for kind, entries in result["shift"].items():
        print(f"{kind} ({result['units'][kind]}):  ensemble accuracy / ECE / entropy / mutual information")
        for e in entries:
            ens = e["ensemble"]
            print(f"  {e['level']!s:>14s}  {ens['accuracy']:.4f}  {ens['ece']:.4f}  "
                  f"{ens['entropy']:.4f}  {ens['mutual_information']:.4f}")
    for name, scores in result["ood"].items():
        print(f"OOD {name} ({scores['num_examples']} images), AUROC / AUPR / FPR@95: " + "; ".join(
            f"{s} {scores[s]['auroc']:.4f} / {scores[s]['aupr']:.4f} / {scores[s]['fpr95']:.4f}"
            for s in metrics.OOD_SCORES))
    print(f"accuracy-coverage area on test {result['selective']['area']:.4f}")
    print(f"wrote {path}")
    return 0


def _names(value: str | None, flag: str, example: str) -> list[str]:
    """The comma-separated names of `flag`; an empty one is refused in one line."""
    names = [] if value is None else [name.strip() for name in value.split(",")]
    if not all(names):
        raise ValueError(f"{flag}={value!r} is malformed: give comma-separated names without "
                         f"blanks, e.g. {flag}={example}")
    return names


if __name__ == "__main__":
    raise SystemExit(main())

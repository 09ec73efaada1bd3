"""Re-evaluate a run folder from its newest checkpoint (finished or interrupted) and write
eval_<split>[_<dataset>][_tta].json beside it; or choose an ensemble from its members (and other
runs') on the validation split and score it on test once, writing selection_<method>_<size>.json.

    python -m mnist_jax.evaluate_main --workdir=DIR [--split=test|validation] [--dataset=NAME] [--tta]
    python -m mnist_jax.evaluate_main --workdir=DIR --select=greedy|top_k --size=K [--also=DIR2 ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mnist_jax import analysis, config as config_lib, platform, runfolder, selection


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_jax.evaluate_main",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="run folder of python -m mnist_jax.main")
    parser.add_argument("--split", default="test", choices=("test", "validation"))
    parser.add_argument("--dataset", default=None,
                        help="'mnist', 'idx:<dir>' or 'image_folder:<dir>' (default: the run's own)")
    parser.add_argument("--tta", action="store_true", help="average test-time-augmented passes")
    parser.add_argument("--select", choices=selection.METHODS,
                        help="choose an ensemble on validation from the saved predictions")
    parser.add_argument("--size", type=int, default=10, help="--select: picks (greedy) or members (top_k)")
    parser.add_argument("--also", action="append", default=[], metavar="DIR",
                        help="--select: another run whose members are candidates too (repeatable)")
    args = parser.parse_args(argv)
    if args.select:
        return _select(args)
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
    models = [g.model for g in groups for _ in range(g.num_members)]
    for i, (acc, nll, model) in enumerate(zip(result["member_accuracy"], result["member_nll"], models)):
        print(f"member {i:<3d} {acc:9.4f} {nll:8.4f}  {model}")
    print(f"{'ensemble':10s} {result['accuracy']:9.4f} {result['nll']:8.4f}  ECE {result['ece']:.4f}  "
          f"vote {result['accuracy_vote']:.4f}  errors {result['errors']}")
    print(f"wrote {path}")
    return 0


def _select(args: argparse.Namespace) -> int:
    try:
        result = analysis.select([args.workdir, *args.also], method=args.select, size=args.size)
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


if __name__ == "__main__":
    raise SystemExit(main())

"""Evaluation: validation metrics every epoch, the test split once at the end, and a CLI.

Model selection only ever sees the validation split. The test split is read by `finish_run`
(once, after training) and by the CLI on request; `results.json` names the checkpoint step its
numbers come from, and nothing reports a best-over-epochs test number.

    python -m mnist_jax.evaluate --workdir=DIR [--split=test|validation] [--dataset=NAME] [--tta]
"""

from __future__ import annotations

import argparse
import io
import logging
import re
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np

from mnist_jax import augment, data, engine, metrics, platform, plots
from mnist_jax.runfiles import read_jsonl, write_bytes, write_json


class DeviceSplit(NamedTuple):
    """A split on the device as uint8, padded to whole batches; labels stay on the host."""
    images: jax.Array
    labels: np.ndarray
    batch_size: int


def device_split(split: data.Dataset, mesh, batch_size: int) -> DeviceSplit:
    n = len(split.labels)
    batch_size = min(batch_size, n)
    padded = -(-n // batch_size) * batch_size
    images = np.concatenate([split.images, np.zeros((padded - n, *split.images.shape[1:]), np.uint8)])
    return DeviceSplit(engine.put_replicated(images, mesh), split.labels, batch_size)


def split_logits(predict: Callable, state: Any, split: DeviceSplit, key: jax.Array | None = None
                 ) -> np.ndarray:
    """Float32 logits [M, N, C] of every member on every image of the split."""
    key = jax.random.PRNGKey(0) if key is None else key
    batches = [predict(state, split.images[i:i + split.batch_size], key)
               for i in range(0, split.images.shape[0], split.batch_size)]
    return np.concatenate([engine.to_host(b) for b in batches], axis=1)[:, :len(split.labels)]


def tta_logits(predict_tta: Callable, state: Any, split: DeviceSplit, samples: int, seed: int = 0
               ) -> np.ndarray:
    """Log of the mean softmax over `samples` test-time-augmented passes, per member."""
    probs = np.mean([np.asarray(metrics.member_probs(
        split_logits(predict_tta, state, split, jax.random.PRNGKey(seed + s)))) for s in range(samples)], axis=0)
    return np.log(np.clip(probs, 1e-12, 1.0))


def split_metrics(predict: Callable, state: Any, split: DeviceSplit, prefix: str) -> dict[str, Any]:
    """The per-epoch numbers of a split: per-member accuracy and loss, ensemble accuracy and NLL."""
    s = metrics.summarize(split_logits(predict, state, split), split.labels, prefix="")
    return {f"{prefix}_accuracy": s["member_accuracy"], f"{prefix}_loss": s["member_nll"],
            f"{prefix}_ensemble_accuracy": s["accuracy"], f"{prefix}_ensemble_nll": s["nll"]}


def write_pictures(workdir: Path, images: np.ndarray, labels: np.ndarray, logits: np.ndarray,
                   class_names: tuple[str, ...]) -> None:
    """misclassified, confusion, curves, ensemble_size and reliability PNGs of a run."""
    probs = np.asarray(metrics.ensemble_probs(logits))
    plots.misclassified(workdir / "misclassified.png", images, labels, probs, class_names)
    plots.confusion(workdir / "confusion.png",
                    np.asarray(metrics.confusion_matrix(probs.argmax(-1), labels, len(class_names))),
                    class_names)
    plots.curves(workdir / "curves.png", read_jsonl(workdir / "metrics.jsonl"))
    plots.ensemble_size(workdir / "ensemble_size.png",
                        np.asarray(metrics.ensemble_size_curve(logits, labels)))
    plots.reliability(workdir / "reliability.png",
                      jax.tree.map(np.asarray, metrics.reliability(probs, labels)))


def finish_run(config: ml_collections.ConfigDict, workdir: Path, state: Any, model, mesh,
               strategy: str, predict: Callable, test: data.Dataset, *, step: int,
               wall_time_s: float) -> dict[str, Any]:
    """Evaluate the finished ensemble on the test split, once, and write the run directory.

    `predict` is the train loop's compiled validation predictor, reused rather than rebuilt.
    """
    use_ema = bool(config.ema_decay)
    test_split = device_split(test, mesh, config.eval_batch_size)
    logits = split_logits(predict, state, test_split)
    summary = metrics.summarize(logits, test.labels, prefix="test")
    records = read_jsonl(workdir / "metrics.jsonl")
    last = records[-1] if records else {}
    results = {
        "dataset": config.dataset,
        "model": config.model,
        "num_members": config.num_members,
        "checkpoint_step": step,
        "members": [
            {"index": i, "seed": config.seed + i,
             "val_accuracy": last["val_accuracy"][i] if "val_accuracy" in last else None,
             "test_accuracy": summary["test_member_accuracy"][i],
             "test_nll": summary["test_member_nll"][i]}
            for i in range(config.num_members)],
        "ensemble": {
            "val_accuracy": last.get("val_ensemble_accuracy"),
            "test_accuracy": summary["test_accuracy"],
            "test_accuracy_vote": summary["test_accuracy_vote"],
            "test_accuracy_mean_logit": summary["test_accuracy_mean_logit"],
            "test_nll": summary["test_nll"],
            "test_ece": summary["test_ece"],
            "test_brier": summary["test_brier"],
            "test_errors": summary["test_errors"],
            "test_gain_over_mean_member": summary["test_ensemble_gain"],
            "test_size_curve": summary["test_size_curve"],
        },
        "wall_time_s": wall_time_s,
        "train_images_per_s": (np.mean([r["images_per_s"] for r in records]) if records else None),
        "device": platform.device_description(),
        "jax_version": jax.__version__,
    }
    if config.tta_samples:
        predict_tta = engine.make_predict(model, mesh=mesh, strategy=strategy, use_ema=use_ema,
                                          augment_fn=augment.build(config.augment, test_time=True))
        tta = metrics.summarize(tta_logits(predict_tta, state, test_split, config.tta_samples),
                                test.labels, prefix="tta")
        results["ensemble"]["test_accuracy_tta"] = tta["tta_accuracy"]
        results["ensemble"]["test_nll_tta"] = tta["tta_nll"]
        for member, acc in zip(results["members"], tta["tta_member_accuracy"]):
            member["test_accuracy_tta"] = acc
    if jax.process_index() == 0:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, probs=np.asarray(metrics.member_probs(logits)), labels=test.labels)
        write_bytes(workdir / "predictions.npz", buffer.getvalue())
        write_json(workdir / "results.json", results)
        write_pictures(workdir, test.images, test.labels, logits, test.class_names)
    return results


def _eval_file_name(split: str, dataset: str | None, tta: bool) -> str:
    """eval_<split>.json for the run's own data; another dataset or TTA gets its own file."""
    slug = "" if dataset is None else "_" + re.sub(r"[^A-Za-z0-9]+", "-", dataset).strip("-")
    return f"eval_{split}{slug}{'_tta' if tta else ''}.json"


def main(argv: list[str] | None = None) -> int:
    """Evaluate the newest checkpoint of a run (finished or interrupted) and write eval_*.json."""
    parser = argparse.ArgumentParser(prog="python -m mnist_jax.evaluate",
                                     description=main.__doc__)
    parser.add_argument("--workdir", required=True, help="run directory of python -m mnist_jax.main")
    parser.add_argument("--split", default="test", choices=("test", "validation"))
    parser.add_argument("--dataset", default=None,
                        help="'mnist', 'idx:<dir>' or 'image_folder:<dir>' (default: the run's own)")
    parser.add_argument("--tta", action="store_true", help="average test-time-augmented passes")
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it reads

    from mnist_jax import analysis  # analysis builds on this module
    try:
        view = analysis.load_run(args.workdir)
        result = view.evaluate(dataset=args.dataset, split=args.split, tta=args.tta)
        path = view.workdir / _eval_file_name(args.split, args.dataset, args.tta)
        write_json(path, result)
    except (ValueError, OSError) as e:  # DataError, ConfigError, CheckpointError, AnalysisError
        print(f"mnist_jax.evaluate: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    tta = f", TTA x{result['tta_samples']}" if result["tta_samples"] else ""
    print(f"{result['dataset']} {args.split} ({result['num_examples']} images), checkpoint step "
          f"{result['checkpoint_step']}{tta}")
    print(f"{'':10s} {'accuracy':>9s} {'NLL':>8s}")
    for i, (acc, nll) in enumerate(zip(result["member_accuracy"], result["member_nll"])):
        print(f"member {i:<3d} {acc:9.4f} {nll:8.4f}")
    print(f"{'ensemble':10s} {result['accuracy']:9.4f} {result['nll']:8.4f}  ECE {result['ece']:.4f}  "
          f"vote {result['accuracy_vote']:.4f}  errors {result['errors']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

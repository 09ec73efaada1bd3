"""The run folder (`--workdir=DIR`): the one owner of every file's name and format in it.

    DIR/config.json           the resolved config
    DIR/classes.json          the dataset's class names
    DIR/metrics.jsonl         one record per epoch (`MetricWriter`)
    DIR/events.out.tfevents.* the same records for TensorBoard (`tensorboard --logdir DIR/..`)
    DIR/checkpoints/          orbax checkpoints (`mnist_jax.checkpoint` reads and writes them)
    DIR/results.json          test numbers of the finished ensemble
    DIR/predictions.npz       per-member test (and validation) probabilities and labels
    DIR/groups/<name>/        a grouped run's groups, each an ordinary run folder
    DIR/eval_*.json           re-evaluations (`python -m mnist_jax.evaluate_main`)
    DIR/selection_*.json      ensembles chosen on validation (`evaluate_main --select`)
    DIR/uncertainty.json      shifted test sets and OOD detection (`evaluate_main --shift --ood`),
                              with its pictures shift, ood_entropy and selective (.png)
    DIR/<picture>.png         misclassified, confusion, curves, ensemble_size, reliability
    DIR/.lock                 held by the process training in DIR

Every file is written atomically (`mnist_jax.atomic`), so a crash leaves the old or the new
file, never half of one; a damaged file is refused in one line that says how to remake it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import re
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from mnist_jax import config as config_lib, metrics, plots
from mnist_jax.atomic import write_bytes, write_json

PREDICTION_KEYS = ("probs", "labels", "tta_probs", "val_probs", "val_labels", "val_tta_probs")
PICTURES = ("misclassified", "confusion", "curves", "ensemble_size", "reliability")
_REMAKE = "re-run the training command (it resumes at the last checkpoint and rewrites it)"


class RunFolderError(ValueError):
    """A run-folder file that is missing, damaged or in use; the one line says what to do."""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _read_json(path: Path, fix: str) -> Any:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunFolderError(f"{path} is damaged ({_one_line(e)}): {fix}") from None
    if not isinstance(value, dict):
        raise RunFolderError(f"{path} is damaged (not a JSON object): {fix}")
    return value


# ----------------------------------------------------------------------------- config, classes


def write_config(workdir: Path, config: ml_collections.ConfigDict, class_names: tuple[str, ...]
                 ) -> None:
    write_json(workdir / "config.json", json.loads(config.to_json()))
    write_json(workdir / "classes.json", {"class_names": list(class_names)})


def read_config(workdir: Path, check: Callable[[ml_collections.ConfigDict], None],
                upgrade: Callable[[dict], dict] = lambda saved: saved
                ) -> tuple[ml_collections.ConfigDict, tuple[str, ...]]:
    """The run's resolved config, brought to today's schema by `upgrade` (e.g.
    `config.with_new_fields`) and passed through `check` (e.g. `run.validate`), and its class
    names."""
    fix = ("is this a run folder of python -m mnist_jax.main? Re-running its training command "
           "rewrites it")
    path = workdir / "config.json"
    if not path.exists():
        raise RunFolderError(f"{path} not found: {fix}")
    saved = _read_json(path, fix)
    legacy = saved.pop("class_names", None)  # run folders written before classes.json
    classes_path = workdir / "classes.json"
    names = _read_json(classes_path, fix).get("class_names") if classes_path.exists() else legacy
    if not isinstance(names, list) or not names:
        raise RunFolderError(f"{classes_path} is missing or damaged (no class_names list): {fix}")
    try:
        config = ml_collections.ConfigDict(upgrade(saved))
        check(config)
    except (ValueError, AttributeError, KeyError, TypeError) as e:
        raise RunFolderError(f"{path} is not a usable config ({_one_line(e)}): {fix}") from None
    return config, tuple(names)


# ----------------------------------------------------------------------------- metrics


PER_MEMBER_METRICS = ("train_loss", "train_accuracy", "val_accuracy", "val_loss")


def read_metrics(workdir: Path, groups: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The epoch records of metrics.jsonl ([] before the first epoch). For a grouped run (the
    names of its `groups`, in order), the groups' per-member numbers joined epoch by epoch,
    members in group order, None where a group has no such epoch."""
    if groups:
        return _join_group_metrics([read_metrics(group_dir(workdir, name)) for name in groups])
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunFolderError(f"{path} is damaged ({_one_line(e)}): fix or delete its broken lines"
                             ) from None


def _join_group_metrics(per_group: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    by_epoch = [{r["epoch"]: r for r in records} for records in per_group]
    sizes = [max((len(r.get("train_loss", ())) for r in records), default=0) for records in per_group]
    joined = []
    for epoch in sorted(set().union(*by_epoch)):
        record = {"epoch": epoch}
        for key in PER_MEMBER_METRICS:
            if any(key in g.get(epoch, {}) for g in by_epoch):
                record[key] = [v for g, size in zip(by_epoch, sizes)
                               for v in g.get(epoch, {}).get(key, [None] * size)]
        joined.append(record)
    return joined


def _duration(seconds: float) -> str:
    """An ETA as one reads it: '45s', '12m05s', '3h07m'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _write_metrics(workdir: Path, records: list[dict[str, Any]]) -> None:
    write_bytes(workdir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())


class MetricWriter:
    """Sends each epoch's record to metrics.jsonl, the log and TensorBoard event files in the run
    folder, and the running epoch's progress to the terminal or the log (`progress`).

    A resumed run drops the records past its checkpoint (they are trained again), in the JSONL
    and, through TensorBoard's purge step, in the event files. Only the writing process
    (`enabled`) touches files; every process logs.
    """

    def __init__(self, workdir: Path, *, num_epochs: int, resume_epoch: int, enabled: bool,
                 member_labels: Sequence[str] = (), progress_seconds: float = 30.0):
        self.workdir, self.num_epochs, self.enabled = workdir, num_epochs, enabled
        self.progress_seconds = progress_seconds
        self._last_line = time.monotonic()  # when the log last got a line (off a terminal)
        # TensorBoard names member i 'member_i', plus its swept values when there are any.
        self._members = [f"member_{i}_{label.replace(' ', '_')}" if label else f"member_{i}"
                         for i, label in enumerate(member_labels)]
        self._tensorboard = None
        if enabled:
            kept = [r for r in read_metrics(workdir) if r["epoch"] <= resume_epoch]
            _write_metrics(workdir, kept)
            from tensorboardX import SummaryWriter  # imported only by a process that writes
            # tensorboardX names its file by the second; a suffix in ns keeps a run resumed
            # within the same second from overwriting it, and the names in time order.
            self._tensorboard = SummaryWriter(str(workdir), purge_step=resume_epoch + 1,
                                              flush_secs=30, filename_suffix=f".{time.time_ns()}")

    def write(self, record: dict[str, Any]) -> None:
        """One epoch: per-member lists are logged per member and as their mean."""
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        validation = (f"val acc {np.mean(record['val_accuracy']):.4f} ensemble "
                      f"{record['val_ensemble_accuracy']:.4f} " if "val_accuracy" in record else "")
        logging.info("epoch %d/%d  train loss %.4f acc %.4f  %slr %.2e  %.0f img/s",
                     record["epoch"], self.num_epochs, np.mean(record["train_loss"]),
                     np.mean(record["train_accuracy"]), validation, record["learning_rate"],
                     record["images_per_s"])
        self._last_line = time.monotonic()
        if not self.enabled:
            return
        _write_metrics(self.workdir, [*read_metrics(self.workdir), record])
        for key, value in record.items():
            if key in ("epoch", "step") or key.startswith("sweep."):  # a sweep's values are labels
                continue
            if isinstance(value, list):
                for member, v in enumerate(value):
                    name = self._members[member] if member < len(self._members) else f"member_{member}"
                    self._tensorboard.add_scalar(f"{key}/{name}", v, record["epoch"])
                value = float(np.mean(value))
                key = f"{key}/mean"
            self._tensorboard.add_scalar(key, value, record["epoch"])
        self._tensorboard.flush()

    def progress(self, epoch: int, done: int, total: int, loss: float, accuracy: float,
                 images_per_s: float, eta_s: float, run_eta_s: float) -> None:
        """The running epoch's progress with the ETA of the epoch and of the run: on a terminal a
        bar redrawn in place; elsewhere (a log file, CI, a cluster job) a plain log line at most
        every `progress_seconds`, so that a long epoch is not silent there."""
        if sys.stderr.isatty():
            width = 24
            bar = "#" * int(width * done / total) + "-" * (width - int(width * done / total))
            sys.stderr.write(f"\repoch {epoch}/{self.num_epochs} [{bar}] {done}/{total} loss {loss:.4f} "
                             f"acc {accuracy:.4f} {images_per_s:,.0f} img/s ETA {_duration(eta_s):>6} "
                             f"run {_duration(run_eta_s):>6} ")
            sys.stderr.flush()
            return
        now = time.monotonic()
        if now - self._last_line < self.progress_seconds:
            return
        self._last_line = now
        logging.info("epoch %d/%d  step %d/%d  loss %.4f acc %.4f  %.0f img/s  ETA epoch %s, run %s",
                     epoch, self.num_epochs, done, total, loss, accuracy, images_per_s,
                     _duration(eta_s), _duration(run_eta_s))

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


# ----------------------------------------------------------------------------- results


def write_results(workdir: Path, results: dict[str, Any], predictions: dict[str, np.ndarray]
                  ) -> None:
    """results.json and predictions.npz: per-row test probabilities `probs` [R, N, C] and
    `labels` [N]; optionally `tta_probs` [R, N, C] (test-time augmented) and `val_probs`
    [R, V, C] with `val_labels` [V] of the validation split (and `val_tta_probs`, under TTA), so
    ensembles of runs or groups, with or without TTA, can be judged on validation too.

    A row is one ensemble member's weights: one per trained member, or each of its snapshots and
    its SWA average (`run.row_records`: member-major), and results.json's `members` list names
    each row's `member` (trajectory), `kind` and `epoch`."""
    unknown = set(predictions) - set(PREDICTION_KEYS)
    if unknown or not {"probs", "labels"} <= set(predictions):
        raise ValueError(f"predictions need probs and labels, and only {PREDICTION_KEYS}; got "
                         f"{sorted(predictions)}")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **predictions)
    write_bytes(predictions_path(workdir), buffer.getvalue())
    write_json(workdir / "results.json", results)


def read_results(workdir: Path) -> dict[str, Any] | None:
    """results.json, or None while the run has not finished its test evaluation."""
    path = workdir / "results.json"
    if not path.exists():
        return None
    fix = "delete it and " + _REMAKE
    results = _read_json(path, fix)
    if not {"members", "ensemble"} <= set(results):
        raise RunFolderError(f"{path} is damaged (no members/ensemble): {fix}")
    return results


def member_names(results: dict[str, Any]) -> list[str] | None:
    """'group (model)' of each row of a grouped run's results (just the model where the group
    is named after it); a sweep's members by their swept values; snapshot and SWA rows by their
    member and epoch ('m0 e4', 'm0 swa'); None for another run, whose members all share one
    model and recipe."""
    rows = results["members"]
    if "groups" in results:
        names = [m["model"] if m["group"] == m["model"] else f"{m['group']} ({m['model']})" for m in rows]
    elif any("swept" in m for m in rows):  # a sweep: each member by its values
        names = [config_lib.sweep_label(m["swept"]) for m in rows]
    else:
        names = None
    if all(m.get("kind", "final") == "final" for m in rows):
        return names
    rows_of = [f"m{m['member']} {'swa' if m['kind'] == 'swa' else 'e%d' % m['epoch']}" for m in rows]
    return rows_of if names is None else [f"{n}, {r}" for n, r in zip(names, rows_of)]


def predictions_path(workdir: Path) -> Path:
    return workdir / "predictions.npz"


def read_predictions(workdir: Path, num_classes: int | None) -> dict[str, np.ndarray] | None:
    """predictions.npz as {'probs': [R, N, C], 'labels': [N]} plus whichever of 'tta_probs',
    'val_probs', 'val_labels' and 'val_tta_probs' the run saved, or None before the run
    finished (R: ensemble rows, `write_results`). The shapes are checked against `num_classes`
    (None: the class count `probs` has)."""
    path = predictions_path(workdir)
    if not path.exists():
        return None
    try:
        with np.load(path) as npz:
            predictions = {k: npz[k] for k in PREDICTION_KEYS if k in npz.files}
        probs, labels = predictions["probs"], predictions["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise RunFolderError(f"{path} is damaged ({_one_line(e)}): {_REMAKE}") from None
    if num_classes is None:
        num_classes = probs.shape[-1] if probs.ndim else 0  # a scalar fails the check below
    shapes = [("probs", probs.shape, (len(labels), num_classes))]
    if "tta_probs" in predictions:
        shapes.append(("tta_probs", predictions["tta_probs"].shape, (len(labels), num_classes)))
    for key in ("val_probs", "val_tta_probs"):
        if key in predictions:
            shapes.append((key, predictions[key].shape, (len(predictions.get("val_labels", ())), num_classes)))
    for name, shape, expected in shapes:
        if len(shape) != 3 or shape[1:] != expected or shape[0] != probs.shape[0]:
            raise RunFolderError(f"{path} is damaged ({name} {shape} do not fit {probs.shape[0]} "
                                 f"members, {expected[0]} labels and {num_classes} classes): {_REMAKE}")
    return predictions


def missing_predictions_error(workdir: Path) -> RunFolderError:
    return RunFolderError(f"{predictions_path(workdir)} not found: the run has not finished; "
                          f"re-run its training command to finish it")


def write_evaluation(workdir: Path, result: dict[str, Any], *, split: str, dataset: str | None,
                     tta: bool) -> Path:
    """eval_<split>.json for the run's own data; another dataset or TTA gets its own file."""
    slug = "" if dataset is None else "_" + re.sub(r"[^A-Za-z0-9]+", "-", dataset).strip("-")
    path = workdir / f"eval_{split}{slug}{'_tta' if tta else ''}.json"
    write_json(path, result)
    return path


def write_selection(workdir: Path, result: dict[str, Any]) -> Path:
    """selection_<method>_<size>[_tta].json: an ensemble chosen on validation and its test numbers."""
    path = workdir / f"selection_{result['method']}_{result['size']}{'_tta' if result.get('tta') else ''}.json"
    write_json(path, result)
    return path


# ----------------------------------------------------------------------------- uncertainty

UNCERTAINTY_PICTURES = ("shift", "ood_entropy", "selective")


def write_uncertainty(workdir: Path, result: dict[str, Any]) -> Path:
    """uncertainty.json (`analysis.RunView.uncertainty`: shifted test sets, OOD detection,
    selective prediction, entropy histograms) and its pictures, drawn from it alone: shift.png
    (accuracy, ECE and Brier against each shift's level), ood_entropy.png (entropy in and out of
    distribution) and selective.png (accuracy against coverage)."""
    path = workdir / "uncertainty.json"
    write_json(path, result)
    plots.shift(picture_path(workdir, "shift"), result["shift"], result["units"])
    plots.entropy_histograms(picture_path(workdir, "ood_entropy"), result["entropy_histogram"])
    plots.selective(picture_path(workdir, "selective"), result["selective"])
    return path


# ----------------------------------------------------------------------------- pictures


def picture_path(workdir: Path, name: str) -> Path:
    """Where the run keeps picture `name` (one of PICTURES or UNCERTAINTY_PICTURES)."""
    return workdir / f"{name}.png"


def write_pictures(workdir: Path, images: np.ndarray, labels: np.ndarray, logits: np.ndarray,
                   class_names: tuple[str, ...], groups: Sequence[str] = (),
                   member_names: Sequence[str] | None = None) -> None:
    """Every picture of a finished run, from its test logits [M, N, C] and its metrics (joined
    over `groups` for a grouped run); `member_names` label the members in the per-member plots."""
    probs = np.asarray(metrics.ensemble_probs(logits))
    plots.misclassified(picture_path(workdir, "misclassified"), images, labels, probs, class_names)
    plots.confusion(picture_path(workdir, "confusion"),
                    np.asarray(metrics.confusion_matrix(probs.argmax(-1), labels, len(class_names))),
                    class_names)
    plots.curves(picture_path(workdir, "curves"), read_metrics(workdir, groups), member_names)
    plots.ensemble_size(picture_path(workdir, "ensemble_size"),
                        np.asarray(metrics.ensemble_size_curve(logits, labels)), member_names)
    plots.reliability(picture_path(workdir, "reliability"),
                      {k: np.asarray(v) for k, v in metrics.reliability(probs, labels).items()})


# ----------------------------------------------------------------------------- checkpoints, lock


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def local_folder(workdir: str | os.PathLike) -> Path:
    """`workdir` as a local path; a URL (gs://, s3://) is refused in one line. A path would make
    it a local folder 'gs:/bucket/run' on each host; the lock, orbax and TensorBoard need one
    POSIX filesystem, which multi-host training needs every host to share."""
    if _URL.match(str(workdir)):
        raise RunFolderError(f"workdir {workdir}: remote storage is not supported; a run folder, "
                             f"and multi-host training, need one shared POSIX filesystem mounted on "
                             f"every host: mount it (e.g. gcsfuse for gs://) and pass its local path")
    return Path(workdir)


def group_dir(workdir: Path, name: str) -> Path:
    """The run folder of group `name` of a grouped run (an ordinary run folder of its own)."""
    return Path(workdir) / "groups" / name


def checkpoint_dir(workdir: Path) -> Path:
    return Path(workdir).resolve() / "checkpoints"


def has_checkpoint(workdir: Path) -> bool:
    return any(checkpoint_dir(workdir).glob("[0-9]*"))


@contextlib.contextmanager
def lock(workdir: Path) -> Iterator[None]:
    """Refuse a second training process on `workdir` while this one holds it.

    An advisory `flock` on DIR/.lock: the kernel drops it when the process ends in any way
    (kill -9 included), so a stale lock file never blocks the next run.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise RunFolderError(f"{workdir} is in use: process {holder} is training in it; wait "
                                 f"for it to finish or stop it, or use another --workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock

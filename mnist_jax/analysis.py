"""Looking at finished (or interrupted) runs from Python: numbers, pictures, re-evaluation.

Everything reads the run directory that `python -m mnist_jax.main` writes; the checkpoint is
restored only when a question needs the model (`evaluate`, `predict`), so browsing the
numbers of many runs stays cheap.

    view = analysis.load_run("runs/quick")
    view.results["ensemble"]["test_accuracy"], view.plot("confusion", "/tmp/c.png")
    view.evaluate(dataset="idx:data/fashion", split="test")
    view.shift("rotate", [0, 90]), view.ood("fashion_mnist")   # under shift, out of distribution
    print(analysis.to_markdown(analysis.compare(["runs/m3", "runs/m5", "runs/m7"])))
    analysis.combine(["runs/m3", "runs/m5", "runs/m7"], method="vote")
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, NamedTuple

import ml_collections
import numpy as np

from mnist_jax import checkpoint, config as config_lib, data, metrics, plots, run as run_lib, runfolder, selection
from mnist_jax import shift as shift_lib
from mnist_jax.evaluate import Evaluator

PLOTS = runfolder.PICTURES
COMBINE_METHODS = ("vote", "mean_prob")
DEFAULT_TTA_SAMPLES = 8  # when tta is asked of a run whose config.tta_samples is 0.


class AnalysisError(ValueError):
    """A request that cannot be answered; the one line says what and how."""


def _read_config(workdir: Path) -> tuple[ml_collections.ConfigDict, tuple[str, ...]]:
    return runfolder.read_config(workdir, check=run_lib.validate, upgrade=config_lib.with_new_fields)


def restore(workdir: str | Path) -> tuple[run_lib.Setup, run_lib.State]:
    """The static parts and the state of the newest readable checkpoint of a run."""
    workdir = Path(workdir)
    config, class_names = _read_config(workdir)
    if config.groups:
        raise AnalysisError(f"{workdir} is a grouped run: restore one of its groups, "
                            f"{runfolder.group_dir(workdir, next(iter(config.groups)))} or another "
                            f"in {workdir / 'groups'}")
    if (config.snapshot.cycles or config.swa.epochs) and runfolder.read_results(workdir) is None:
        raise AnalysisError(f"{workdir} has not finished: a snapshot or SWA run's ensemble rows exist "
                            f"only at its end; finish it with its training command first")
    setup = run_lib.setup(config, len(class_names), steps_per_epoch=1)
    state = run_lib.restore(setup, workdir)
    if state is None:
        raise checkpoint.CheckpointError(
            f"no checkpoint in {runfolder.checkpoint_dir(workdir)}: train first with "
            f"python -m mnist_jax.main --config=... --workdir={workdir}")
    return setup, state


def member_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """metrics.jsonl records as one row per (epoch, member): per-member lists are split into
    their member's row and per-epoch numbers are repeated, so members can be grouped and plotted."""
    rows = []
    for record in records:
        count = max((len(v) for v in record.values() if isinstance(v, list)), default=1)
        for member in range(count):
            rows.append({"epoch": record.get("epoch"), "member": member,
                         **{k: v[member] if isinstance(v, list) else v
                            for k, v in record.items() if k != "epoch"}})
    return rows


class _Restored(NamedTuple):
    setup: run_lib.Setup
    state: run_lib.State
    predict: Callable


@dataclasses.dataclass(frozen=True, eq=False)
class RunView:
    """What a run directory holds, plus the restored ensemble on demand (see `load_run`)."""
    workdir: Path
    config: ml_collections.ConfigDict
    class_names: tuple[str, ...]
    metrics: list[dict[str, Any]]
    results: dict[str, Any] | None  # None until the run finished its test evaluation.
    predictions: dict[str, np.ndarray] | None  # probs [M, N, C] and labels [N] of the test split.

    def dataframe(self):
        """The metrics as a pandas DataFrame, one row per (epoch, member) (see `member_rows`)."""
        try:
            import pandas
        except ImportError:
            raise AnalysisError("RunView.dataframe needs pandas, which is not installed: "
                                "pip install pandas (or use analysis.member_rows(view.metrics))"
                                ) from None
        return pandas.DataFrame(member_rows(self.metrics))

    def plot(self, name: str, path: str | Path | None = None) -> str:
        """Redraw one of the run's pictures from its saved predictions and metrics; returns the
        path written (default WORKDIR/<name>.png)."""
        if name not in PLOTS:
            raise AnalysisError(f"unknown plot {name!r}; choose one of {', '.join(PLOTS)}")
        path = Path(path) if path is not None else runfolder.picture_path(self.workdir, name)
        names = runfolder.member_names(self.results) if self.results else None
        if name == "curves":
            return plots.curves(path, self.metrics, names)
        probs, labels = self._test_predictions()
        mean = probs.mean(axis=0)
        if name == "misclassified":
            test = run_lib.load_split(self.config, "test")
            if not np.array_equal(test.labels, labels):
                raise AnalysisError(f"the test split of {self.config.dataset!r} no longer matches "
                                    f"{runfolder.predictions_path(self.workdir)}; was the data changed?")
            return plots.misclassified(path, test.images, labels, mean, self.class_names)
        if name == "confusion":
            cm = metrics.confusion_matrix(mean.argmax(-1), labels, len(self.class_names))
            return plots.confusion(path, np.asarray(cm), self.class_names)
        if name == "ensemble_size":
            curve = metrics.ensemble_size_curve(metrics.probs_as_logits(probs), labels)
            return plots.ensemble_size(path, np.asarray(curve), names)
        return plots.reliability(path, {k: np.asarray(v)
                                        for k, v in metrics.reliability(mean, labels).items()})

    def evaluate(self, dataset: str | None = None, split: str = "test", tta: bool = False
                 ) -> dict[str, Any]:
        """Metrics of the restored ensemble on a split of the run's dataset or of `dataset`
        ('mnist', 'idx:<dir>', 'image_folder:<dir>'): `metrics.summarize` names without prefix,
        plus dataset, split, checkpoint_step (per group for a grouped run) and tta_samples (0
        without TTA)."""
        config = self.config.copy_and_resolve_references()
        if dataset is not None:
            config.dataset = dataset
        split_data = run_lib.load_split(config, split)
        self._check_images(split_data.images, f"{config.dataset} {split} images")
        if len(split_data.class_names) != len(self.class_names):
            raise AnalysisError(f"{config.dataset} has {len(split_data.class_names)} classes but the "
                                f"run's model predicts {len(self.class_names)}; evaluate on a dataset "
                                f"with the same classes")
        samples = (config.tta_samples or DEFAULT_TTA_SAMPLES) if tta else 0
        logits = self._row_logits(split_data.images, samples)
        steps = {name: view._restored.state.step for name, view in self.groups.items()}
        return {"dataset": config.dataset, "split": split,
                "checkpoint_step": steps or self._restored.state.step, "tta_samples": samples,
                **metrics.summarize(logits, split_data.labels, prefix="")}

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Per-row class probabilities [R, N, C] of new uint8 images [N, H, W, 1] or [N, H, W]
        (a row per member, or per snapshot and SWA average: predictions.npz's rows)."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        return np.asarray(metrics.member_probs(self._row_logits(images)))

    @functools.cached_property
    def groups(self) -> dict[str, RunView]:
        """The view of each group of a grouped run, in config order ({} for an ungrouped run)."""
        return {name: load_run(runfolder.group_dir(self.workdir, name)) for name in config_lib.group_configs(self.config)}

    def _logits(self, images: np.ndarray, tta_samples: int) -> np.ndarray:
        """Logits [R, N, C] of every ensemble row of this (ungrouped) run's restored members
        (snapshot and SWA rows included, in predictions.npz's order)."""
        restored = self._restored
        predict = run_lib.predictor(restored.setup, tta=True) if tta_samples else restored.predict
        evaluator = Evaluator(predict, images, np.zeros(len(images), np.int32),
                              mesh=restored.setup.mesh, batch_size=self.config.eval_batch_size,
                              tta_samples=tta_samples)
        return evaluator.row_logits(run_lib.ensemble_rows(restored.setup, restored.state.members))

    def _check_images(self, images: np.ndarray, what: str) -> None:
        size = self.config.image_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 1) \
                or not len(images):
            raise AnalysisError(f"{what} must be uint8 [N, {size}, {size}, 1] or [N, {size}, {size}] "
                                f"with N >= 1 (raw 0-255 pixels, as data.load returns); got "
                                f"{images.dtype} of shape {images.shape}")

    def _test_predictions(self) -> tuple[np.ndarray, np.ndarray]:
        if self.predictions is None:
            raise runfolder.missing_predictions_error(self.workdir)
        return self.predictions["probs"], self.predictions["labels"]

    @functools.cached_property
    def _restored(self) -> _Restored:
        """Restored once, on the first evaluate/predict (cached_property works on frozen classes)."""
        setup, state = restore(self.workdir)
        return _Restored(setup, state, run_lib.predictor(setup))

    # ------------------------------------------------------------------------- uncertainty

    def shift(self, kind: str, levels: Sequence | None = None, *, seed: int = 0,
              temperature: bool = False) -> list[dict[str, Any]]:
        """The restored ensemble on its test split shifted by `kind` (`shift.KINDS`: rotate,
        translate, corrupt) at each of `levels` (default: the kind's standard ones): one
        {"level", "ensemble", "members"} per level (`metrics.uncertainty_summary`); with
        `temperature`, also "ensemble_scaled" and "members_scaled" under `temperatures()`."""
        try:
            levels = shift_lib.check_levels(kind, levels)
        except ValueError as e:
            raise AnalysisError(str(e)) from None
        test = run_lib.load_split(self.config, "test")
        temperatures = self.temperatures() if temperature else None
        entries = []
        for level in levels:
            logits = self._row_logits(shift_lib.apply(test.images, kind, level, seed=seed))
            entry = {"level": level, **metrics.uncertainty_summary(logits, test.labels)}
            if temperatures:
                ensemble = logits / temperatures["ensemble"]
                members = logits / np.reshape(temperatures["members"], (-1, 1, 1))
                entry["ensemble_scaled"] = metrics.uncertainty_summary(ensemble, test.labels)["ensemble"]
                entry["members_scaled"] = metrics.uncertainty_summary(members, test.labels)["members"]
            entries.append(entry)
        return entries

    def ood(self, dataset: str, *, seed: int = 0) -> dict[str, Any]:
        """How well the restored ensemble tells the test images of `dataset` (a `data.load` name
        such as 'fashion_mnist', or a synthetic set of `shift.SYNTHETIC`: 'noise', 'inverted')
        from its own test split: num_examples and `metrics.ood_summary` (AUROC, AUPR and FPR at
        95 % TPR, OOD the positive class) under entropy, max probability and mutual information."""
        return self._ood_entry(self._ood_images(dataset, seed))[0]

    def temperatures(self) -> dict[str, Any]:
        """Temperatures fitted on the validation split by NLL (`metrics.fit_temperature`): one
        'ensemble' temperature for all members and one per member ('members'). A run without a
        validation split is refused: fitting on test would flatter the scaled numbers."""
        if not self.config.validation_size:
            raise AnalysisError(f"{self.workdir} has no validation split (validation_size=0) to fit "
                                f"a temperature on; train with validation_size > 0, or leave "
                                f"temperature scaling out (temperature=False, --no-temperature)")
        return self._fitted_temperatures

    def uncertainty(self, shifts: Sequence[str] = (), oods: Sequence[str] = (), *, seed: int = 0,
                    temperature: bool = True) -> dict[str, Any]:
        """What `evaluate_main --shift --ood` writes to uncertainty.json (`runfolder.write_uncertainty`):
        `shift(kind)` for each of `shifts` (with temperature-scaled numbers unless `temperature`
        is False), `ood(name)` for each of `oods`, and on the clean test split the members'
        diversity (mean pairwise disagreement, error correlation matrix), the accuracy-coverage
        curve at 100 coverages ('selective', with its area) and histograms of the predictive
        entropy in and out of distribution. Names and kinds are checked before any is computed."""
        for kind in shifts:
            try:
                shift_lib.check_levels(kind)
            except ValueError as e:
                raise AnalysisError(str(e)) from None
        for name in oods:
            self._check_ood_name(name)
        ood_images = {name: self._ood_images(name, seed) for name in oods}
        temperature = temperature and bool(shifts)  # only the shifted sets report scaled numbers
        temperatures = self.temperatures() if temperature else None
        test_logits, labels = self._test_logits
        steps = {name: view._restored.state.step for name, view in self.groups.items()}
        result = {"checkpoint_step": steps or self._restored.state.step, "seed": seed,
                  "units": {kind: shift_lib.KINDS[kind].unit for kind in shifts},
                  "temperature": temperatures,
                  "shift": {kind: self.shift(kind, seed=seed, temperature=temperature)
                            for kind in shifts},
                  "ood": {}}
        entropies = {"test": metrics.predictive_entropy(test_logits)}
        for name, images in ood_images.items():
            result["ood"][name], out = self._ood_entry(images)
            entropies[name] = metrics.predictive_entropy(out)
        correlation = np.asarray(metrics.error_correlation(test_logits, labels))
        result["diversity"] = {  # of the clean test split; a member without errors has no correlation
            "disagreement": float(metrics.disagreement(test_logits).mean()),
            "error_correlation": [[None if np.isnan(c) else round(float(c), 6) for c in row]
                                  for row in correlation]}
        curve = metrics.selective_prediction(metrics.ensemble_probs(test_logits), labels)
        picks = np.ceil(np.arange(1, 101) / 100 * len(labels)).astype(int) - 1
        result["selective"] = {"area": float(curve["area"]),
                               "coverage": [round(float(c), 6) for c in np.asarray(curve["coverage"])[picks]],
                               "accuracy": [round(float(a), 6) for a in np.asarray(curve["accuracy"])[picks]]}
        edges = np.linspace(0.0, np.log(test_logits.shape[-1]), 31)  # nats, up to the uniform's
        result["entropy_histogram"] = {
            "edges": [round(float(e), 6) for e in edges],
            "counts": {name: np.histogram(np.clip(h, 0.0, edges[-1]), edges)[0].tolist()
                       for name, h in entropies.items()}}
        return result

    def _ood_entry(self, images: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        """`ood`'s numbers for OOD images, and their logits [R, N, C]."""
        out = self._row_logits(images)
        return {"num_examples": len(images), **metrics.ood_summary(self._test_logits[0], out)}, out

    def _row_logits(self, images: np.ndarray, tta_samples: int = 0) -> np.ndarray:
        """Logits [R, N, C] of every ensemble row on uint8 images, groups joined in order."""
        self._check_images(images, "images")
        return np.concatenate([view._logits(images, tta_samples)
                               for view in list(self.groups.values()) or [self]])

    def _ood_images(self, name: str, seed: int) -> np.ndarray:
        """The test images of OOD set `name`, refused in one line naming it when it is unknown or
        its images are not the run's size."""
        self._check_ood_name(name)
        if name in shift_lib.SYNTHETIC:
            return shift_lib.synthetic(name, run_lib.load_split(self.config, "test").images, seed=seed)
        try:
            return data.load(name, "test", image_size=self.config.image_size).images
        except data.DataError as e:
            raise AnalysisError(f"OOD set {name!r}: {e}") from None

    @staticmethod
    def _check_ood_name(name: str) -> None:
        """Refuse a name that is neither synthetic nor a dataset's, before any data is read."""
        if name not in shift_lib.SYNTHETIC and name not in data.NAMED and ":" not in name:
            raise AnalysisError(f"unknown OOD set {name!r}; use {', '.join(shift_lib.SYNTHETIC)} or "
                                f"a dataset: {data.NAME_FORMS}")

    @functools.cached_property
    def _test_logits(self) -> tuple[np.ndarray, np.ndarray]:
        """Logits [R, N, C] of the run's own test split, and its labels."""
        test = run_lib.load_split(self.config, "test")
        return self._row_logits(test.images), test.labels

    @functools.cached_property
    def _fitted_temperatures(self) -> dict[str, Any]:
        validation = run_lib.load_split(self.config, "validation")
        logits = self._row_logits(validation.images)
        members = metrics.fit_temperature(logits, validation.labels, per_member=True)
        return {"ensemble": float(metrics.fit_temperature(logits, validation.labels)),
                "members": [float(t) for t in np.asarray(members)]}


def load_run(workdir: str | Path) -> RunView:
    """Read a run directory (config, metrics, results and test predictions); no model yet."""
    workdir = runfolder.local_folder(workdir)
    if not workdir.is_dir():
        raise AnalysisError(f"{workdir} is not a folder; pass the --workdir of a training run")
    config, class_names = _read_config(workdir)
    return RunView(workdir, config, class_names, runfolder.read_metrics(workdir, list(config_lib.group_configs(config))),
                   runfolder.read_results(workdir),
                   runfolder.read_predictions(workdir, len(class_names)))


def compare(workdirs: list[str | Path]) -> list[dict[str, Any]]:
    """One row of headline numbers per run (test fields None for an unfinished run)."""
    rows = []
    for workdir in workdirs:
        view = load_run(workdir)
        last = view.metrics[-1] if view.metrics else {}
        results = view.results or {}
        ensemble = results.get("ensemble", {})
        member_acc = [m["test_accuracy"] for m in results.get("members", [])]
        rows.append({
            "name": view.workdir.name,
            "model": results.get("model", view.config.model),
            "members": config_lib.total_members(view.config),
            "epochs": last.get("epoch", 0),
            "num_epochs": view.config.num_epochs,
            "val_ensemble_accuracy": last.get("val_ensemble_accuracy"),
            "test_member_mean": float(np.mean(member_acc)) if member_acc else None,
            "test_member_std": float(np.std(member_acc)) if member_acc else None,
            "test_ensemble_accuracy": ensemble.get("test_accuracy"),
            "test_vote_accuracy": ensemble.get("test_accuracy_vote"),
            "test_nll": ensemble.get("test_nll"),
            "test_ece": ensemble.get("test_ece"),
            "wall_time_s": results.get("wall_time_s", last.get("wall_time_s")),
        })
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """`compare` rows as a Markdown table, accuracies in percent (cut, never rounded up, to 0.01);
    missing numbers show as '–'."""
    def pct(x):
        return "–" if x is None else metrics.truncated(100 * x, 2)

    def num(x, spec):
        return "–" if x is None else format(x, spec)

    columns = {
        "run": lambda r: r["name"],
        "model": lambda r: r["model"],
        "M": lambda r: str(r["members"]),
        "epochs": lambda r: f"{r['epochs']}/{r['num_epochs']}",
        "val ens %": lambda r: pct(r["val_ensemble_accuracy"]),
        "test member %": lambda r: ("–" if r["test_member_mean"] is None else
                                    f"{pct(r['test_member_mean'])} ± {100 * r['test_member_std']:.2f}"),
        "test ens %": lambda r: pct(r["test_ensemble_accuracy"]),
        "vote %": lambda r: pct(r["test_vote_accuracy"]),
        "NLL": lambda r: num(r["test_nll"], ".4f"),
        "ECE": lambda r: num(r["test_ece"], ".4f"),
        "wall s": lambda r: num(r["wall_time_s"], ".0f"),
    }
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r) for cell in columns.values()) + " |" for r in rows]
    return "\n".join(lines)


def combine(workdirs: list[str | Path], method: str = "vote") -> dict[str, Any]:
    """Test accuracy of an ensemble of runs, from their saved test predictions.

    Each run counts once, through its own ensemble's mean probabilities: 'vote' is the majority
    of the runs' predicted classes (ties to the highest mean probability, as `metrics.vote`),
    'mean_prob' the argmax of the mean of the runs' probabilities. nll, ece and brier are of
    that mean in both cases (a vote has no probabilities of its own).
    """
    if method not in COMBINE_METHODS:
        raise AnalysisError(f"unknown combine method {method!r}; choose one of {', '.join(COMBINE_METHODS)}")
    if not workdirs:
        raise AnalysisError("combine needs at least one run directory")
    views = [load_run(w) for w in workdirs]
    labels = views[0]._test_predictions()[1]
    for view in views[1:]:
        if not np.array_equal(view._test_predictions()[1], labels):
            raise AnalysisError(f"{runfolder.predictions_path(view.workdir)} holds other test labels than "
                                f"{runfolder.predictions_path(views[0].workdir)}; combine runs tested on the "
                                f"same dataset")
    run_probs = np.stack([view._test_predictions()[0].mean(axis=0) for view in views])  # [R, N, C]
    mean = run_probs.mean(axis=0)
    if method == "vote":
        pred = np.asarray(metrics.vote(metrics.probs_as_logits(run_probs)))
    else:
        pred = mean.argmax(-1)
    correct = pred == labels
    return {
        "runs": [str(view.workdir) for view in views],
        "method": method,
        "num_examples": len(labels),
        "accuracy": float(correct.mean()),
        "errors": int((~correct).sum()),
        "run_accuracy": [float((p.argmax(-1) == labels).mean()) for p in run_probs],
        "nll": float(metrics.nll(mean, labels)),
        "ece": float(metrics.ece(mean, labels)),
        "brier": float(metrics.brier(mean, labels)),
    }


def sweep_table(workdir: str | Path) -> list[dict[str, Any]]:
    """One row per member of a swept run: its swept values (by field name) and its validation
    accuracy, the numbers to choose a value on; `plots.sweep` draws them. Refused for a run
    without a sweep or before its evaluation."""
    view = load_run(workdir)
    members = (view.results or {}).get("members", [])
    if not members or "swept" not in members[0]:
        raise AnalysisError(f"{view.workdir} is not a finished sweep (no swept values in its "
                            f"results.json); set config.sweep and let the run finish")
    return [{"member": m["index"], **{k.split(".")[-1]: v for k, v in m["swept"].items()},
             "val_accuracy": m["val_accuracy"]} for m in members]


def select(workdirs: list[str | Path], method: str = "greedy", size: int = 10, tta: bool = False
           ) -> dict[str, Any]:
    """An ensemble chosen from the members (rows of predictions.npz) of one or more runs on the
    validation split (`selection.greedy` or `selection.top_k`), then scored on the test split
    once; with `tta`, chosen on the test-time-augmented validation probabilities and scored on
    the augmented test ones (runs with config.tta_samples > 0).

    Returns the choice (each chosen member's run, index and weight), its validation accuracy and
    NLL, and the test numbers of the chosen ensemble (mean probability, weights by count)."""
    if method not in selection.METHODS:
        raise AnalysisError(f"unknown selection method {method!r}; choose one of {', '.join(selection.METHODS)}")
    if not workdirs:
        raise AnalysisError("select needs at least one run directory")
    views = [load_run(w) for w in workdirs]
    val_key, test_key = ("val_tta_probs", "tta_probs") if tta else ("val_probs", "probs")
    members, val, test = [], [], []
    for view in views:
        predictions = view.predictions
        if predictions is None or val_key not in predictions:
            raise AnalysisError(f"{runfolder.predictions_path(view.workdir)} has no {val_key} to "
                                f"choose on; the run needs validation_size > 0"
                                f"{' and tta_samples > 0' if tta else ''} and a finished test evaluation")
        for key, first in (("val_labels", views[0]), ("labels", views[0])):
            if not np.array_equal(predictions[key], first.predictions[key]):
                raise AnalysisError(f"{view.workdir} and {first.workdir} hold other {key}; "
                                    f"select from runs of the same dataset and validation split")
        members += [(str(view.workdir), i) for i in range(len(predictions[val_key]))]
        val.append(predictions[val_key])
        test.append(predictions[test_key])
    val_probs, test_probs = np.concatenate(val), np.concatenate(test)
    val_labels, test_labels = views[0].predictions["val_labels"], views[0].predictions["labels"]
    try:
        picked = getattr(selection, method)(val_probs, val_labels, size)
    except ValueError as e:
        raise AnalysisError(str(e)) from None
    counts = np.bincount(picked, minlength=len(members))
    chosen = np.flatnonzero(counts)
    weights = counts[chosen] / counts.sum()
    def mean(probs: np.ndarray) -> np.ndarray:
        return np.tensordot(weights, probs[chosen], axes=1)
    val_mean = mean(val_probs)
    test_mean = mean(test_probs)  # read here, once, after the choice
    return {
        "method": method,
        "size": size,
        "tta": tta,
        "runs": [str(view.workdir) for view in views],
        "candidates": len(members),
        "chosen": [{"run": members[i][0], "member": members[i][1], "weight": int(counts[i])}
                   for i in chosen],
        "val_accuracy": float((val_mean.argmax(-1) == val_labels).mean()),
        "val_nll": float(metrics.nll(val_mean, val_labels)),
        "test_accuracy": float((test_mean.argmax(-1) == test_labels).mean()),
        "test_errors": int((test_mean.argmax(-1) != test_labels).sum()),
        "test_nll": float(metrics.nll(test_mean, test_labels)),
    }

"""The pictures of a run, each written atomically to a PNG whose path is returned.

Figures are built with `matplotlib.figure.Figure` and rendered by the Agg canvas, never through
pyplot: that works headless, leaves the global backend of a notebook alone and keeps no figure
alive after the call.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from mnist_jax.atomic import write_bytes

PathLike = str | os.PathLike
DPI = 100


def _save(fig: Figure, path: PathLike) -> str:
    """Renders to memory, then writes beside `path` and renames, so a crash never leaves half a
    PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes(Path(path), buffer.getvalue())
    return os.fspath(path)


def _message(path: PathLike, text: str) -> str:
    """A small figure that only says `text`, for plots with nothing to show."""
    fig = Figure(figsize=(4.5, 1.2))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=11)
    return _save(fig, path)


def _check_class_names(class_names: Sequence[str], num_classes: int, where: str) -> None:
    if len(class_names) != num_classes:
        raise ValueError(f"{where} has {num_classes} classes but {len(class_names)} class_names "
                         f"were given; pass one name per class")


def misclassified(path: PathLike, images: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                  class_names: Sequence[str], max_images: int = 400) -> str:
    """A grid of every example whose argmax prediction is wrong, titled "true → pred (conf%)".

    The most confident mistakes come first; past `max_images` the rest are left out and the
    header says so. Images are uint8 [N, H, W, 1] (or [N, H, W]) drawn white on black as in
    MNIST; the grid is one mosaic image, not one axes per cell, so hundreds of cells stay cheap.
    """
    images, labels, probs = np.asarray(images), np.asarray(labels), np.asarray(probs)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, 1]; got {images.dtype} of shape "
                         f"{images.shape} (pass the raw dataset images, not normalised floats)")
    if probs.ndim != 2 or not len(images) == len(labels) == len(probs):
        raise ValueError(f"images, labels and probs [N, C] must share N; got shapes "
                         f"{images.shape}, {labels.shape} and {probs.shape}")
    _check_class_names(class_names, probs.shape[1], "probs")
    if max_images < 1:
        raise ValueError(f"max_images must be at least 1; got {max_images}")
    in_range = ((labels >= 0) & (labels < probs.shape[1])).all()
    if not np.issubdtype(labels.dtype, np.integer) or not in_range:
        raise ValueError(f"labels must be integer class ids in [0, {probs.shape[1]}); got dtype "
                         f"{labels.dtype}{'' if in_range else ' with values out of range'}")
    pred, conf = probs.argmax(-1), probs.max(-1)
    wrong = np.flatnonzero(pred != labels)
    if not len(wrong):
        return _message(path, f"No misclassified examples (0 of {len(labels)})")
    shown = wrong[np.argsort(-conf[wrong], kind="stable")][:max_images]

    n, (h, w) = len(shown), images.shape[1:]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    top, gap = max(h // 3, 8), max(w // 14, 2)  # Pixels: title strip above, space between.
    cell_h, cell_w = h + top, w + gap
    mosaic = np.full((rows * cell_h, cols * cell_w), 255, np.uint8)
    for i, k in enumerate(shown):
        r, c = divmod(i, cols)
        mosaic[r * cell_h + top:(r + 1) * cell_h, c * cell_w:c * cell_w + w] = images[k]

    cell_in, header_in = 1.2, 0.5
    inch_per_px = cell_in / cell_w
    width_in = max(cols * cell_in, 4.5)
    height_in = rows * cell_h * inch_per_px + header_in
    fig = Figure(figsize=(width_in, height_in))
    ax = fig.add_axes((0, 0, 1, 1 - header_in / height_in))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    titles = [f"{class_names[labels[k]]} → {class_names[pred[k]]} ({conf[k]:.0%})" for k in shown]
    fontsize = min(8.0, cell_in * 72 / (0.6 * max(map(len, titles))))
    for i, title in enumerate(titles):
        r, c = divmod(i, cols)
        ax.text(c * cell_w + w / 2, r * cell_h + top - 1, title, ha="center", va="bottom",
                fontsize=fontsize, color="firebrick")
    total = f"{len(wrong)} of {len(labels)} examples misclassified"
    header = (f"{total}, most confident first" if n == len(wrong)
              else f"{total}; showing the {n} most confident")
    fig.suptitle(header, y=1 - 0.1 * header_in / height_in, va="top", fontsize=11)
    return _save(fig, path)


def confusion(path: PathLike, cm: np.ndarray, class_names: Sequence[str]) -> str:
    """The confusion matrix (rows true, columns predicted) on a log colour scale, so the few
    errors stay visible next to the full diagonal; counts are written in when C <= 20."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be a square [C, C] count matrix; got shape {cm.shape} "
                         f"(use metrics.confusion_matrix)")
    _check_class_names(class_names, cm.shape[0], "cm")
    c = cm.shape[0]
    side = min(max(4.5, 0.45 * c + 2), 16)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot()
    norm = LogNorm(vmin=1, vmax=max(int(cm.max()), 2))
    image = ax.imshow(np.ma.masked_less(cm, 1), cmap="Blues", norm=norm)
    fig.colorbar(image, ax=ax, shrink=0.8, label="count")
    if c <= 20:
        for (i, j), count in np.ndenumerate(cm):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if norm(count) > 0.6 else "black")
    long_names = max(map(len, class_names)) > 2
    ax.set_xticks(range(c), class_names, rotation=45 if long_names else 0,
                  ha="right" if long_names else "center", fontsize=8)
    ax.set_yticks(range(c), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(cm.sum())
    ax.set_title(f"confusion: {total - int(np.trace(cm))} errors of {total}")
    fig.tight_layout()
    return _save(fig, path)


def _per_member(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(epochs [E], values [E, M]) of the records holding `key`, or None if none do."""
    rows = [(r["epoch"], np.atleast_1d(np.asarray(r[key], float))) for r in records if key in r]
    if not rows:
        return None
    if len({len(v) for _, v in rows}) > 1:
        raise ValueError(f"records disagree on the number of members in {key!r}; was "
                         f"metrics.jsonl written by runs with different num_members?")
    return np.array([e for e, _ in rows]), np.stack([v for _, v in rows])


def curves(path: PathLike, records: list[dict[str, Any]],
           member_names: Sequence[str] | None = None) -> str:
    """Per-member train (solid) and validation (dashed) loss and accuracy by epoch, the
    validation ensemble in black when logged, and the learning rate.

    `records` are metrics.jsonl lines; lines without an 'epoch' (if any) are skipped.
    `member_names` (e.g. each member's model) name the member colours in the legend.
    """
    records = [r for r in records if "epoch" in r]
    if not records:
        return _message(path, "No epoch records yet (metrics.jsonl is empty)")
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    legend = {}
    for ax, metric, ensemble_key in ((axes[0], "loss", "val_ensemble_nll"),
                                     (axes[1], "accuracy", "val_ensemble_accuracy")):
        for split, style in (("train", "-"), ("val", "--")):
            series = _per_member(records, f"{split}_{metric}")
            if series is not None:
                epochs, values = series
                for m in range(values.shape[1]):
                    ax.plot(epochs, values[:, m], style, marker=".", color=f"C{m % 10}", lw=1)
                legend[split] = Line2D([], [], color="gray", ls=style, label=split)
        ensemble = _per_member(records, ensemble_key)
        if ensemble is not None:
            ax.plot(ensemble[0], ensemble[1][:, 0], "-", marker=".", color="black", lw=2)
            legend["ensemble"] = Line2D([], [], color="black", lw=2, label="val ensemble")
        if metric == "loss" and ax.lines and all(l.get_ydata().min() > 0 for l in ax.lines):
            ax.set_yscale("log")
    if member_names is not None:
        legend.update({f"m{m}": Line2D([], [], color=f"C{m % 10}", label=f"{m}: {name}")
                       for m, name in enumerate(member_names)})
    if legend:
        axes[0].legend(handles=list(legend.values()), fontsize=8, title="colour = member",
                       title_fontsize=8)
    lr = _per_member(records, "learning_rate")
    if lr is not None:
        axes[2].plot(lr[0], lr[1][:, 0], marker=".", color="black")
    first, last = min(r["epoch"] for r in records), max(r["epoch"] for r in records)
    for ax, title in zip(axes, ("loss", "accuracy", "learning rate")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_xlim(first - 0.5, last + 0.5)  # Also frames a single epoch sensibly.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def ensemble_size(path: PathLike, curve: np.ndarray, member_names: Sequence[str] | None = None
                  ) -> str:
    """Accuracy of the ensemble of the first k members against k (metrics.ensemble_size_curve);
    `member_names` label each k with the member it adds."""
    curve = np.asarray(curve, float)
    if curve.ndim != 1 or not len(curve):
        raise ValueError(f"curve must be a non-empty [M] array of accuracies; got shape "
                         f"{curve.shape} (use metrics.ensemble_size_curve)")
    sizes = np.arange(1, len(curve) + 1)
    fig = Figure(figsize=(4.5, 3.2))
    ax = fig.add_subplot()
    ax.plot(sizes, 100 * curve, "o-", color="C0")
    for k in {0, len(curve) - 1}:
        ax.annotate(f"{100 * curve[k]:.2f}%", (sizes[k], 100 * curve[k]), xytext=(0, 6),
                    textcoords="offset points", ha="center", fontsize=8)
    ax.set_xlabel("ensemble size (first k members)")
    ax.set_ylabel("accuracy (%)")
    if member_names is not None:
        ax.set_xticks(sizes, [f"{k} {name}" for k, name in zip(sizes, member_names)],
                      rotation=90, fontsize=7)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.margins(x=0.1, y=0.2)
    ax.grid(alpha=0.3)
    ax.set_title("accuracy vs ensemble size")
    fig.tight_layout()
    return _save(fig, path)


def reliability(path: PathLike, rel_dict: dict[str, np.ndarray]) -> str:
    """Reliability diagram from metrics.reliability: accuracy per confidence bin against the
    diagonal of perfect calibration (gaps in red), with the bin counts below."""
    missing = {"edges", "accuracy", "confidence", "counts"} - set(rel_dict)
    if missing:
        raise ValueError(f"rel_dict lacks {sorted(missing)}; pass the dict metrics.reliability "
                         f"returns")
    edges = np.asarray(rel_dict["edges"], float)
    counts = np.asarray(rel_dict["counts"], float)
    filled = counts > 0
    acc = np.where(filled, np.asarray(rel_dict["accuracy"], float), 0.0)
    conf = np.where(filled, np.asarray(rel_dict["confidence"], float), 0.0)
    widths = np.diff(edges)
    ece = np.abs(acc - conf)[filled] @ counts[filled] / max(counts.sum(), 1)

    fig = Figure(figsize=(4.5, 5))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.bar(edges[:-1], acc, widths, align="edge", color="C0", edgecolor="white", label="accuracy")
    top.bar(edges[:-1][filled], (conf - acc)[filled], widths[filled], bottom=acc[filled],
            align="edge", color="red", alpha=0.3, label="gap to confidence")
    top.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(fontsize=8, loc="upper left")
    top.set_title(f"reliability (ECE {100 * ece:.2f}%)")
    bottom.bar(edges[:-1], counts, widths, align="edge", color="gray", edgecolor="white")
    if filled.any():
        bottom.set_yscale("log")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel("count")
    fig.tight_layout()
    return _save(fig, path)


def sweep(path: PathLike, rows: Sequence[dict[str, Any]]) -> str:
    """Validation accuracy of each member against each swept field, one panel per field
    (`analysis.sweep_table`'s rows: 'member', 'val_accuracy' and one key per swept field)."""
    fields = [k for k in (rows[0] if rows else {}) if k not in ("member", "val_accuracy", "test_accuracy")]
    if not fields:
        return _message(path, "no swept fields")
    fig = Figure(figsize=(3.2 * len(fields), 3.0))
    for i, field in enumerate(fields):
        ax = fig.add_subplot(1, len(fields), i + 1, sharey=fig.axes[0] if i else None)
        ax.scatter([r[field] for r in rows], [100 * r["val_accuracy"] for r in rows], color="C0")
        if all(r[field] > 0 for r in rows) and max(r[field] for r in rows) > 4 * min(r[field] for r in rows):
            ax.set_xscale("log")
        ax.set_xlabel(field)
        ax.grid(alpha=0.3)
    fig.axes[0].set_ylabel("validation accuracy (%)")
    fig.suptitle("members of the sweep on validation", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def shift(path: PathLike, shifts: dict[str, list[dict[str, Any]]], units: dict[str, str]) -> str:
    """Accuracy, ECE and Brier score against each shift's level, one row per kind
    (uncertainty.json's 'shift' and 'units'): the ensemble in black, its members thin in colour,
    the temperature-scaled ensemble dashed when the entries have it. How fast each falls is what
    the shifts are for; non-numeric levels (corruption names) are spaced evenly."""
    if not shifts:
        return _message(path, "no shifted test sets")
    for kind, entries in shifts.items():
        if not entries or not {"level", "ensemble", "members"} <= set(entries[0]):
            raise ValueError(f"shift {kind!r} needs entries with level, ensemble and members; pass "
                             f"uncertainty.json's 'shift' (analysis.RunView.shift)")
    fig = Figure(figsize=(12, 3.3 * len(shifts)))
    axes = fig.subplots(len(shifts), 3, squeeze=False)
    for row, (kind, entries) in zip(axes, shifts.items()):
        levels = [e["level"] for e in entries]
        numeric = all(isinstance(level, (int, float)) for level in levels)
        x = levels if numeric else list(range(len(levels)))
        for ax, metric, title in zip(row, ("accuracy", "ece", "brier"), ("accuracy", "ECE", "Brier score")):
            for m in range(len(entries[0]["members"])):
                ax.plot(x, [e["members"][m][metric] for e in entries], color=f"C{m % 10}", lw=0.8,
                        alpha=0.7)
            ax.plot(x, [e["ensemble"][metric] for e in entries], "o-", color="black", lw=2, ms=3)
            if "ensemble_scaled" in entries[0]:
                ax.plot(x, [e["ensemble_scaled"][metric] for e in entries], "--", color="black", lw=1)
            if not numeric:
                ax.set_xticks(x, levels, rotation=40, ha="right", fontsize=7)
            ax.set_xlabel(f"{kind} ({units.get(kind, 'level')})")
            ax.set_title(title)
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color="black", lw=2, marker="o", ms=3, label="ensemble"),
               Line2D([], [], color="gray", lw=0.8, label="members")]
    if any("ensemble_scaled" in entries[0] for entries in shifts.values()):
        handles.append(Line2D([], [], color="black", lw=1, ls="--", label="ensemble, temperature-scaled"))
    axes[0][0].legend(handles=handles, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def entropy_histograms(path: PathLike, histogram: dict[str, Any]) -> str:
    """The share of examples at each predictive entropy on the test split (black) and on each
    out-of-distribution set (uncertainty.json's 'entropy_histogram': 'edges' and 'counts' by
    set): an ensemble that knows what it does not know is sure in distribution, unsure out."""
    if not {"edges", "counts"} <= set(histogram):
        raise ValueError("histogram needs 'edges' and 'counts'; pass uncertainty.json's "
                         "'entropy_histogram'")
    edges = np.asarray(histogram["edges"], float)
    fig = Figure(figsize=(6, 3.8))
    ax = fig.add_subplot()
    for i, (name, counts) in enumerate(histogram["counts"].items()):
        counts = np.asarray(counts, float)
        if len(counts) != len(edges) - 1:
            raise ValueError(f"{name}: {len(counts)} counts for {len(edges) - 1} bins")
        test = name == "test"
        ax.stairs(counts / max(counts.sum(), 1), edges, color="black" if test else f"C{i % 10}",
                  lw=2 if test else 1.5, label="test (in distribution)" if test else name)
    ax.set_yscale("log")
    ax.set_xlabel("predictive entropy (nats)")
    ax.set_ylabel("share of examples")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("entropy in and out of distribution")
    fig.tight_layout()
    return _save(fig, path)


def selective(path: PathLike, curve: dict[str, Any]) -> str:
    """Accuracy on the most confident examples against the share kept (coverage), from
    uncertainty.json's 'selective' ('coverage', 'accuracy', 'area'): how much abstaining on the
    least sure examples buys."""
    if not {"coverage", "accuracy", "area"} <= set(curve):
        raise ValueError("curve needs 'coverage', 'accuracy' and 'area'; pass uncertainty.json's "
                         "'selective' (metrics.selective_prediction)")
    fig = Figure(figsize=(4.5, 3.4))
    ax = fig.add_subplot()
    ax.plot(100 * np.asarray(curve["coverage"]), 100 * np.asarray(curve["accuracy"]), color="C0")
    ax.set_xlabel("coverage (% of test examples kept, most confident first)")
    ax.set_ylabel("accuracy (%)")
    ax.set_xlim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"accuracy vs coverage (area {curve['area']:.4f})")
    fig.tight_layout()
    return _save(fig, path)

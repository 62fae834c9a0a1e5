"""Figures for evaluation and training reports.

Each figure has two entry points: ``<name>_figure(...)`` returns a matplotlib ``Figure`` (for
TensorBoard's ``add_figure`` or further editing) and ``plot_<name>(path, ...)`` saves it as a PNG and
returns the path. Figures are built with the object API (no pyplot), so no window or global figure
state is involved and nothing needs closing.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from classifier.fileio import make_output_dir, writing

DPI = 150
WRONG = "#d62728"
COLORS = {"precision": "#4c72b0", "recall": "#55a868", "f1": "#c44e52", "train": "#1f77b4", "val": "#ff7f0e"}
MAX_NAME = 24  # longer class names are shortened in tick labels


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write a figure as PNG (white background, tight bounding box) and return its path."""
    path = Path(path)
    make_output_dir(path.parent, "figure folder")
    with writing(path, "figure"):
        fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    return path


def short_name(name: str, width: int = MAX_NAME) -> str:
    """Shorten a class name for a tick label (full names are in the report's tables)."""
    name = str(name)
    return name if len(name) <= width else name[: width - 1].rstrip() + "…"


def _percent(v: float) -> str:
    return "<1%" if 0 < v < 0.01 else f"{v:.0%}"


# --- confusion matrix -------------------------------------------------------------------------------

def confusion_matrix_figure(cm, classes, normalize: bool = False) -> Figure:
    """Heatmap, rows = true class, columns = predicted. normalize: each row divided by its total."""
    cm = np.asarray(cm, dtype=np.float64)
    n = len(classes)
    totals = cm.sum(axis=1)
    if normalize:
        values = np.divide(cm, totals[:, None], out=np.full_like(cm, np.nan), where=totals[:, None] > 0)
        ylabels = [f"{short_name(c)} (n={int(t)})" for c, t in zip(classes, totals)]
    else:
        values, ylabels = cm, [short_name(c) for c in classes]
    side = min(max(4.5, 0.45 * n + 2.0), 22)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(cm.max(), 1)
    cmap = _blues_with_gray_nan()
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of true class" if normalize else "samples",
                 format=PercentFormatter(xmax=1) if normalize else None)
    if n <= 40:
        size = max(5.0, min(10.0, 160 / n))
        for i, j in zip(*np.nonzero(np.nan_to_num(values))):
            v = values[i, j]
            text = _percent(v) if normalize else f"{int(v)}"
            color = "white" if v > 0.55 * vmax else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=size, color=color,
                    fontweight="bold" if i == j else "normal")
    ax.set_xticks(range(n), [short_name(c) for c in classes], rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), ylabels)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    accuracy = np.trace(cm) / cm.sum() if cm.sum() else 0.0
    kind = "row-normalised" if normalize else "counts"
    ax.set_title(f"Confusion matrix ({kind})\naccuracy {accuracy:.2%} on {int(cm.sum())} samples")
    return fig


def _blues_with_gray_nan():
    return matplotlib.colormaps["Blues"].with_extremes(bad="#eeeeee")  # gray rows: classes without samples


def plot_confusion_matrix(path, cm, classes, normalize: bool = False) -> Path:
    return save_figure(confusion_matrix_figure(cm, classes, normalize), path)


# --- per-class bars ---------------------------------------------------------------------------------

def _class_rows_figure(n: int, width: float = 9.0) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, min(max(3.0, 0.42 * n + 1.5), 40)), layout="constrained")
    return fig, fig.add_subplot()


def per_class_metrics_figure(per_class: dict) -> Figure:
    """Grouped horizontal bars of precision, recall and F1 per class (``per_class`` from compute_metrics).

    Undefined values (None) are drawn as "n/a" instead of a bar.
    """
    names = list(per_class)
    n = len(names)
    fig, ax = _class_rows_figure(n)
    height = 0.26
    y = np.arange(n)
    for k, (key, label) in enumerate((("precision", "Precision"), ("recall", "Recall"), ("f1", "F1"))):
        offset = (k - 1) * height
        values = [per_class[c][key] for c in names]
        ax.barh(y + offset, [v or 0 for v in values], height, color=COLORS[key], label=label)
        for yi, v in zip(y + offset, values):
            label = "n/a" if v is None else f"{v:.2f}"
            ax.text((v or 0) + 0.01, yi, label, va="center", fontsize=7, color="#555555" if v is None else "black")
    f1s = [per_class[c]["f1"] for c in names if per_class[c]["f1"] is not None]
    if f1s:
        ax.axvline(np.mean(f1s), color=COLORS["f1"], linestyle="--", linewidth=1, label=f"macro F1 {np.mean(f1s):.3f}")
    ax.set_yticks(y, [f"{short_name(c)} (n={per_class[c]['support']})" for c in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("score")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    fig.suptitle("Precision, recall and F1 per class (n = samples)")
    return fig


def plot_per_class_metrics(path, per_class: dict) -> Path:
    return save_figure(per_class_metrics_figure(per_class), path)


def misclassifications_figure(cm, classes) -> Figure:
    """Per class: samples of it predicted as another class (missed) and samples wrongly given its name.

    Classes are sorted by missed count, most first.
    """
    cm = np.asarray(cm)
    diag = np.diag(cm)
    missed = cm.sum(axis=1) - diag
    false_alarms = cm.sum(axis=0) - diag
    support = cm.sum(axis=1)
    order = sorted(range(len(classes)), key=lambda i: (-missed[i], -false_alarms[i], i))
    fig, ax = _class_rows_figure(len(classes))
    y = np.arange(len(order))
    h = 0.38
    ax.barh(y - h / 2, missed[order], h, color=WRONG, label="missed: true class, predicted as another")
    ax.barh(y + h / 2, false_alarms[order], h, color="#9467bd", label="false alarms: other class predicted as it")
    top = max(int(missed.max(initial=0)), int(false_alarms.max(initial=0)), 1)
    for yi, i in zip(y, order):
        rate = f" ({missed[i] / support[i]:.0%} of {support[i]})" if support[i] else ""
        ax.text(missed[i] + top * 0.01, yi - h / 2, f"{missed[i]}{rate}", va="center", fontsize=7)
        ax.text(false_alarms[i] + top * 0.01, yi + h / 2, f"{false_alarms[i]}", va="center", fontsize=7)
    ax.set_yticks(y, [short_name(classes[i]) for i in order])
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.25)
    ax.set_xlabel("samples")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    fig.suptitle(f"Misclassifications per class — {int(missed.sum())} wrong of {int(cm.sum())}")
    return fig


def plot_misclassifications(path, cm, classes) -> Path:
    return save_figure(misclassifications_figure(cm, classes), path)


# --- calibration ------------------------------------------------------------------------------------

def reliability_figure(calibration: dict) -> Figure:
    """Reliability diagram from ``compute_metrics(...)["calibration"]`` (or ``metrics.calibration_bins``).

    Top: accuracy per confidence bin against the diagonal, with the gap to the bin's mean confidence.
    Bottom: how many samples fall in each bin.
    """
    edges = np.asarray(calibration["edges"])
    counts = np.asarray(calibration["counts"])
    filled = counts > 0
    acc = np.array([a if a is not None else 0.0 for a in calibration["accuracy"]])
    conf = np.array([c if c is not None else 0.0 for c in calibration["confidence"]])
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig = Figure(figsize=(6.5, 7.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    top.bar(centers[filled], acc[filled], width[filled], color=COLORS["precision"], edgecolor="white", label="accuracy")
    gap_low = np.minimum(acc, conf)[filled]
    # Unfilled and hatched, so the gap stays readable where it lies over an accuracy bar (underconfidence).
    top.bar(centers[filled], np.abs(conf - acc)[filled], width[filled], bottom=gap_low, facecolor=(1, 0.6, 0.6, 0.25),
            edgecolor=WRONG, hatch="///", linewidth=1, label="gap to mean confidence")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy in bin")
    top.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    top.set_title(f"Reliability diagram — ECE {calibration['ece']:.2%}\n"
                  f"{int(counts.sum())} samples, {len(counts)} bins; bars below the diagonal: overconfident",
                  fontsize=10)
    total = counts.sum()
    bottom.bar(centers, counts, width, color="#7f7f7f", edgecolor="white")
    if total:
        mean_conf = float((conf * counts).sum() / total)
        accuracy = float((acc * counts).sum() / total)
        bottom.axvline(accuracy, color=COLORS["precision"], linestyle="-", label=f"accuracy {accuracy:.1%}")
        bottom.axvline(mean_conf, color=WRONG, linestyle="--", label=f"mean confidence {mean_conf:.1%}")
        bottom.legend(loc="best", fontsize=8)
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("samples")
    bottom.xaxis.set_major_formatter(PercentFormatter(xmax=1))
    return fig


def plot_reliability(path, calibration: dict) -> Path:
    return save_figure(reliability_figure(calibration), path)


# --- image grids ------------------------------------------------------------------------------------

def _as_images(images) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, C) with C 1 or 3 -> (N, H, W) gray or (N, H, W, 3)."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise ValueError(f"images must be (N, H, W, C) with C 1 or 3, got shape {images.shape}")
    return images


def _show(ax, image) -> None:
    small = image.shape[0] <= 64
    if image.ndim == 2:
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest" if small else "antialiased")
    else:
        ax.imshow(image, interpolation="nearest" if small else "antialiased")
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(rows: int, cols: int, tile: float = 1.35, label_width: float = 1.8, title_space: float = 0.35):
    fig = Figure(figsize=(label_width + cols * tile, rows * (tile + title_space) + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig, axes


def _row_label(ax, name: str, note: str, color: str = "black") -> None:
    """Class name (shortened) and a note under it, left of the row's first tile."""
    ax.set_axis_on()
    ax.set_ylabel(f"{short_name(name)}\n{note}", rotation=0, ha="right", va="center", fontsize=10, color=color,
                  labelpad=8)


def _pick(idx: np.ndarray, wrong: np.ndarray, n: int) -> list[int]:
    """Up to n indices, about half of them wrong predictions when there are any, in original order."""
    bad = [int(i) for i in idx if wrong[i]]
    good = [int(i) for i in idx if not wrong[i]]
    take_bad = bad[: max(n - len(good), math.ceil(n / 2))]
    chosen = take_bad + good[: n - len(take_bad)]
    return sorted(chosen)


def predictions_grid_figure(images, y_pred, confidences, classes, y_true=None, per_class: int = 6,
                            max_rows: int = 20) -> Figure:
    """One row per predicted class (classes never predicted are left out), up to per_class images each.

    With true labels, wrong predictions get a red outline and their true label in red; about half a
    row is given to wrong predictions when there are any. Without (unlabelled images) tiles show the
    confidence only. With more than max_rows predicted classes, those with the most wrong predictions
    (then the most predictions) are shown.
    """
    images = _as_images(images)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    confidences = np.asarray(confidences, dtype=np.float64)
    wrong = np.zeros(len(y_pred), bool) if y_true is None else np.asarray(y_true) != y_pred
    predicted = [c for c in range(len(classes)) if np.any(y_pred == c)]
    if not predicted:
        raise ValueError("no predictions to show")
    busiest = sorted(predicted, key=lambda c: (-np.sum(wrong & (y_pred == c)), -np.sum(y_pred == c), c))
    shown = sorted(busiest[:max_rows])
    fig, axes = _grid(len(shown), per_class)
    for r, c in enumerate(shown):
        picks = _pick(np.flatnonzero(y_pred == c), wrong, per_class)
        for k, i in enumerate(picks):
            ax = axes[r, k]
            ax.set_axis_on()
            _show(ax, images[i])
            if wrong[i]:
                ax.set_title(f"true: {short_name(classes[y_true[i]], 16)}\n{confidences[i]:.0%}", fontsize=7,
                             color=WRONG)
                for spine in ax.spines.values():
                    spine.set_color(WRONG)
                    spine.set_linewidth(3)
            else:
                ax.set_title(f"{confidences[i]:.0%}", fontsize=7)
                for spine in ax.spines.values():
                    spine.set_visible(False)
        _row_label(axes[r, 0], classes[c], f"{int(np.sum(y_pred == c))} predicted")
    how = "red outline: wrong, true label in red" if y_true is not None else "unlabelled images"
    subset = ""
    if len(shown) < len(predicted):
        subset = f"\n{len(shown)} of {len(predicted)} predicted classes: those with the most errors"
    fig.suptitle(f"Sample predictions by predicted class (confidence above each; {how}){subset}", fontsize=11)
    return fig


def plot_predictions_grid(path, images, y_pred, confidences, classes, y_true=None, per_class: int = 6,
                          max_rows: int = 20) -> Path:
    fig = predictions_grid_figure(images, y_pred, confidences, classes, y_true, per_class, max_rows)
    return save_figure(fig, path)


def dataset_grid_figure(images, labels, classes, per_class: int = 8, max_rows: int = 30) -> Figure:
    """One row per class (the first max_rows classes) with its first per_class images; the name starts the row."""
    images = _as_images(images)
    labels = np.asarray(labels, dtype=np.int64)
    rows = min(len(classes), max_rows)
    fig, axes = _grid(rows, per_class, title_space=0.1)
    for c, name in enumerate(classes[:rows]):
        idx = np.flatnonzero(labels == c)
        for k, i in enumerate(idx[:per_class]):
            axes[c, k].set_axis_on()
            _show(axes[c, k], images[i])
            for spine in axes[c, k].spines.values():
                spine.set_visible(False)
        _row_label(axes[c, 0], name, f"{len(idx)} samples", color="black" if len(idx) else "gray")
        if not len(idx):
            ax = axes[c, 0]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.text(0.05, 0.5, "no samples", transform=ax.transAxes, va="center", color="gray", style="italic")
    subset = f" (first {rows} of {len(classes)} classes)" if rows < len(classes) else ""
    fig.suptitle(f"Dataset samples — up to {per_class} per class, {len(labels)} in total{subset}", fontsize=11)
    return fig


def plot_dataset_grid(path, images, labels, classes, per_class: int = 8, max_rows: int = 30) -> Path:
    return save_figure(dataset_grid_figure(images, labels, classes, per_class, max_rows), path)


# --- training history -------------------------------------------------------------------------------

def _series(history, key):
    points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def learning_curves_figure(history: list[dict]) -> Figure:
    """Loss and accuracy per epoch (train and val), plus the learning rate when the rows have one.

    Rows have keys epoch, train_loss, val_loss, train_acc, val_acc, lr; missing or None values are
    skipped. Accuracies in 0..1 are shown as percentages. The epoch with the lowest val_loss is marked.
    """
    has_lr = any(row.get("lr") is not None for row in history)
    fig = Figure(figsize=(15 if has_lr else 11, 4.2), layout="constrained")
    axes = fig.subplots(1, 3 if has_lr else 2, gridspec_kw={"width_ratios": [1, 1, 0.7] if has_lr else [1, 1]})
    marker = "o" if len(history) <= 30 else None
    best = _series(history, "val_loss")
    best_epoch = best[0][int(np.argmin(best[1]))] if best[1] else None
    for ax, metric, title in ((axes[0], "loss", "Loss"), (axes[1], "acc", "Accuracy")):
        for split in ("train", "val"):
            x, y = _series(history, f"{split}_{metric}")
            if x:
                ax.plot(x, y, marker=marker, markersize=3, color=COLORS[split], label=split)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="gray", linestyle=":", label=f"best val loss (epoch {best_epoch})")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    accs = [v for k in ("train_acc", "val_acc") for v in _series(history, k)[1]]
    if accs and max(accs) <= 1.0:
        axes[1].yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    if best_epoch is not None:
        x, y = best
        axes[0].annotate(f"{min(y):.4g}", (best_epoch, min(y)), textcoords="offset points", xytext=(4, 6),
                         fontsize=8, color=COLORS["val"])
        vx, vy = _series(history, "val_acc")
        if best_epoch in vx:
            v = vy[vx.index(best_epoch)]
            axes[1].annotate(f"{v:.2%}" if v <= 1 else f"{v:.2f}", (best_epoch, v), textcoords="offset points",
                             xytext=(4, -12), fontsize=8, color=COLORS["val"])
    if has_lr:
        x, y = _series(history, "lr")
        axes[2].plot(x, y, color="#2ca02c", marker=marker, markersize=3)
        positive = [v for v in y if v > 0]
        if positive and max(positive) / min(positive) > 20:
            axes[2].set_yscale("log")
        axes[2].set_title("Learning rate")
        axes[2].set_xlabel("epoch")
        axes[2].grid(alpha=0.3)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def plot_learning_curves(path, history: list[dict]) -> Path:
    return save_figure(learning_curves_figure(history), path)


def lr_finder_figure(result) -> Figure:
    """Loss against learning rate (log scale) of a range test (``engine.lr_finder.LRFinderResult``): each
    step's loss faint, the smoothed loss bold, every rule's pick marked and the chosen one labelled."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    finite = [(lr, raw, s) for lr, raw, s in zip(result.lrs, result.losses, result.smoothed)
              if math.isfinite(raw) and math.isfinite(s)]
    lrs, raw, smoothed = (list(v) for v in zip(*finite)) if finite else ([], [], [])
    ax.plot(lrs, raw, color=COLORS["train"], alpha=0.3, linewidth=1, label="loss per step")
    ax.plot(lrs, smoothed, color=COLORS["train"], linewidth=2, label="smoothed loss")
    if smoothed:  # the diverging end would flatten everything else
        low, high = min(min(raw), min(smoothed)), smoothed[0]
        ax.set_ylim(low - 0.05 * (high - low), max(smoothed[:max(1, len(smoothed) - 1)]) + 0.1 * (high - low))
    for name, lr in result.suggestions.items():
        chosen = name == result.rule
        ax.axvline(lr, color=WRONG if chosen else "gray", linestyle="-" if chosen else ":",
                   linewidth=1.5 if chosen else 1, label=f"{name}: {lr:.2g}" + (" (suggested)" if chosen else ""))
    if result.divergence_lr:
        ax.axvline(result.divergence_lr, color="black", linestyle="--", linewidth=1,
                   label=f"diverged at {result.divergence_lr:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (head)")
    ax.set_ylabel("training loss")
    ax.set_title(f"Learning-rate range test: suggested lr {result.suggestion:.3g} ({result.rule})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def plot_lr_finder(path, result) -> Path:
    return save_figure(lr_finder_figure(result), path)


def plot_ood_histograms(path, known, unknown, threshold: float, score: str) -> Path:
    """Histograms of the "unknown" score on known-class and unknown images, the rejection threshold marked."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    both = np.concatenate([known, unknown])
    bins = np.linspace(both.min(), both.max(), 41) if both.size and both.max() > both.min() else 20
    ax.hist(known, bins=bins, alpha=0.6, density=True, label=f"known classes ({len(known)})")
    ax.hist(unknown, bins=bins, alpha=0.6, density=True, label=f"unknown folder ({len(unknown)})")
    ax.axvline(threshold, color="black", linestyle="--", label="reject below")
    ax.set_xlabel(f"{score} score (higher: more like the known classes)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)

"""The multi-label evaluation report: report.md sections, figures and metrics.json for ``task: multilabel``.

Layout (as the single-label report's): ``report.md``, ``metrics.json`` (classifier.tasks.multilabel_metrics),
``predictions.csv`` (true and predicted label sets, space-separated), and ``figures/``: per-class average
precision, precision-recall curves, the label co-occurrence matrix, the worst examples (predicted vs true
label sets) and learning curves.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from classifier.fileio import atomic_write_text, make_output_dir
from classifier.report import plots
from classifier.report.writer import _num, _pct, _table, write_metrics_json, write_predictions_csv

WORST_SHOWN = 12


def _summary_section(m: dict) -> list[str]:
    rows = [["samples", m["n_samples"]], ["classes", m["num_classes"]],
            ["mAP (macro average precision)", _num(m["mAP"])],
            ["macro F1 / micro F1", f"{_num(m['macro_f1'])} / {_num(m['micro_f1'])}"],
            ["CP / CR / CF1 (per class, averaged)", " / ".join(_num(m[k]) for k in ("CP", "CR", "CF1"))],
            ["OP / OR / OF1 (over all labels)", " / ".join(_num(m[k]) for k in ("OP", "OR", "OF1"))],
            ["subset accuracy (whole label set right)", _pct(m["subset_accuracy"])],
            ["Hamming loss (wrong labels / all labels)", _num(m["hamming_loss"], 4)]]
    if m.get("no_samples"):
        rows.append(["no positives (AP, recall undefined)", ", ".join(m["no_samples"])])
    return ["## Summary", "", *_table(["metric", "value"], rows, "lr"), "",
            "Precision, recall and F1 are at the decision thresholds below (fitted on the validation split, or "
            "`--threshold`); AP does not depend on them.", ""]


def _per_class_section(m: dict) -> list[str]:
    rows = [[name, c["support"], c["predicted"], _num(c["threshold"]), _num(c["ap"]), _num(c["precision"]),
             _num(c["recall"]), _num(c["f1"])] for name, c in m["per_class"].items()]
    header = ["class", "positives", "predicted", "threshold", "AP", "precision", "recall", "F1"]
    return ["## Per-class results", "", *_table(header, rows, "lrrrrrrr"), "",
            "— = undefined (0/0); left out of the macro averages.", ""]


def _figures_section(figures: dict[str, Path], out_dir: Path) -> list[str]:
    titles = {"per_class_ap": "Average precision per class", "pr_curves": "Precision-recall curves",
              "label_cooccurrence": "Label co-occurrence (true labels)",
              "worst_examples": "Worst examples (predicted vs true labels)", "learning_curves": "Learning curves"}
    lines = ["## Figures", ""] if figures else []
    for key, path in figures.items():
        lines += [f"### {titles[key]}", "", f"![{titles[key]}]({path.relative_to(out_dir).as_posix()})", ""]
    return lines


# --- figures ----------------------------------------------------------------------------------------
def per_class_ap_figure(per_class: dict) -> Figure:
    names = list(per_class)
    values = [per_class[n]["ap"] if per_class[n]["ap"] is not None else 0.0 for n in names]
    fig = Figure(figsize=(8, max(2.5, 0.3 * len(names) + 1)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(range(len(names)), values, color=plots.COLORS["precision"])
    ax.set_yticks(range(len(names)), [plots.short_name(n) for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision")
    return fig


def pr_curves_figure(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> Figure:
    from sklearn.metrics import precision_recall_curve

    fig = Figure(figsize=(6.5, 5), layout="constrained")
    ax = fig.add_subplot()
    for c, name in enumerate(classes):
        if y[:, c].sum():
            precision, recall, _ = precision_recall_curve(y[:, c], probs[:, c])
            ax.plot(recall, precision, label=plots.short_name(name), linewidth=1)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    if len(classes) <= 20:
        ax.legend(fontsize="small", loc="lower left")
    return fig


def cooccurrence_figure(counts, classes: list[str]) -> Figure:
    counts = np.asarray(counts)
    side = min(max(4.5, 0.45 * len(classes) + 2.0), 22)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(classes)), [plots.short_name(c) for c in classes], rotation=90)
    ax.set_yticks(range(len(classes)), [plots.short_name(c) for c in classes])
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize="small",
                        color="white" if counts[i, j] > counts.max() / 2 else "black")
    fig.colorbar(image, ax=ax, label="images with both labels")
    return fig


def worst_examples(y: np.ndarray, probs: np.ndarray, pred: np.ndarray, n: int = WORST_SHOWN) -> list[int]:
    """Rows with the most wrong labels, then the largest total probability error."""
    wrong = (pred != y).sum(1)
    error = np.abs(probs - y).sum(1)
    order = np.lexsort((-error, -wrong))
    return [int(i) for i in order[:n] if wrong[i] > 0]


def worst_examples_figure(images, y, pred, classes) -> Figure:
    cols = 4
    rows = max(1, -(-len(images) // cols))
    fig = Figure(figsize=(cols * 2.6, rows * 2.9), layout="constrained")
    names = lambda row: " ".join(plots.short_name(classes[c], 12) for c in np.flatnonzero(row)) or "(none)"  # noqa
    for k, image in enumerate(images):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
        ax.set_axis_off()
        ax.set_title(f"pred: {names(pred[k])}\ntrue: {names(y[k])}", fontsize="small", color=plots.WRONG)
    return fig


# --- the folder -------------------------------------------------------------------------------------
def write_multilabel_report(out_dir: str | os.PathLike, metrics: dict, *, predictions: list[dict], probs, labels,
                            pred, worst_images=None, history=None, title: str = "", source: str = "",
                            figures: bool = True) -> dict[str, Path]:
    """Write the multi-label report folder; returns {name: path} of the files written. ``worst_images``:
    (rows, uint8 images) of the worst examples, for their figure."""
    out_dir = make_output_dir(out_dir, "report folder")
    written = {"metrics": write_metrics_json(out_dir / "metrics.json", metrics),
               "predictions": write_predictions_csv(out_dir / "predictions.csv", predictions)}
    drawn = {}
    if figures:
        fig_dir, classes = out_dir / "figures", metrics["classes"]
        drawn["per_class_ap"] = plots.save_figure(per_class_ap_figure(metrics["per_class"]),
                                                  fig_dir / "per_class_ap.png")
        drawn["pr_curves"] = plots.save_figure(pr_curves_figure(labels, probs, classes), fig_dir / "pr_curves.png")
        drawn["label_cooccurrence"] = plots.save_figure(cooccurrence_figure(metrics["label_cooccurrence"], classes),
                                                        fig_dir / "label_cooccurrence.png")
        if worst_images is not None and len(worst_images[0]):
            rows, images = worst_images
            drawn["worst_examples"] = plots.save_figure(
                worst_examples_figure(images, labels[rows], pred[rows], classes), fig_dir / "worst_examples.png")
        if history:
            drawn["learning_curves"] = plots.plot_learning_curves(fig_dir / "learning_curves.png", history)
    written.update(drawn)
    lines = [f"# {title or 'Evaluation report'} (multi-label)", ""]
    if source:
        lines += [f"Evaluated: `{source}`", ""]
    lines += _summary_section(metrics) + _per_class_section(metrics) + _figures_section(drawn, out_dir)
    lines += ["## Files", "", "- [metrics.json](metrics.json): every number above, machine-readable",
              "- [predictions.csv](predictions.csv): one row per image: true and predicted labels, top class", ""]
    written["report"] = atomic_write_text(out_dir / "report.md", "\n".join(lines), "report")
    return written

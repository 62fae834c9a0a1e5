"""The evaluation report folder: metrics.json, predictions.csv, figures/*.png and report.md tying them together.

Layout written by ``write_evaluation_report(out_dir, ...)``::

    out_dir/report.md                 summary, per-class table, confused pairs, embedded figures
    out_dir/metrics.json              compute_metrics(...) as is
    out_dir/predictions.csv           one row per sample
    out_dir/figures/*.png             confusion matrices, per-class bars, misclassifications,
                                      reliability diagram, sample predictions, learning curves
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from classifier.fileio import atomic_target, atomic_write_text, make_output_dir
from classifier.report import plots

PREDICTION_COLUMNS = ("file", "true", "pred", "confidence", "topk")


# --- predictions.csv --------------------------------------------------------------------------------

def topk_string(probs_row, classes, k: int = 5) -> str:
    """The k most likely classes of one sample as "cls:p;cls:p" (p with 4 decimals), most likely first."""
    probs_row = np.asarray(probs_row, dtype=np.float64)
    order = np.argsort(-probs_row, kind="stable")[: min(k, len(classes))]
    return ";".join(f"{classes[i]}:{probs_row[i]:.4f}" for i in order)


def prediction_rows(names, probs, classes, y_true=None, k: int = 5, label_sets=None) -> list[dict]:
    """Rows for ``write_predictions_csv``: file (or index), true name ("" if unknown), pred, confidence, topk.

    names: one identifier per sample (file path or index). y_true: int labels, or None for
    unlabelled images (negative labels also mean unknown); a 0/1 matrix for multi-label data (the true
    label set, space-separated). label_sets: (N, C) 0/1 predicted label sets of a multi-label model: a
    ``labels`` column (space-separated, maybe empty) after ``true``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    as_names = lambda row: " ".join(classes[c] for c in np.flatnonzero(row))  # noqa: E731
    rows = []
    for i, name in enumerate(names):
        if y_true is not None and np.ndim(y_true[i]):
            true = as_names(y_true[i])
        else:
            true = "" if y_true is None or int(y_true[i]) < 0 else classes[int(y_true[i])]
        row = {"file": str(name), "true": true}
        if label_sets is not None:
            row["labels"] = as_names(label_sets[i])
        rows.append({**row, "pred": classes[pred[i]], "confidence": float(probs[i, pred[i]]),
                     "topk": topk_string(probs[i], classes, k)})
    return rows


def _cell(value):
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return "" if value is None else value


def write_predictions_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """CSV with a header: the rows' keys in first-seen order (PREDICTION_COLUMNS when there are no rows)."""
    path = Path(path)
    make_output_dir(path.parent)
    columns = list(dict.fromkeys(k for row in rows for k in row)) or list(PREDICTION_COLUMNS)
    with atomic_target(path, "predictions") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return path


# --- metrics.json -----------------------------------------------------------------------------------

def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_metrics_json(path: str | os.PathLike, metrics: dict) -> Path:
    return atomic_write_text(path, json.dumps(metrics, indent=2, allow_nan=False, default=_plain) + "\n", "metrics")


# --- report.md --------------------------------------------------------------------------------------

def _md(text) -> str:
    """Escape a value for a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pct(value) -> str:
    return "—" if value is None else f"{value:.2%}"


def _table(header: list[str], rows: list[list], align: str) -> list[str]:
    """Markdown table; align has one character per column: l(eft) or r(ight)."""
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return lines


def _summary_section(m: dict) -> list[str]:
    rows = [["samples", m["n_samples"]], ["classes", m["num_classes"]], ["accuracy", _pct(m["accuracy"])]]
    rows += [[f"top-{k} accuracy", _pct(v)] for k, v in m.get("topk_accuracy", {}).items() if k != "1"]
    for kind in ("macro", "weighted"):
        values = " / ".join(_num(m.get(f"{kind}_{key}")) for key in ("precision", "recall", "f1"))
        rows.append([f"{kind} precision / recall / F1", values])
    bins = len(m.get("calibration", {}).get("counts", [])) or "?"
    rows.append([f"expected calibration error ({bins} bins)", _pct(m.get("ece"))])
    if m.get("ece_uncalibrated") is not None:  # classifier/trust/: the raw softmax's, before temperature scaling
        rows.append([f"ECE before calibration (temperature {m['temperature']:.3f}, fitted on validation)",
                     _pct(m["ece_uncalibrated"])])
    for key in ("best_class", "worst_class"):
        if m.get(key):
            rows.append([key.replace("_", " "), f"{m[key]['name']} (F1 {m[key]['f1']:.3f})"])
    if m.get("no_samples"):
        rows.append(["no samples (not ranked)", ", ".join(m["no_samples"])])
    return ["## Summary", "", *_table(["metric", "value"], rows, "lr"), ""]


def _per_class_section(m: dict) -> list[str]:
    best = (m.get("best_class") or {}).get("name")
    worst = (m.get("worst_class") or {}).get("name")
    absent = set(m.get("no_samples") or [])
    rows = []
    for name, c in m["per_class"].items():
        mark = "**best**" if name == best else "**worst**" if name == worst else "no samples" if name in absent else ""
        rows.append([name, c["support"], _num(c["precision"]), _num(c["recall"]), _num(c["f1"]),
                     _num(c["specificity"]), c["TP"], c["FP"], c["FN"], mark])
    header = ["class", "support", "precision", "recall", "F1", "specificity", "TP", "FP", "FN", ""]
    note = ("— = undefined (0/0): precision of a class never predicted, recall of a class without samples. "
            "Undefined values are left out of the macro and weighted averages.")
    return ["## Per-class results", "", *_table(header, rows, "lrrrrrrrrl"), "", note, ""]


def _confused_section(m: dict) -> list[str]:
    pairs = m.get("most_confused") or []
    if not pairs:
        return ["## Most confused pairs", "", "No misclassifications.", ""]
    support = {name: c["support"] for name, c in m["per_class"].items()}
    rows = [[p["true"], p["pred"], p["count"], f"{p['count'] / support[p['true']]:.1%}"] for p in pairs]
    return ["## Most confused pairs", "", *_table(["true class", "predicted as", "count", "% of true class"],
                                                   rows, "llrr"), ""]


def _figures_section(figures: dict[str, Path], out_dir: Path) -> list[str]:
    if not figures:
        return []
    titles = {
        "confusion_matrix": "Confusion matrix (counts)",
        "confusion_matrix_normalized": "Confusion matrix (row-normalised)",
        "per_class_metrics": "Precision, recall and F1 per class",
        "misclassifications": "Misclassifications per class",
        "reliability": "Reliability diagram",
        "reliability_uncalibrated": "Reliability diagram before calibration (raw softmax)",
        "sample_predictions": "Sample predictions",
        "learning_curves": "Learning curves",
    }
    lines = ["## Figures", ""]
    for key, path in figures.items():
        rel = path.relative_to(out_dir).as_posix()
        lines += [f"### {titles.get(key, key)}", "", f"![{titles.get(key, key)}]({rel})", ""]
    return lines


# --- the whole folder -------------------------------------------------------------------------------

def _draw_figures(fig_dir: Path, metrics: dict, sample_images, history) -> dict[str, Path]:
    classes, cm = metrics["classes"], metrics["confusion_matrix"]
    figures = {
        "confusion_matrix": plots.plot_confusion_matrix(fig_dir / "confusion_matrix.png", cm, classes),
        "confusion_matrix_normalized": plots.plot_confusion_matrix(
            fig_dir / "confusion_matrix_normalized.png", cm, classes, normalize=True),
        "per_class_metrics": plots.plot_per_class_metrics(fig_dir / "per_class_metrics.png", metrics["per_class"]),
        "misclassifications": plots.plot_misclassifications(fig_dir / "misclassifications.png", cm, classes),
        "reliability": plots.plot_reliability(fig_dir / "reliability.png", metrics["calibration"]),
    }
    if metrics.get("calibration_uncalibrated"):
        figures["reliability_uncalibrated"] = plots.plot_reliability(fig_dir / "reliability_uncalibrated.png",
                                                                     metrics["calibration_uncalibrated"])
    if sample_images is not None and len(sample_images["y_pred"]):
        figures["sample_predictions"] = plots.plot_predictions_grid(
            fig_dir / "sample_predictions.png", sample_images["images"], sample_images["y_pred"],
            sample_images["confidence"], classes, sample_images.get("y_true"))
    if history:
        figures["learning_curves"] = plots.plot_learning_curves(fig_dir / "learning_curves.png", history)
    return figures


def write_evaluation_report(out_dir: str | os.PathLike, metrics: dict, *, predictions: list[dict],
                            sample_images: dict | None = None, history: list[dict] | None = None,
                            title: str = "", source: str = "", figures: bool = True) -> dict[str, Path]:
    """Write the report folder and return {name: path} of every file written.

    metrics: ``compute_metrics(...)``. predictions: rows for predictions.csv (see ``prediction_rows``).
    sample_images: {"images": uint8 (N,H,W,C), "y_pred": ints, "confidence": floats, "y_true": ints
    or None} for the sample-predictions grid. history: training history rows for learning curves.
    source: what was evaluated (checkpoint path, dataset split), shown under the title. figures: False
    writes the numbers and tables without the PNG figures.
    """
    out_dir = make_output_dir(out_dir, "report folder")
    written = {
        "metrics": write_metrics_json(out_dir / "metrics.json", metrics),
        "predictions": write_predictions_csv(out_dir / "predictions.csv", predictions),
    }
    drawn = _draw_figures(out_dir / "figures", metrics, sample_images, history) if figures else {}
    written.update(drawn)
    lines = [f"# {title or 'Evaluation report'}", ""]
    if source:
        lines += [f"Evaluated: `{source}`", ""]
    lines += _summary_section(metrics) + _per_class_section(metrics) + _confused_section(metrics)
    lines += _figures_section(drawn, out_dir)
    lines += ["## Files", "", "- [metrics.json](metrics.json): every number above, machine-readable",
              "- [predictions.csv](predictions.csv): one row per sample with its top-k classes", ""]
    written["report"] = atomic_write_text(out_dir / "report.md", "\n".join(lines), "report")
    return written


def append_ood_section(out_dir: str | os.PathLike, metrics: dict, figure: Path | None) -> None:
    """Add the "unknown images" results (``eval.py --ood``) to report.md and metrics.json of ``out_dir``."""
    out_dir = Path(out_dir)
    write_metrics_json(out_dir / "metrics.json", metrics)
    rows = [["score", f"{metrics['ood_score_name']} (higher: more like the known classes)"],
            ["unknown images", metrics["ood_samples"]],
            ["AUROC (known vs unknown)", _num(metrics["ood_auroc"])],
            ["false-positive rate at 95% true-positive rate", _pct(metrics["ood_fpr95"])],
            [f"unknown images rejected at the stored threshold {metrics['reject_threshold']:.4g}",
             _pct(metrics["ood_rejected"])],
            ["known images kept at that threshold", _pct(metrics["ood_known_kept"])]]
    lines = ["", f"## Unknown images ({_md(metrics['ood_folder'])})", "", *_table(["metric", "value"], rows, "lr"), ""]
    if figure is not None:
        lines += [f"![score histograms]({figure.relative_to(out_dir).as_posix()})", ""]
    report = out_dir / "report.md"
    atomic_write_text(report, report.read_text() + "\n".join(lines), "report")

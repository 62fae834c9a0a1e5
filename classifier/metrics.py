"""Classification metrics as pure functions over numpy arrays; results are plain JSON-ready data.

Zero division. A ratio whose denominator is 0 is *undefined* and reported as ``None`` (``null`` in
JSON), never silently as 0 or 1:

    precision   TP / (TP + FP)        None when the class is never predicted
    recall      TP / (TP + FN)        None when the class has no samples (support 0)
    specificity TN / (TN + FP)        None when every sample belongs to the class
    F1          2TP / (2TP + FP + FN) None only when the class is neither present nor predicted;
                                      a class with samples but no predictions has F1 = 0

Macro averages are the mean over classes whose value is defined; weighted averages weight defined
values by support and renormalise. So a class absent from the evaluated set (and never predicted)
does not drag the averages down, while a class that exists but is never predicted still costs
recall and F1. Best and worst class are chosen among classes with support > 0; classes with no samples
in the evaluated data are listed under ``no_samples`` and never ranked.
"""
from __future__ import annotations

import numpy as np

from classifier.errors import ClassifierError

MAX_CONFUSED_PAIRS = 10


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts, shape (num_classes, num_classes): rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ClassifierError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    for name, y in (("true", y_true), ("predicted", y_pred)):
        bad = y[(y < 0) | (y >= num_classes)]
        if bad.size:
            raise ClassifierError(f"{name} label {int(bad[0])} is outside 0..{num_classes - 1}")
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def calibration_bins(conf, correct, bins: int = 15) -> dict:
    """Reliability statistics over equal-width confidence bins on [0, 1].

    Bin b holds confidences in (edges[b], edges[b+1]]; a confidence of exactly 0 goes to the first
    bin. Empty bins have accuracy and confidence None. ``ece`` is the sample-weighted mean of
    |accuracy - confidence| over the bins.
    """
    conf = np.asarray(conf, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    if conf.shape != correct.shape:
        raise ClassifierError(f"{conf.size} confidences but {correct.size} correctness flags")
    if bins < 1:
        raise ClassifierError(f"ece bins must be >= 1, got {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    counts = np.bincount(idx, minlength=bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    filled = counts > 0
    acc = np.divide(acc_sum, counts, out=np.zeros(bins), where=filled)
    mean_conf = np.divide(conf_sum, counts, out=np.zeros(bins), where=filled)
    ece = float(np.sum(np.abs(acc - mean_conf) * counts) / conf.size) if conf.size else 0.0
    return {
        "edges": edges.tolist(),
        "counts": counts.astype(int).tolist(),
        "accuracy": [float(a) if f else None for a, f in zip(acc, filled)],
        "confidence": [float(c) if f else None for c, f in zip(mean_conf, filled)],
        "ece": ece,
    }


def expected_calibration_error(conf, correct, bins: int = 15) -> float:
    """ECE: sum over equal-width bins of (bin size / N) * |accuracy - mean confidence|."""
    return calibration_bins(conf, correct, bins)["ece"]


def _ratio(num, den):
    return float(num / den) if den else None


def _mean_defined(values, weights=None):
    """Mean of the values that are not None (weighted if weights are given), or None if there are none."""
    weights = [1.0] * len(values) if weights is None else weights
    pairs = [(v, w) for v, w in zip(values, weights) if v is not None]
    total = sum(w for _, w in pairs)
    return float(sum(v * w for v, w in pairs) / total) if total else None


def per_class_counts(cm: np.ndarray, classes) -> dict:
    """Per class {TP, FP, TN, FN, accuracy, precision, recall, specificity, F1, support} from a CM."""
    n = int(cm.sum())
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = n - tp - fp - fn
    out = {}
    for i, name in enumerate(classes):
        t, p, f, m = int(tp[i]), int(fp[i]), int(tn[i]), int(fn[i])
        out[name] = {
            "TP": t, "FP": p, "TN": f, "FN": m,
            "accuracy": _ratio(t + f, n),
            "precision": _ratio(t, t + p),
            "recall": _ratio(t, t + m),
            "specificity": _ratio(f, f + p),
            "f1": _ratio(2 * t, 2 * t + p + m),
            "support": t + m,
        }
    return out


def most_confused_pairs(cm: np.ndarray, classes, limit: int = MAX_CONFUSED_PAIRS) -> list[dict]:
    """Off-diagonal cells with count > 0, largest first (ties: by true, then predicted index)."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    t, p = np.nonzero(off)
    order = sorted(zip(t, p), key=lambda tp: (-off[tp], tp[0], tp[1]))[:limit]
    return [{"true": classes[i], "pred": classes[j], "count": int(off[i, j])} for i, j in order]


def _extreme_class(per_class: dict, best: bool):
    ranked = [(m["f1"], m["support"], name) for name, m in per_class.items()
              if m["support"] > 0 and m["f1"] is not None]
    if not ranked:
        return None
    # Best: highest F1, ties to the larger class; worst: lowest F1, ties to the larger class too.
    f1, _, name = max(ranked, key=lambda r: (r[0], r[1])) if best else min(ranked, key=lambda r: (r[0], -r[1]))
    return {"name": name, "f1": f1}


def classes_without_samples(per_class: dict) -> list[str]:
    return [name for name, m in per_class.items() if m["support"] == 0]


def worst_classes(per_class: dict, n: int = 3) -> list[tuple[str, float]]:
    """The ``n`` lowest-F1 classes among those with samples, as (name, F1); ties to the larger class."""
    ranked = [(name, m["f1"], m["support"]) for name, m in per_class.items()
              if m["support"] > 0 and m["f1"] is not None]
    return [(name, f1) for name, f1, _ in sorted(ranked, key=lambda r: (r[1], -r[2]))[:n]]


def topk_accuracy(y_true, probs, k: int) -> float:
    """Fraction of samples whose true class is among the k highest scores (ties: lower index first)."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    top = np.argsort(-np.asarray(probs), axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == y_true[:, None], axis=1)))


def compute_metrics(y_true, probs, classes, *, topk=(1, 5), ece_bins: int = 15) -> dict:
    """Everything the evaluation report shows, as plain JSON-serialisable data.

    y_true: (N,) int labels in 0..C-1. probs: (N, C) scores (softmax probabilities for a meaningful
    ECE). classes: C names, index = label. Top-k accuracy is reported for each k < C.
    """
    classes = [str(c) for c in classes]
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    num_classes = len(classes)
    if len(set(classes)) != num_classes:
        raise ClassifierError(f"class names must be unique, got {classes}")
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise ClassifierError(f"probs must have shape (N, {num_classes}), got {probs.shape}")
    if probs.shape[0] != y_true.size:
        raise ClassifierError(f"{y_true.size} labels but {probs.shape[0]} rows of probabilities")
    if y_true.size == 0:
        raise ClassifierError("cannot compute metrics on 0 samples")

    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    per_class = per_class_counts(cm, classes)
    support = [m["support"] for m in per_class.values()]
    averages = {}
    for key in ("precision", "recall", "f1"):
        values = [m[key] for m in per_class.values()]
        averages[f"macro_{key}"] = _mean_defined(values)
        averages[f"weighted_{key}"] = _mean_defined(values, support)
    correct = y_pred == y_true
    calibration = calibration_bins(probs.max(axis=1), correct, ece_bins)
    return {
        "n_samples": int(y_true.size),
        "num_classes": num_classes,
        "classes": classes,
        "accuracy": float(correct.mean()),
        "topk_accuracy": {str(k): topk_accuracy(y_true, probs, k) for k in topk if k < num_classes},
        **averages,
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
        "most_confused": most_confused_pairs(cm, classes),
        "ece": calibration["ece"],
        "calibration": calibration,
        "no_samples": classes_without_samples(per_class),
        "best_class": _extreme_class(per_class, best=True),
        "worst_class": _extreme_class(per_class, best=False),
    }

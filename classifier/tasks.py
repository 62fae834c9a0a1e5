"""What differs between single-label (multiclass) and multi-label classification, in one place.

A task says how logits become probabilities (softmax / per-class sigmoid), which loss trains them
(cross-entropy / binary cross-entropy), how a prediction is decided (the top class / every class at or
above its threshold), which validation figure picks ``best.pt`` (the loss / mAP), how decision thresholds
are fitted, and which metrics the evaluation reports. The rest of the toolkit asks the task object
(``get_task(name)``) instead of branching on the kind of labels.

Labels: multiclass labels are class indices (N,); multi-label labels are a 0/1 matrix (N, C), a row per
image, a column per class (an all-zero row is an image with no label).

Decision rule of a multi-label model (the same in predict, evaluation, the ONNX client and the web page):
class c is predicted when ``sigmoid(logit_c) >= thresholds[c]``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from classifier.errors import ClassifierError, unknown_choice
from classifier.metrics import compute_metrics

TASK_CHOICES = ("auto", "multiclass", "multilabel")
DEFAULT_THRESHOLD = 0.5  # a class absent from validation keeps it


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    return (1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))).astype(np.float32)


def inverse_class_frequency(labels, num_classes: int = 0) -> np.ndarray:
    """Per-class weights n / (k x count) over the k classes present (absent classes: 0): every class then
    carries the same total weight, and a sample weighs 1 on average (``--class-weights auto``)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    present = counts > 0
    return np.where(present, counts.sum() / (present.sum() * np.maximum(counts, 1)), 0.0)


def is_multilabel(labels) -> bool:
    return np.asarray(labels).ndim == 2


class Task:
    """The multiclass task; ``MultilabelTask`` overrides what differs."""

    name = "multiclass"
    activation = "softmax"  # what clients apply to the logits (ONNX metadata, web page)
    selection = "lower validation loss"  # what picks best.pt (and what early stopping waits for)
    validates_on_probabilities = False  # validation keeps every probability (for mAP and thresholds)
    label_column = "given_label"  # oof.csv's column of the labels (the class name)
    headline = "accuracy"  # the figure one-line summaries print (cross-validation)
    # cross-validation: each fold's figures from its out-of-fold probabilities (summary.json cv_val_<name>_mean/_std)
    fold_figure_names = ("accuracy", "loss", "macro_precision", "macro_recall", "macro_f1", "weighted_precision",
                         "weighted_recall", "weighted_f1", "top5_accuracy", "ece")

    # --- probabilities
    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax(np.asarray(logits))

    def torch_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, 1)

    # --- training
    def loss(self, logits: torch.Tensor, y: torch.Tensor, *, weight=None, label_smoothing: float = 0.0,
             reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=label_smoothing, reduction=reduction)

    def correct(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        """Correct predictions in a batch (training accuracy): the top class equals the label."""
        return (logits.argmax(1) == y).sum().item()

    def loss_weights(self, labels, num_classes: int) -> np.ndarray:
        """``--class-weights auto``: cross-entropy weights from the inverse class frequencies."""
        return inverse_class_frequency(labels, num_classes)

    # --- validation: what picks best.pt
    def validation(self, probs: np.ndarray, y: np.ndarray) -> dict:
        """Figures of a validation pass beyond loss and accuracy (multiclass: none)."""
        return {}

    def score(self, val: dict) -> float:
        """Lower is better; the epoch with the lowest score is best.pt."""
        return val["loss"]

    # --- decisions
    def fit_thresholds(self, probs: np.ndarray, y: np.ndarray) -> list[float] | None:
        return None

    def decide(self, probs: np.ndarray, thresholds=None) -> np.ndarray:
        """(N, C) 0/1 predicted label sets."""
        probs = np.asarray(probs)
        out = np.zeros(probs.shape, dtype=np.int64)
        if len(probs):
            out[np.arange(len(probs)), probs.argmax(1)] = 1
        return out

    def metrics(self, y_true, probs, classes, thresholds=None) -> dict:
        return {"task": self.name, **compute_metrics(y_true, probs, classes)}

    # --- labels as text (oof.csv, label_issues.csv) and the figures of a cross-validation fold
    def label_text(self, y, classes) -> str:
        """A label as text: ``y`` a class index, or a 0/1 row (``decide``'s) with the class marked."""
        return str(classes[int(y) if np.ndim(y) == 0 else int(np.argmax(y))])

    def parse_labels(self, texts: list[str], classes: list) -> np.ndarray:
        """Labels written by ``label_text`` back to class indices; a name that is no class is an error."""
        index = {str(c): i for i, c in enumerate(classes)}
        unknown = sorted({t for t in texts if t not in index})
        if unknown:
            raise ClassifierError(f"label(s) {unknown[:5]} are not among the classes {list(classes)}")
        return np.array([index[t] for t in texts], dtype=np.int64)

    def probability_loss(self, y, probs) -> float:
        """The training loss of these probabilities (cross-entropy), averaged over the images."""
        y, probs = np.asarray(y, np.int64), np.asarray(probs, np.float64)
        return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))

    def fold_figures(self, y, probs, classes) -> dict:
        """``fold_figure_names`` of one fold's validation images, from their out-of-fold probabilities."""
        m = compute_metrics(y, probs, classes)
        m["top5_accuracy"] = m["topk_accuracy"].get("5", 1.0 if len(classes) <= 5 else None)
        m["loss"] = self.probability_loss(y, probs)
        return {name: m[name] for name in self.fold_figure_names}


class MultilabelTask(Task):
    name = "multilabel"
    activation = "sigmoid"
    selection = "higher validation mAP"
    validates_on_probabilities = True
    label_column = "given_labels"  # the label set: class names separated by spaces (as in CSV label files)
    headline = "mAP"
    # macro/micro F1 and the rest at DEFAULT_THRESHOLD: each fold's fitted thresholds were fitted on the very
    # images its out-of-fold probabilities are for, which would flatter them
    fold_figure_names = ("mAP", "loss", "macro_f1", "micro_f1", "macro_precision", "macro_recall",
                         "subset_accuracy", "hamming_loss")

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits)

    def torch_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def loss(self, logits, y, *, weight=None, label_smoothing: float = 0.0, reduction: str = "mean"):
        target = y.float()
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / 2
        # per image: the sum over classes, so a step's size does not shrink with the class count and the
        # learning rates tuned for cross-entropy apply (a mean over classes would divide the gradient by C)
        loss = F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=weight, reduction="none").sum(1)
        return loss.sum() if reduction == "sum" else loss.mean()

    def correct(self, logits, y) -> float:
        """Images whose whole label set is right at 0.5 (subset accuracy)."""
        return ((logits > 0).long() == y.long()).all(1).sum().item()

    def loss_weights(self, labels, num_classes: int) -> np.ndarray:
        """``--class-weights auto``: BCE positive weights negatives / positives per class (absent: 1)."""
        labels = np.asarray(labels)
        pos = labels.sum(0).astype(np.float64)
        neg = len(labels) - pos
        return np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)

    def validation(self, probs, y) -> dict:
        return {"mAP": mean_average_precision(y, probs)}

    def score(self, val: dict) -> float:
        m = val.get("mAP")
        return 1.0 - m if m is not None else val["loss"] + 1.0  # no class with positives: fall back on the loss

    def fit_thresholds(self, probs, y) -> list[float]:
        return fit_thresholds(probs, y)

    def decide(self, probs, thresholds=None) -> np.ndarray:
        probs = np.asarray(probs)
        t = np.full(probs.shape[1], DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds, np.float64)
        return (probs >= t).astype(np.int64)

    def metrics(self, y_true, probs, classes, thresholds=None) -> dict:
        return multilabel_metrics(y_true, probs, classes, thresholds)

    def label_text(self, y, classes) -> str:
        return " ".join(str(classes[c]) for c in np.flatnonzero(y))

    def parse_labels(self, texts: list[str], classes: list) -> np.ndarray:
        """Label sets written by ``label_text`` back to a 0/1 matrix (class names may hold spaces)."""
        out = np.zeros((len(texts), len(classes)), np.int64)
        for i, text in enumerate(texts):
            out[i, split_label_set(text, classes)] = 1
        return out

    def probability_loss(self, y, probs) -> float:
        """Binary cross-entropy summed over the classes (as the training loss), averaged over the images."""
        y, probs = np.asarray(y, np.float64), np.clip(np.asarray(probs, np.float64), 1e-12, 1 - 1e-12)
        return float(-np.mean(np.sum(y * np.log(probs) + (1 - y) * np.log(1 - probs), axis=1)))

    def fold_figures(self, y, probs, classes) -> dict:
        m = multilabel_metrics(y, probs, classes)
        m.update(loss=self.probability_loss(y, probs), macro_precision=m["CP"], macro_recall=m["CR"])
        return {name: m[name] for name in self.fold_figure_names}


TASKS = {"multiclass": Task(), "multilabel": MultilabelTask()}


def get_task(name: str | None) -> Task:
    """The task named (None and 'auto' before the data is seen: multiclass, as older runs were)."""
    if name in (None, "auto"):
        return TASKS["multiclass"]
    if name not in TASKS:
        raise unknown_choice("task", name, TASK_CHOICES)
    return TASKS[name]


def resolve_task(setting: str | None, labels) -> str:
    """``--task auto|multiclass|multilabel`` against the training labels: auto is multilabel when the labels
    are a matrix (some image has other than one label); multiclass with such labels is an error."""
    multi = is_multilabel(labels)
    if setting in (None, "auto"):
        return "multilabel" if multi else "multiclass"
    if setting == "multiclass" and multi:
        raise ClassifierError("--task multiclass needs exactly one label per image, and some images have none or "
                              "several: use --task multilabel (or auto)")
    return get_task(setting).name


def split_label_set(text: str, classes: list) -> list[int]:
    """Class indices of a space-separated label set. Class names may hold spaces: the words are split into
    whole names, longest first, backing off when the rest cannot be split; words that no split covers are
    an error."""
    names = {str(c): i for i, c in enumerate(classes)}
    words = text.split()

    def split(start: int) -> list[int] | None:
        if start == len(words):
            return []
        for end in range(len(words), start, -1):
            name = " ".join(words[start:end])
            rest = split(end) if name in names else None
            if rest is not None:
                return [names[name], *rest]
        return None

    found = split(0)
    if found is None:
        raise ClassifierError(f"label set '{text}' is not made of the classes {list(classes)}")
    return found


def to_multilabel(labels, num_classes: int) -> np.ndarray:
    """Class indices (N,) -> a one-hot 0/1 matrix (N, C); a matrix is returned as int64."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels.astype(np.int64)
    out = np.zeros((len(labels), num_classes), np.int64)
    out[np.arange(len(labels)), labels.astype(np.int64)] = 1
    return out


# --- multi-label figures (scikit-learn computes AP, precision, recall and F1) ----------------------
def fit_thresholds(probs, y) -> list[float]:
    """Per class, the cut-off that maximises its F1 on (probs, y): halfway between the lowest score taken as
    positive and the next lower score (the same F1 on these images, a margin either side). A class without
    positives keeps ``DEFAULT_THRESHOLD``."""
    from sklearn.metrics import precision_recall_curve

    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    out = []
    for c in range(probs.shape[1]):
        if y[:, c].sum() == 0:
            out.append(DEFAULT_THRESHOLD)
            continue
        precision, recall, cuts = precision_recall_curve(y[:, c], probs[:, c])
        p, r = precision[:-1], recall[:-1]
        f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
        cut = float(cuts[int(np.argmax(f1))])
        below = probs[:, c][probs[:, c] < cut]
        out.append((cut + float(below.max())) / 2 if len(below) else cut)
    return out


def mean_average_precision(y, probs) -> float | None:
    """Macro average precision over the classes with at least one positive (None when none has)."""
    ap = per_class_ap(y, probs)
    defined = [a for a in ap if a is not None]
    return float(np.mean(defined)) if defined else None


def per_class_ap(y, probs) -> list[float | None]:
    from sklearn.metrics import average_precision_score

    y, probs = np.asarray(y), np.asarray(probs, np.float64)
    return [float(average_precision_score(y[:, c], probs[:, c])) if y[:, c].sum() else None
            for c in range(y.shape[1])]


def _none_if_nan(v) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def multilabel_metrics(y_true, probs, classes, thresholds=None) -> dict:
    """Everything a multi-label report shows, JSON-ready. Undefined ratios (no positives, nothing
    predicted) are None and left out of macro averages, as in ``classifier.metrics``."""
    from sklearn.metrics import accuracy_score, hamming_loss, precision_recall_fscore_support

    classes = [str(c) for c in classes]
    y = np.asarray(y_true).astype(np.int64)
    probs = np.asarray(probs, np.float64)
    if y.ndim != 2 or probs.shape != y.shape or y.shape[1] != len(classes):
        raise ClassifierError(f"multi-label metrics need labels and probabilities shaped (N, {len(classes)}), "
                              f"got {y.shape} and {probs.shape}")
    if len(y) == 0:
        raise ClassifierError("cannot compute metrics on 0 samples")
    thresholds = [DEFAULT_THRESHOLD] * len(classes) if thresholds is None else [float(t) for t in thresholds]
    pred = TASKS["multilabel"].decide(probs, thresholds)
    p, r, f, support = precision_recall_fscore_support(y, pred, average=None, zero_division=np.nan)
    ap = per_class_ap(y, probs)
    per_class = {name: {"ap": ap[c], "precision": _none_if_nan(p[c]), "recall": _none_if_nan(r[c]),
                        "f1": _none_if_nan(f[c]), "support": int(support[c]), "predicted": int(pred[:, c].sum()),
                        "threshold": thresholds[c]}
                 for c, name in enumerate(classes)}
    micro = precision_recall_fscore_support(y, pred, average="micro", zero_division=np.nan)
    macro = precision_recall_fscore_support(y, pred, average="macro", zero_division=np.nan)
    cp, cr = _none_if_nan(macro[0]), _none_if_nan(macro[1])
    subset = float(accuracy_score(y, pred))
    defined_ap = [a for a in ap if a is not None]
    return {
        "task": "multilabel",
        "n_samples": int(len(y)),
        "num_classes": len(classes),
        "classes": classes,
        "thresholds": thresholds,
        "mAP": float(np.mean(defined_ap)) if defined_ap else None,
        "macro_f1": _none_if_nan(macro[2]),
        "micro_f1": _none_if_nan(micro[2]),
        # MMPretrain's names: C = per class then averaged, O = over all (image, class) pairs
        "CP": cp, "CR": cr, "CF1": (2 * cp * cr / (cp + cr)) if cp is not None and cr is not None and cp + cr else None,
        "OP": _none_if_nan(micro[0]), "OR": _none_if_nan(micro[1]), "OF1": _none_if_nan(micro[2]),
        "subset_accuracy": subset,
        "accuracy": subset,  # what one-line summaries print: the whole label set right
        "hamming_loss": float(hamming_loss(y, pred)),
        "per_class": per_class,
        "label_cooccurrence": (y.T @ y).astype(int).tolist(),
        "no_samples": [n for n, m in per_class.items() if m["support"] == 0],
    }

"""What ``Predictions.save`` (and ``test.py``) writes: predictions.csv (file, top-k, probabilities; a
multi-label model's label sets; the "unknown" score of ``predict(reject=True)``) and predictions.png (a
grid of the first images with their top class)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from classifier.report.grids import images_to_uint8_batch
from classifier.report.plots import plot_predictions_grid
from classifier.report.writer import prediction_rows, write_predictions_csv

MAX_SIDE = 128  # grid tile side, in pixels


def write_predictions(out: Path, predictions, classes: list[str], *, topk: int = 5, multilabel: bool = False,
                      shown=()) -> Path:
    """predictions.csv of ``predictions`` (classifier.Prediction objects) in ``out``, and predictions.png of
    the ``shown`` images (the first ones); returns the CSV's path."""
    out = Path(out)
    probs = np.stack([p.probs for p in predictions]) if len(predictions) else np.zeros((0, len(classes)))
    names = [p.path or f"image {i}" for i, p in enumerate(predictions)]
    sets = None
    if multilabel:  # a labels column: the predicted label set, space-separated
        sets = np.array([[c in p.labels for c in classes] for p in predictions], dtype=np.int64)
    rows = prediction_rows(names, probs, classes, k=topk, label_sets=sets)
    for row, prediction in zip(rows, predictions):  # predict(reject=True): the score, and "unknown" below it
        if prediction.ood_score is not None:
            row["pred"] = prediction.label if prediction.index < 0 else row["pred"]
            row["ood_score"] = prediction.ood_score
    write_predictions_csv(out / "predictions.csv", rows)
    if len(shown):
        write_predictions_grid(out / "predictions.png", list(shown), probs, classes)
    return out / "predictions.csv"


def write_predictions_grid(path: Path, images: list, probs: np.ndarray, classes: list[str]) -> Path:
    """``images`` (uint8 HWC, any sizes) with their top class and its probability (``probs``' first rows)."""
    side = min(max(max(im.shape[:2]) for im in images), MAX_SIDE)
    pred = probs[: len(images)].argmax(1)
    return plot_predictions_grid(path, images_to_uint8_batch(images, side), pred,
                                 probs[np.arange(len(images)), pred], classes)

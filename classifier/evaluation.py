"""Evaluate a classifier on labelled samples and write the report folder.

Used at the end of training (test split), by ``eval.py`` and by ``Model.evaluate`` (a split, a new image
folder, arrays), for ``.pt``, ``.onnx`` and ``.ort`` models alike: a model is reached only through a
``Predictor`` (classifier/inference.py), so every backend gets the same pixels and the same test-time
flip rule. Images are decoded a batch at a time (threads in parallel), so memory stays flat however
many images a folder holds.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from classifier.data import BadImageError, Samples, load_image
from classifier.data.images import image_files_under
from classifier.errors import ClassifierError
from classifier.inference import Predictor
from classifier.metrics import compute_metrics
from classifier.preprocess import convert_channels
from classifier.report.grids import images_to_uint8_batch
from classifier.report.multilabel import worst_examples, write_multilabel_report
from classifier.report.plots import plot_ood_histograms
from classifier.report.writer import append_ood_section, prediction_rows, write_evaluation_report
from classifier.tasks import to_multilabel
from classifier.trust.calibrate import uncalibrated_calibration
from classifier.trust.explain import with_heatmaps
from classifier.trust.ood import separation

GRID_PER_CLASS = 6


def _read(samples, i: int, channels: int):
    if getattr(samples, "images", None) is not None:
        im = samples.images[i]
        return im if im.shape[-1] == channels else _convert(im, channels)
    try:
        return load_image(samples.paths[i], channels)
    except BadImageError:
        return None


def _convert(im: np.ndarray, channels: int) -> np.ndarray:
    t = torch.from_numpy(im).permute(2, 0, 1)[None].float()
    return convert_channels(t, channels)[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def sample_name(samples, i: int) -> str:
    paths = getattr(samples, "paths", None)
    return str(paths[i]) if paths is not None and getattr(samples, "images", None) is None else str(i)


def iter_image_batches(samples, channels: int, batch_size: int, skipped: list, *, threads: int = 4):
    """Yield (indices, uint8 images, labels) batch by batch; unreadable files go to ``skipped``."""
    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(samples), batch_size):
            idx = list(range(start, min(start + batch_size, len(samples))))
            images = list(pool.map(lambda i: _read(samples, i, channels), idx))
            ok = [k for k, im in enumerate(images) if im is not None]
            skipped += [sample_name(samples, idx[k]) for k in range(len(idx)) if images[k] is None]
            if ok:
                labels = np.asarray(samples.labels)[[idx[k] for k in ok]]
                yield [idx[k] for k in ok], [images[k] for k in ok], labels


def run_predictions(predictor: Predictor, samples, *, batch_size: int = 256, progress: bool = True):
    """Probabilities, labels and sample indices for every readable sample, plus the skipped files."""
    channels = predictor.prep.channels
    probs, labels, indices, skipped = [], [], [], []
    bar = tqdm(total=len(samples), desc="evaluating", unit="img", disable=not progress, leave=False,
               mininterval=1.0)
    for idx, images, y in iter_image_batches(samples, channels, batch_size, skipped):
        probs.append(predictor.predict(images, batch_size=batch_size))
        labels.append(y)
        indices += idx
        bar.update(len(idx))
    bar.close()
    if not probs:
        return np.zeros((0, 0)), np.zeros(0, np.int64), [], skipped
    return np.concatenate(probs), np.concatenate(labels), indices, skipped


def grid_samples(samples, indices, probs, labels, channels: int, per_class: int = GRID_PER_CLASS,
                 seed: int = 0) -> dict:
    """A few images per predicted class, wrong predictions first, for the prediction grid."""
    pred = probs.argmax(1)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(pred):
        rows = np.flatnonzero(pred == c)
        wrong = rng.permutation(rows[labels[rows] != c])[: per_class // 2]
        right = rng.permutation(rows[labels[rows] == c])[: per_class - len(wrong)]
        chosen += list(wrong) + list(right)
    images = [_read(samples, indices[r], channels) for r in chosen]
    side = max(max(im.shape[0], im.shape[1]) for im in images) if images else 1
    images = images_to_uint8_batch(images, side)
    return {"images": images, "y_pred": pred[chosen], "confidence": probs[chosen, pred[chosen]],
            "y_true": np.where(labels[chosen] >= 0, labels[chosen], -1)}


def evaluate_and_report(predictor: Predictor, samples, out_dir, *, title: str = "", source: str = "",
                        history=None, batch_size: int = 256, progress: bool = True, figures: bool = True,
                        threshold: float | None = None, ood=None) -> dict:
    """Predict every sample, compute the metrics, write the report folder; returns the metrics.

    Samples labelled -1 (a class the model does not know) are predicted and listed in predictions.csv
    but kept out of the metrics, and counted in ``metrics["unknown_class_samples"]``. ``figures``: also
    draw the report's PNG figures. The model's task picks the report (``REPORTS``); a multi-label model
    decides with its fitted thresholds, or ``threshold`` for every class. ``ood``: a folder of images of
    none of the classes: how well the model's "unknown" score tells them apart (``evaluate_unknown``).
    """
    if ood is not None and not predictor.ood:
        raise ClassifierError(f"{predictor.source} has no \"unknown\" score and threshold (trained without a "
                              "validation split, or before the toolkit stored them): --ood needs them")
    predictor.decision_thresholds(threshold)  # a bad threshold is refused before the images are predicted
    ood_files = unknown_images(ood) if ood is not None else None
    found = run_predictions(predictor, samples, batch_size=batch_size, progress=progress)
    metrics = REPORTS[predictor.task.name](predictor, samples, out_dir, *found, title=title, source=source,
                                           history=history, figures=figures, threshold=threshold)
    if ood is not None:
        metrics.update(evaluate_unknown(predictor, samples, ood, ood_files, out_dir, batch_size=batch_size,
                                        figures=figures))
    return metrics


def unknown_images(folder) -> list:
    files = image_files_under(folder) if Path(folder).is_dir() else []
    if not files:
        raise ClassifierError(f"--ood: no images found in '{folder}' (give a folder of images of none of the classes)")
    return files


def evaluate_unknown(predictor: Predictor, samples, folder, files, out_dir, *, batch_size: int = 256,
                     figures: bool = True) -> dict:
    """``ood_auroc``, ``ood_fpr95`` and ``ood_rejected`` (at the stored threshold) of the model's "unknown"
    score, known = the evaluated samples, unknown = ``files`` (the images under ``folder``); added to the report."""

    def scores_of(batches):
        return np.concatenate([predictor.predict_with_scores(images, batch_size=batch_size)[1]
                               for _, images, _ in batches] or [np.zeros(0)])

    channels = predictor.prep.channels
    known = scores_of(iter_image_batches(samples, channels, batch_size, []))
    unknown = scores_of(iter_image_batches(Samples(paths=list(files), labels=np.full(len(files), -1)), channels,
                                           batch_size, []))
    result = separation(known, unknown, threshold=predictor.ood["threshold"])
    metrics = {"ood_folder": str(folder), "ood_score_name": predictor.ood["score"], "ood_samples": int(len(unknown)),
               "reject_threshold": predictor.ood["threshold"], "ood_auroc": result["auroc"],
               "ood_fpr95": result["fpr95"], "ood_rejected": result["rejected"], "ood_known_kept": result["known_kept"]}
    figure = plot_ood_histograms(Path(out_dir) / "figures" / "ood_scores.png", known, unknown,
                                 predictor.ood["threshold"], predictor.ood["score"]) if figures else None
    full = json.loads((Path(out_dir) / "metrics.json").read_text())
    append_ood_section(out_dir, {**full, **metrics}, figure)
    print(f"unknown images ({folder}): AUROC {result['auroc']:.3f}, FPR at 95% TPR {result['fpr95']:.1%}, "
          f"{result['rejected']:.1%} rejected at the stored threshold")
    return metrics


def _multiclass_report(predictor: Predictor, samples, out_dir, probs, labels, indices, skipped, *, title, source,
                       history, figures, threshold) -> dict:
    classes, channels = predictor.classes, predictor.prep.channels
    known = labels >= 0
    metrics = compute_metrics(labels[known], probs[known], classes)
    metrics["unknown_class_samples"] = int((~known).sum())
    metrics["skipped_files"] = skipped
    metrics.update(uncalibrated_calibration(probs[known], labels[known], predictor.temperature))
    rows = prediction_rows([sample_name(samples, i) for i in indices], probs, classes, y_true=labels)
    grid = grid_samples(samples, indices, probs, labels, channels) if len(indices) and figures else None
    if grid is not None:
        grid = with_heatmaps(predictor, grid)  # the misclassified images show where the prediction came from
    write_evaluation_report(out_dir, metrics, predictions=rows, sample_images=grid, history=history,
                            title=title, source=source, figures=figures)
    return metrics


def _multilabel_report(predictor: Predictor, samples, out_dir, probs, labels, indices, skipped, *, title, source,
                       history, figures, threshold) -> dict:
    """Metrics at the model's decision thresholds; single-label samples (a class folder) count as label sets
    of one class (-1, a class the model does not know: an empty set)."""
    classes, task = predictor.classes, predictor.task
    if labels.ndim == 1:
        labels = np.where(labels[:, None] >= 0, to_multilabel(np.maximum(labels, 0), len(classes)), 0)
    labels = labels.reshape(len(probs), len(classes)) if len(probs) else np.zeros((0, len(classes)), np.int64)
    thresholds = predictor.decision_thresholds(threshold)
    metrics = task.metrics(labels, probs, classes, thresholds)
    metrics["skipped_files"] = skipped
    pred = task.decide(probs, thresholds)
    rows = prediction_rows([sample_name(samples, i) for i in indices], probs, classes, y_true=labels,
                           label_sets=pred)
    worst = None
    if figures:
        chosen = worst_examples(labels, probs, pred)
        images = [_read(samples, indices[r], predictor.prep.channels) for r in chosen]
        side = max((max(im.shape[:2]) for im in images), default=1)
        worst = (chosen, images_to_uint8_batch(images, min(side, 128)))
    write_multilabel_report(out_dir, metrics, predictions=rows, probs=probs, labels=labels, pred=pred,
                            worst_images=worst, history=history, title=title, source=source, figures=figures)
    return metrics


REPORTS = {"multiclass": _multiclass_report, "multilabel": _multilabel_report}  # task name -> report writer

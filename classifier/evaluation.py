"""Evaluate a classifier on labelled samples and write the report folder.

Used at the end of training (test split) and by ``eval.py`` (a split, or a new image folder), for
``.pt`` and ``.onnx`` models alike: a model is reached only through ``predict_fn(list of uint8 HWC
images) -> probabilities``, so every backend gets the same pixels. Images are decoded a batch at a time
(threads in parallel), so memory stays flat however many images a folder holds.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from classifier.preprocess import Preprocessing

GRID_PER_CLASS = 6


def torch_predict_fn(model, prep: Preprocessing, device=torch.device("cpu"), amp_dtype=None, tta_flip=False):
    from classifier.engine.loop import eval_logits
    from classifier.engine.runtime import autocast
    from classifier.inference import model_input

    model.eval()

    @torch.inference_mode()
    def predict(images):
        x = model_input(images, prep).to(device)
        with autocast(device, amp_dtype):
            return torch.softmax(eval_logits(model, x, tta_flip), 1).cpu().numpy()

    return predict


def _read(samples, i: int, channels: int):
    from classifier.data import BadImageError, load_image

    if getattr(samples, "images", None) is not None:
        im = samples.images[i]
        return im if im.shape[-1] == channels else _convert(im, channels)
    try:
        return load_image(samples.paths[i], channels)
    except BadImageError:
        return None


def _convert(im: np.ndarray, channels: int) -> np.ndarray:
    from classifier.preprocess import convert_channels

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


def run_predictions(predict_fn, samples, channels: int, *, batch_size: int = 256, progress: bool = True):
    """Probabilities, labels and sample indices for every readable sample, plus the skipped files."""
    probs, labels, indices, skipped = [], [], [], []
    bar = tqdm(total=len(samples), desc="evaluating", unit="img", disable=not progress, leave=False,
               mininterval=1.0)
    for idx, images, y in iter_image_batches(samples, channels, batch_size, skipped):
        probs.append(predict_fn(images))
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


def images_to_uint8_batch(images: list, side: int) -> np.ndarray:
    """Resize uint8 HWC images to side x side for display."""
    import torch.nn.functional as F

    out = []
    for im in images:
        t = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float()
        if t.shape[-2:] != (side, side):
            t = F.interpolate(t, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        out.append(t[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy())
    return np.stack(out) if out else np.zeros((0, side, side, 1), np.uint8)


def evaluate_and_report(predict_fn, samples, classes: list, channels: int, out_dir, *, title: str = "",
                        source: str = "", history=None, batch_size: int = 256, progress: bool = True) -> dict:
    """Predict every sample, compute the metrics, write the report folder; returns the metrics.

    Samples labelled -1 (a class the model does not know) are predicted and listed in predictions.csv
    but kept out of the metrics, and counted in ``metrics["unknown_class_samples"]``.
    """
    from classifier.metrics import compute_metrics
    from classifier.report.writer import prediction_rows, write_evaluation_report

    probs, labels, indices, skipped = run_predictions(predict_fn, samples, channels, batch_size=batch_size,
                                                      progress=progress)
    known = labels >= 0
    metrics = compute_metrics(labels[known], probs[known], classes)
    metrics["unknown_class_samples"] = int((~known).sum())
    metrics["skipped_files"] = skipped
    rows = prediction_rows([sample_name(samples, i) for i in indices], probs, classes, y_true=labels)
    grid = grid_samples(samples, indices, probs, labels, channels) if len(indices) else None
    write_evaluation_report(out_dir, metrics, predictions=rows, sample_images=grid, history=history,
                            title=title, source=source)
    return metrics


def evaluate_run_model(run) -> dict:
    """End of training: the best checkpoint on the run's test split, report in runs/NAME/eval/."""
    from classifier.checkpoint import load_checkpoint
    from classifier.report.plots import confusion_matrix_figure

    best = Path(run.dir) / "best.pt"
    model = run.raw_model
    if best.exists():
        model.load_state_dict(load_checkpoint(best)["model"])
    # in fp32 even when training used autocast: the figure the run reports is the one eval.py and the
    # fp32 ONNX export reproduce from best.pt
    predict_fn = torch_predict_fn(model, run.data.prep, run.device, None, tta_flip=run.cfg.tta_flip)
    metrics = evaluate_and_report(predict_fn, run.data.splits["test"], run.data.classes, run.data.prep.channels,
                                  Path(run.dir) / "eval", title=f"{run.cfg.model} on {run.cfg.dataset} (test split)",
                                  source=str(best), history=run.state.history, progress=run.cfg.progress)
    cm = np.asarray(metrics["confusion_matrix"])
    print(f"test accuracy {metrics['accuracy']:.2%} on {metrics['n_samples']} images; report: {Path(run.dir) / 'eval' / 'report.md'}")
    return {"test_accuracy": metrics["accuracy"], "_confusion_figure": confusion_matrix_figure(cm, run.data.classes)}

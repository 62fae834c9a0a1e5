"""The post-training step: temperature and "unknown" threshold fitted on a model's validation split, stored
in its checkpoint (keys ``temperature`` and ``ood``), read back by the predictor and the export.

Checkpoint keys (absent in older checkpoints: temperature 1, no rejection)::

    temperature  float, divides the logits before the softmax
    ood          {"score": name in trust.ood.SCORES, "threshold": float, "keep": share of val images kept,
                  "stats": {name: tensor} for feature scores (class means + precision, or the kNN bank)}
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from classifier.checkpoint import load_checkpoint, save_checkpoint
from classifier.engine.features import cached_feature_loader
from classifier.evaluation import iter_image_batches
from classifier.inference import flip_averaged, model_input
from classifier.models import model_from_checkpoint
from classifier.preprocess import Preprocessing
from classifier.trust.calibrate import fit_multilabel_temperature, fit_temperature
from classifier.trust.ood import DEFAULT_KEEP, fit_feature_stats, ood_scores, score_entry, threshold_keeping

DEFAULT_OOD_SCORE = "mahalanobis"  # chosen by bench/trust.py (docs/trust.md): best AUROC and FPR95 on held-out classes
MAX_FEATURE_IMAGES = 10000  # training images whose features a feature score is fitted on (a seeded subset)


def model_outputs(model, images, prep: Preprocessing, *, tta_flip: bool = False):
    """(logits, penultimate features) as float32 numpy for uint8 HWC images (a list or an NHWC array)."""
    model.eval()
    x = model_input(images, prep)
    with torch.inference_mode():
        features = model.forward_features(x)
        logits = flip_averaged(model, x) if tta_flip else model.forward_head(features)
    return logits.float().numpy(), features.float().numpy()


def sample_outputs(model, samples, prep: Preprocessing, *, tta_flip: bool = False, batch_size: int = 256,
                   limit: int | None = None, seed: int = 0):
    """(logits, features, labels) over readable ``samples`` (at most ``limit``, a seeded subset)."""
    if limit is not None and len(samples) > limit:
        samples = samples.subset(np.sort(np.random.default_rng(seed).permutation(len(samples))[:limit]))
    logits, features, labels = [], [], []
    for _, images, y in iter_image_batches(samples, prep.channels, batch_size, []):
        lo, fe = model_outputs(model, images, prep, tta_flip=tta_flip)
        logits.append(lo)
        features.append(fe)
        labels.append(y)
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(logits), np.concatenate(features), np.concatenate(labels)


def fit_trust(model, prep: Preprocessing, val, train=None, *, calibrate: bool = True, score: str = DEFAULT_OOD_SCORE,
              keep: float = DEFAULT_KEEP, tta_flip: bool = False, features=None) -> dict:
    """Checkpoint keys (``temperature``, ``ood``) fitted on ``val`` Samples (``train``: for feature scores).

    ``features``: {"val": (features, labels), "train": ...} already computed by the frozen backbone (the
    feature cache of a feature-extract run): the head runs on them instead of the model on the images.
    A feature score without training samples falls back to the maximum softmax probability.
    """
    features_of = features or {}
    if "val" in features_of and not tta_flip:
        features, labels = features_of["val"]
        with torch.inference_mode():
            logits = model.forward_head(torch.as_tensor(features)).float().numpy()
    else:
        logits, features, labels = sample_outputs(model, val, prep, tta_flip=tta_flip)
    known = labels >= 0
    if not known.any():
        return {}
    temperature = fit_temperature(logits[known], labels[known]) if calibrate else 1.0
    if score_entry(score).on_features and (train is None or not len(train)):
        score = "msp"
    ood = fit_unknown_rule(model, prep, logits[known], features[known], train, score=score, keep=keep,
                           temperature=temperature, train_features=features_of.get("train"))
    return {"temperature": float(temperature), "ood": ood}


def fit_unknown_rule(model, prep: Preprocessing, logits, features, train, *, score: str, keep: float,
                     temperature=1.0, train_features=None) -> dict:
    """The checkpoint's ``ood`` entry: ``score``'s threshold keeping ``keep`` of the validation images
    (``logits``, ``features``); a feature score fitted on ``train``'s features first (``train_features``:
    (features, labels) already computed)."""
    stats = None
    if score_entry(score).on_features:
        if train_features is None:
            _, found, labels = sample_outputs(model, train, prep, limit=MAX_FEATURE_IMAGES)
            train_features = (found, labels)
        stats = fit_feature_stats(score, *train_features, logits.shape[1])
    val_scores = ood_scores(score, logits, features, temperature=temperature, stats=stats)
    ood = {"score": score, "threshold": threshold_keeping(val_scores, keep), "keep": float(keep)}
    if stats is not None:
        ood["stats"] = {k: torch.as_tensor(v) for k, v in stats.items()}
    return ood


def fit_run_trust(run, summary: dict) -> None:
    """End of training (before the test evaluation): fit the temperature and the "unknown" threshold of
    best.pt on the run's validation split, store them in best.pt, and put the temperature in summary.json.
    Nothing happens without a validation split. Multi-label runs get a temperature (shared or per class,
    chosen by measurement), their decision thresholds refitted on the calibrated validation probabilities
    (each class's best F1 again; a ``--threshold`` given stays), and a kNN "unknown" rule
    (``_calibrate_multilabel``)."""
    cfg, best = run.cfg, Path(run.dir) / "best.pt"
    val = run.data.splits.get("val")
    if not best.exists() or val is None or not len(val):
        return
    ckpt = load_checkpoint(best)
    model = model_from_checkpoint(ckpt)
    if np.asarray(val.labels).ndim == 2:
        return _calibrate_multilabel(run, ckpt, model, val, summary)
    fitted = fit_trust(model, Preprocessing.from_dict(ckpt["preprocessing"]), val, run.data.splits.get("train"),
                       calibrate=cfg.calibrate, score=cfg.ood_score, keep=cfg.reject_keep, tta_flip=cfg.tta_flip,
                       features=cached_features(run))
    if not fitted:
        return
    ckpt.pop("format", None)
    save_checkpoint({**ckpt, **fitted}, best)
    summary["temperature"] = fitted["temperature"]
    ood = fitted["ood"]
    print(("" if not cfg.calibrate else f"calibration: temperature {fitted['temperature']:.3f} (fitted on "
           f"{len(val)} validation images); ") + f"unknown below {ood['score']} {ood['threshold']:.4g} "
          f"(keeps {ood['keep']:.0%} of validation images)", flush=True)


def cached_features(run) -> dict:
    """{split: (features, labels)} of the train and val images from the feature cache, for a feature-extract run
    whose head trained on it (the frozen backbone is best.pt's: the same features); {} otherwise. Training
    images give their first cached view (an augmented one when the run augments)."""
    cfg = run.cfg
    if cfg.mode != "feature-extract" or cfg.feature_cache == "off" or run.dist.enabled or cfg.compile:
        return {}
    out = {}
    for split in ("val", "train"):
        loader = run.data.loaders.get(split)
        if loader is None or not len(loader.samples):
            continue
        cached, _ = cached_feature_loader(run.raw_model, loader, views=1 if split == "val" else cfg.feature_views,
                                          device=run.device, amp_dtype=run.amp_dtype, channels_last=run.channels_last)
        if cached is not None:
            out[split] = (cached.features[0].float().cpu().numpy(), np.asarray(loader.samples.labels))
    return out


MULTILABEL_OOD_SCORE = "knn"  # the class-mean and softmax scores assume one class per image


def _calibrate_multilabel(run, ckpt: dict, model, val, summary: dict) -> None:
    """A multi-label run's temperature (``calibrate``) and its "unknown" rule: the kNN distance to the
    training features whatever ``ood_score`` says (mahalanobis measures the distance to the nearest class
    mean, msp and energy a softmax: an image of several classes, or of none, is far from all of them)."""
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    logits, features, targets = sample_outputs(model, val, prep, tta_flip=run.cfg.tta_flip)
    update, lines = {}, []
    if run.cfg.calibrate:
        temperature, kind = fit_multilabel_temperature(logits, targets)
        if not np.all(np.asarray(temperature) == 1.0):
            update["temperature"] = float(temperature) if kind == "shared" else [float(t) for t in temperature]
            if ckpt.get("thresholds") is not None and run.cfg.threshold is None:  # refitted on calibrated probs
                update["thresholds"] = run.task.fit_thresholds(
                    run.task.probabilities(logits / np.asarray(temperature)), targets)
            summary["temperature"] = update["temperature"]
            lines.append(f"{kind} temperature {np.round(temperature, 3).tolist()} (fitted on {len(val)} validation "
                         "images; decision thresholds refitted on the calibrated probabilities)")
    train = run.data.splits.get("train")
    if train is not None and len(train):
        features_of = cached_features(run)
        ood = fit_unknown_rule(model, prep, logits, features, train, score=MULTILABEL_OOD_SCORE,
                               keep=run.cfg.reject_keep, train_features=features_of.get("train"))
        update["ood"] = ood
        lines.append(f"unknown below {ood['score']} {ood['threshold']:.4g} (keeps {ood['keep']:.0%} of validation "
                     f"images{'' if run.cfg.ood_score == MULTILABEL_OOD_SCORE else '; multi-label: knn'})")
    if not update:
        return
    ckpt.pop("format", None)
    save_checkpoint({**ckpt, **update}, Path(run.dir) / "best.pt")
    print("calibration: " + "; ".join(lines), flush=True)

"""Out-of-distribution ("none of my classes") scores, the rejection threshold, and how well a score
separates known from unknown images.

Every score is oriented the same way: higher = more like the training classes. Scores on the logits
(after temperature scaling) need nothing but the model's output; scores on the penultimate features
(the pooled backbone output the head reads) need statistics of the training features, fitted once:

    msp          maximum softmax probability (Hendrycks & Gimpel 2017)
    energy       logsumexp of the logits, i.e. minus the free energy (Liu et al. 2020)
    mahalanobis  minus the smallest Mahalanobis distance to a class mean, shared covariance (Lee et al. 2018)
    knn          minus the distance to the k-th nearest training feature, features L2-normalised (Sun et al. 2022)

``threshold_keeping(val_scores, keep)`` is the score below which an image is answered "unknown", chosen so
that a share ``keep`` of in-distribution validation images stays above it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from classifier.errors import ClassifierError, unknown_choice

DEFAULT_KEEP = 0.95  # share of in-distribution validation images the threshold keeps
KNN_K = 10
KNN_BANK = 20000  # training features kept for kNN (a seeded subset of larger splits)
SHRINKAGE = 1e-3  # ridge on the covariance, relative to its mean variance


def _logits(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def msp_score(logits, temperature: float = 1.0, stats=None) -> np.ndarray:
    return torch.softmax(_logits(logits) / temperature, dim=1).max(dim=1).values.numpy()


def energy_score(logits, temperature: float = 1.0, stats=None) -> np.ndarray:
    return (temperature * torch.logsumexp(_logits(logits) / temperature, dim=1)).numpy()


@dataclass(frozen=True)
class OODScore:
    name: str
    on_features: bool  # needs the penultimate features (and statistics fitted on training features)
    description: str


SCORES = {
    "msp": OODScore("msp", False, "maximum softmax probability"),
    "energy": OODScore("energy", False, "energy (logsumexp of the logits)"),
    "mahalanobis": OODScore("mahalanobis", True, "Mahalanobis distance to the nearest class mean (features)"),
    "knn": OODScore("knn", True, f"distance to the {KNN_K}th nearest training feature (normalised features)"),
}


def score_entry(name: str) -> OODScore:
    if name not in SCORES:
        raise unknown_choice("ood score", name, list(SCORES))
    return SCORES[name]


def fit_feature_stats(name: str, features, labels, num_classes: int, *, seed: int = 0) -> dict | None:
    """What a feature score needs from the training features (plain numpy arrays); None for logit scores."""
    if not score_entry(name).on_features:
        return None
    f = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if name == "knn":
        if len(f) > KNN_BANK:
            f = f[np.sort(np.random.default_rng(seed).permutation(len(f))[:KNN_BANK])]
        bank = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        return {"bank": bank.astype(np.float32), "k": KNN_K}
    present = [c for c in range(num_classes) if (labels == c).any()]
    means = np.stack([f[labels == c].mean(0) if c in present else np.full(f.shape[1], np.inf)
                      for c in range(num_classes)])
    centred = f - means[labels]
    cov = centred.T @ centred / max(len(f) - 1, 1)
    cov += SHRINKAGE * max(np.trace(cov) / len(cov), 1e-12) * np.eye(len(cov))
    means = means[present]  # classes without training features take no part
    centre = means.mean(0)  # subtracted first: smaller numbers, less float32 cancellation in the expanded form
    return {"means": (means - centre).astype(np.float32), "precision": np.linalg.inv(cov).astype(np.float32),
            "centre": centre.astype(np.float32)}


def ood_scores(name: str, logits, features=None, *, temperature: float = 1.0, stats: dict | None = None) -> np.ndarray:
    """Score ``name`` for each image (higher: more like the training classes)."""
    entry = score_entry(name)
    if not entry.on_features:
        return {"msp": msp_score, "energy": energy_score}[name](logits, temperature)
    if features is None or stats is None:
        raise ClassifierError(f"the {name} score needs the model's features and fitted statistics; "
                              "this model carries none (export it from its checkpoint again)")
    with torch.inference_mode():  # the exported graph's own operations, so every backend gives the same numbers
        return FeatureScore(name, stats)(torch.as_tensor(np.asarray(features), dtype=torch.float32)).double().numpy()


def threshold_keeping(scores, keep: float = DEFAULT_KEEP) -> float:
    """The largest threshold t with share(scores >= t) >= keep: images scoring below t are "unknown"."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    if not 0 < keep <= 1:
        raise ClassifierError(f"the share of validation images to keep must be in (0, 1], got {keep}")
    if not len(scores):
        raise ClassifierError("no validation images to choose a rejection threshold on")
    t = float(scores[int(np.floor(len(scores) * (1 - keep) + 1e-9))])
    return t - 1e-5 * max(1.0, abs(t))  # a hair below that image's score: float noise of another batch keeps it


def fpr_at_tpr(id_scores, ood_scores_, tpr: float = 0.95) -> float:
    """Share of unknown images scoring at or above the threshold that keeps ``tpr`` of the known ones."""
    return float((np.asarray(ood_scores_) >= threshold_keeping(id_scores, tpr)).mean())


def separation(id_scores, ood_scores_, threshold: float | None = None) -> dict:
    """AUROC (known = positive; scikit-learn), FPR at 95% TPR, and the unknown share rejected at ``threshold``."""
    from sklearn.metrics import roc_auc_score  # here: ~0.5 s to import, only evaluation with --ood needs it

    id_scores, ood_scores_ = np.asarray(id_scores, np.float64), np.asarray(ood_scores_, np.float64)
    if not len(id_scores) or not len(ood_scores_):
        raise ClassifierError("OOD metrics need both known and unknown images")
    y = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores_))]
    out = {"auroc": float(roc_auc_score(y, np.r_[id_scores, ood_scores_])),
           "fpr95": fpr_at_tpr(id_scores, ood_scores_)}
    if threshold is not None:
        out["rejected"] = float((ood_scores_ < threshold).mean())
        out["known_kept"] = float((id_scores >= threshold).mean())
    return out


OOD_OUTPUT = "ood_score"  # the exported graph's output for feature scores (computed in the graph)


def ood_metadata(ood: dict | None) -> dict:
    """The ONNX metadata of a checkpoint's "unknown" rule: ``ood_score``, ``reject_threshold``, ``reject_keep``.
    Feature scores are computed in the graph (output ``ood_score``); logit scores by the client from the
    logits divided by ``temperature``."""
    if not ood:
        return {}
    return {"ood_score": ood["score"], "reject_threshold": float(ood["threshold"]), "reject_keep": float(ood["keep"])}


def ood_from_metadata(meta: dict) -> dict | None:
    """The rule back from ONNX metadata (None in files exported before it existed)."""
    if meta.get("ood_score") is None or meta.get("reject_threshold") is None:
        return None
    return {"score": meta["ood_score"], "threshold": float(meta["reject_threshold"]),
            "keep": float(meta.get("reject_keep", DEFAULT_KEEP))}


class FeatureScore(torch.nn.Module):
    """The feature scores as operations on the penultimate features (fitted statistics as constants, float32):
    ``ood_scores`` runs it, and the exported graph holds it, so both give the same numbers.

    mahalanobis: minus min over classes of (f - mu)^T P (f - mu), expanded as f^T P f - 2 f^T P mu + mu^T P mu;
    knn: minus the Euclidean distance of the normalised f to its k-th nearest normalised training feature."""

    def __init__(self, name: str, stats: dict):
        super().__init__()
        self.name = name
        for key, value in stats.items():
            if key != "k":
                self.register_buffer(key, torch.as_tensor(np.asarray(value), dtype=torch.float32))
        self.k = int(np.asarray(stats.get("k", KNN_K)))

    def forward(self, f):
        if self.name == "knn":
            sims = torch.nn.functional.normalize(f, dim=1) @ self.bank.T
            kth = sims.topk(min(self.k, self.bank.shape[0]), dim=1).values[:, -1]
            return -torch.sqrt(torch.clamp(2 - 2 * kth, min=0))
        f = f - self.centre
        fp = f @ self.precision
        d = (fp * f).sum(1, keepdim=True) - 2 * fp @ self.means.T + ((self.means @ self.precision) * self.means).sum(1)
        return -d.min(dim=1).values


UNKNOWN = "unknown"  # the label of a rejected image (predict(reject=True))


def apply_rejection(predictions: list, scores, threshold: float) -> None:
    """Label ``unknown`` the predictions whose score is below ``threshold`` (index -1, probabilities kept)."""
    for prediction, score in zip(predictions, scores):
        prediction.ood_score = float(score)
        if score < threshold:
            prediction.label, prediction.index, prediction.labels = UNKNOWN, -1, []

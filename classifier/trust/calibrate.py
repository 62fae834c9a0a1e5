"""Temperature scaling (Guo et al. 2017): one scalar T > 0 that divides the logits before the softmax,
fitted to minimise the negative log-likelihood of the validation split. It changes no prediction (argmax
is unchanged), only how confident the probabilities are; over-fitted runs get T > 1.

Multi-label outputs (a sigmoid per class) take the same scalar on each logit, or one per class:
``fit_temperature(..., multilabel=True, per_class=...)``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from classifier.errors import ClassifierError

T_MIN, T_MAX = 0.05, 20.0  # the search range; a temperature at either end means the fit found no optimum


def softmax_nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / T)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / float(temperature)
    return float(F.cross_entropy(z, torch.as_tensor(np.asarray(labels), dtype=torch.int64)))


def sigmoid_nll(logits, targets, temperature=1.0) -> float:
    """Mean binary cross-entropy of 0/1 ``targets`` under sigmoid(logits / T) (T scalar or per class)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / torch.as_tensor(np.asarray(temperature, float))
    return float(F.binary_cross_entropy_with_logits(z, torch.as_tensor(np.asarray(targets), dtype=torch.float64)))


def fit_temperature(logits, labels, *, multilabel: bool = False, per_class: bool = False):
    """The temperature minimising validation NLL: a float (or, multi-label with ``per_class``, an array).

    A 1-D convex-in-practice problem in log T: bounded golden-section search, then never worse than T = 1
    (the identity is returned when the fit does not lower the NLL, e.g. on a handful of images).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or len(logits) != len(labels) or len(logits) == 0:
        raise ClassifierError(f"temperature fit needs (N, C) logits and N labels, got {logits.shape} and "
                              f"{labels.shape}")
    if multilabel and per_class:
        return np.array([fit_temperature(logits[:, [c]], labels[:, [c]], multilabel=True)
                         for c in range(logits.shape[1])])
    nll = (lambda t: sigmoid_nll(logits, labels, t)) if multilabel else (lambda t: softmax_nll(logits, labels, t))
    best = _golden_min(lambda log_t: nll(np.exp(log_t)), np.log(T_MIN), np.log(T_MAX))
    t = float(np.exp(best))
    if not T_MIN * 1.05 < t < T_MAX / 1.05:  # at a bound: no optimum (e.g. a validation set it gets all right)
        return 1.0
    return t if nll(t) < nll(1.0) else 1.0


def _golden_min(f, lo: float, hi: float, iters: int = 60) -> float:
    ratio = (np.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2


def uncalibrated_calibration(probs, labels, temperature: float, bins: int = 15) -> dict:
    """The reliability figures of the raw softmax, recovered from calibrated probabilities (softmax of
    T * log p is the raw softmax), for the report's before/after: {} when no temperature was applied."""
    from classifier.metrics import calibration_bins  # here: metrics is a report-side module

    if temperature == 1.0 or not len(probs):
        return {}
    z = temperature * np.log(np.maximum(np.asarray(probs, np.float64), 1e-300))
    z -= z.max(axis=1, keepdims=True)
    raw = np.exp(z)
    raw /= raw.sum(axis=1, keepdims=True)
    bins_ = calibration_bins(raw.max(1), raw.argmax(1) == np.asarray(labels), bins)
    return {"temperature": float(temperature), "ece_uncalibrated": bins_["ece"], "calibration_uncalibrated": bins_}


def fit_multilabel_temperature(logits, targets, seed: int = 0):
    """Shared or per-class temperature for sigmoid outputs, chosen by measurement: each is fitted on one half
    of the validation images and scored (NLL) on the other, both ways; the lower total wins and is then
    fitted on all of them. Returns (temperature: float or per-class array, "shared" | "per-class")."""
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets)
    order = np.random.default_rng(seed).permutation(len(logits))
    halves = (order[: len(order) // 2], order[len(order) // 2:])
    held_out = {"shared": 0.0, "per-class": 0.0}
    if min(len(h) for h in halves):
        for fit_on, test_on in (halves, halves[::-1]):
            for kind in held_out:
                t = fit_temperature(logits[fit_on], targets[fit_on], multilabel=True, per_class=kind == "per-class")
                held_out[kind] += sigmoid_nll(logits[test_on], targets[test_on], t)
    kind = "per-class" if held_out["per-class"] < held_out["shared"] else "shared"
    return fit_temperature(logits, targets, multilabel=True, per_class=kind == "per-class"), kind


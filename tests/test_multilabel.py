"""Multi-label classification: the task object (loss, thresholds, metrics vs scikit-learn), the carved
split, and a multi-label run end to end (thresholds saved and applied by every consumer)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (accuracy_score, average_precision_score, f1_score, hamming_loss, precision_score,
                             recall_score)

from classifier.data.labelsets import multilabel_partition
from classifier.tasks import DEFAULT_THRESHOLD, fit_thresholds, get_task, multilabel_metrics, resolve_task

CLASSES = ["a", "b", "c", "d"]


def _fixed(seed=0, n=60):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 4)) < 0.35).astype(int)
    y[:, 3] = 0  # class d: no positives (AP undefined, threshold stays 0.5)
    probs = np.clip(0.6 * y + 0.5 * rng.random((n, 4)), 0, 1)
    return y, probs


def test_metrics_equal_sklearn():
    y, probs = _fixed()
    t = [0.4, 0.55, 0.5, 0.7]
    m = multilabel_metrics(y, probs, CLASSES, t)
    pred = (probs >= np.array(t)).astype(int)
    ap = [average_precision_score(y[:, c], probs[:, c]) for c in range(3)]
    assert m["mAP"] == pytest.approx(np.mean(ap))
    assert m["per_class"]["d"]["ap"] is None and m["per_class"]["d"]["recall"] is None
    for c, name in enumerate(CLASSES[:3]):
        assert m["per_class"][name]["ap"] == pytest.approx(ap[c])
        assert m["per_class"][name]["precision"] == pytest.approx(precision_score(y[:, c], pred[:, c]))
        assert m["per_class"][name]["recall"] == pytest.approx(recall_score(y[:, c], pred[:, c]))
        assert m["per_class"][name]["f1"] == pytest.approx(f1_score(y[:, c], pred[:, c]))
    assert m["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert m["OF1"] == m["micro_f1"]
    assert m["OP"] == pytest.approx(precision_score(y, pred, average="micro"))
    assert m["OR"] == pytest.approx(recall_score(y, pred, average="micro"))
    defined = [f1_score(y[:, c], pred[:, c]) for c in range(3)] + ([f1_score(y[:, 3], pred[:, 3])]
                                                                 if pred[:, 3].any() else [])
    assert m["macro_f1"] == pytest.approx(np.mean(defined))
    cp = np.mean([precision_score(y[:, c], pred[:, c]) for c in range(4) if pred[:, c].any()])
    cr = np.mean([recall_score(y[:, c], pred[:, c]) for c in range(3)])
    assert (m["CP"], m["CR"]) == (pytest.approx(cp), pytest.approx(cr))
    assert m["CF1"] == pytest.approx(2 * cp * cr / (cp + cr))
    assert m["subset_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["hamming_loss"] == pytest.approx(hamming_loss(y, pred))
    assert m["label_cooccurrence"] == (y.T @ y).tolist()


def test_thresholds_maximise_each_class_f1():
    y, probs = _fixed(1)
    t = fit_thresholds(probs, y)
    assert t[3] == DEFAULT_THRESHOLD  # absent from validation
    for c in range(3):
        best = max(f1_score(y[:, c], probs[:, c] >= cut) for cut in np.unique(probs[:, c]))
        assert f1_score(y[:, c], probs[:, c] >= t[c]) == pytest.approx(best)
    fitted = multilabel_metrics(y, probs, CLASSES, t)["macro_f1"]
    assert fitted >= multilabel_metrics(y, probs, CLASSES)["macro_f1"]


def test_task_loss_and_decisions():
    task = get_task("multilabel")
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    y = torch.tensor([[1, 0, 1]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float())
    assert task.loss(logits, y).item() == pytest.approx(expected.item())
    weight = torch.tensor([1.0, 1.0, 3.0])
    assert task.loss(logits, y, weight=weight).item() > expected.item()
    np.testing.assert_array_equal(task.decide(np.array([[0.6, 0.2, 0.3]]), [0.5, 0.1, 0.4]), [[1, 1, 0]])
    np.testing.assert_array_equal(get_task("multiclass").decide(np.array([[0.2, 0.5, 0.3]])), [[0, 1, 0]])
    np.testing.assert_allclose(task.loss_weights(np.array([[1, 0], [1, 0], [0, 1], [1, 0]]), 2), [1 / 3, 3.0])
    assert resolve_task("auto", np.zeros((3, 2))) == "multilabel"
    assert resolve_task("auto", np.zeros(3)) == "multiclass"


def test_carved_split_keeps_every_label_in_train():
    rng = np.random.default_rng(0)
    y = (rng.random((40, 6)) < 0.3).astype(int)
    y[:, 5] = 0
    y[[3, 17], 5] = 1  # a rare label: 2 images
    for seed in range(5):
        test, val, train = multilabel_partition(y, 0.3, 0.2, seed)
        assert sorted(np.concatenate([test, val, train]).tolist()) == list(range(40))
        assert (y[train].sum(0) > 0).all()
        assert len(test) >= 10 and len(val) >= 6

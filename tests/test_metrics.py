import json

import numpy as np
import pytest

from classifier.errors import ClassifierError
from classifier.metrics import (calibration_bins, compute_metrics, confusion_matrix,
                                expected_calibration_error, topk_accuracy)

# Five classes: "c" has samples but is never predicted; "d" has no samples but is predicted once;
# "e" has neither. Predictions (argmax of each row): [a, a, b, b, a, a, b, d].
CLASSES = ["a", "b", "c", "d", "e"]
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2])
PROBS = np.array([
    [0.70, 0.20, 0.10, 0.00, 0.0],
    [0.60, 0.10, 0.30, 0.00, 0.0],
    [0.30, 0.60, 0.10, 0.00, 0.0],
    [0.10, 0.80, 0.10, 0.00, 0.0],
    [0.50, 0.10, 0.40, 0.00, 0.0],
    [0.60, 0.10, 0.30, 0.00, 0.0],
    [0.25, 0.50, 0.10, 0.15, 0.0],
    [0.10, 0.10, 0.30, 0.50, 0.0],
])


@pytest.fixture(scope="module")
def m():
    return compute_metrics(Y_TRUE, PROBS, CLASSES, topk=(1, 2, 3, 5), ece_bins=5)


def test_confusion_matrix_rows_true_columns_pred(m):
    assert m["confusion_matrix"] == [
        [2, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 0, 1, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]
    assert m["n_samples"] == 8 and m["num_classes"] == 5 and m["classes"] == CLASSES
    assert m["accuracy"] == pytest.approx(3 / 8)


def test_per_class_counts_and_ratios(m):
    a, b = m["per_class"]["a"], m["per_class"]["b"]
    assert (a["TP"], a["FP"], a["TN"], a["FN"], a["support"]) == (2, 2, 3, 1, 3)
    assert a["precision"] == pytest.approx(0.5)
    assert a["recall"] == pytest.approx(2 / 3)
    assert a["f1"] == pytest.approx(4 / 7)
    assert a["specificity"] == pytest.approx(3 / 5)
    assert a["accuracy"] == pytest.approx(5 / 8)
    assert (b["TP"], b["FP"], b["TN"], b["FN"]) == (1, 2, 4, 1)
    assert b["precision"] == pytest.approx(1 / 3) and b["recall"] == pytest.approx(0.5)
    assert b["f1"] == pytest.approx(0.4) and b["specificity"] == pytest.approx(4 / 6)


def test_zero_division_policy(m):
    c, d, e = (m["per_class"][k] for k in "cde")
    # Never predicted, has samples: precision undefined, recall and F1 are 0.
    assert c["precision"] is None and c["recall"] == 0.0 and c["f1"] == 0.0 and c["specificity"] == 1.0
    # No samples, predicted once: precision 0, recall undefined, F1 0.
    assert d["precision"] == 0.0 and d["recall"] is None and d["f1"] == 0.0 and d["support"] == 0
    assert d["specificity"] == pytest.approx(7 / 8)
    # Neither: everything undefined except specificity and accuracy.
    assert e["precision"] is None and e["recall"] is None and e["f1"] is None
    assert e["specificity"] == 1.0 and e["accuracy"] == 1.0


def test_averages_skip_undefined_values(m):
    assert m["macro_precision"] == pytest.approx((0.5 + 1 / 3 + 0) / 3)  # a, b, d
    assert m["macro_recall"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)  # a, b, c
    assert m["macro_f1"] == pytest.approx((4 / 7 + 2 / 5 + 0 + 0) / 4)  # a, b, c, d
    assert m["weighted_precision"] == pytest.approx((3 * 0.5 + 2 / 3 + 0) / 5)  # c undefined, d weight 0
    assert m["weighted_recall"] == pytest.approx(m["accuracy"])  # always true when recall is defined
    assert m["weighted_f1"] == pytest.approx((3 * 4 / 7 + 2 * 2 / 5) / 8)


def test_best_and_worst_class_among_classes_with_samples(m):
    assert m["best_class"] == {"name": "a", "f1": pytest.approx(4 / 7)}
    assert m["worst_class"] == {"name": "c", "f1": 0.0}  # d also has F1 0 but no samples


def test_topk_only_below_num_classes(m):
    assert m["topk_accuracy"] == {"1": pytest.approx(3 / 8), "2": pytest.approx(6 / 8), "3": pytest.approx(7 / 8)}
    assert topk_accuracy(Y_TRUE, PROBS, 5) == 1.0


def test_most_confused_pairs_sorted_off_diagonal():
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 2, 1, 0, 0, 0, 1, 1]
    probs = np.eye(3)[y_pred]
    pairs = compute_metrics(y_true, probs, ["x", "y", "z"])["most_confused"]
    assert pairs == [
        {"true": "x", "pred": "y", "count": 2},
        {"true": "y", "pred": "x", "count": 2},
        {"true": "z", "pred": "y", "count": 2},
        {"true": "x", "pred": "z", "count": 1},
        {"true": "z", "pred": "x", "count": 1},
    ]


def test_ece_hand_computed(m):
    # Bin (0.4, 0.6]: six samples, 1 correct, mean confidence 0.55; bin (0.6, 0.8]: two, both right, 0.75.
    expected = 6 / 8 * abs(1 / 6 - 0.55) + 2 / 8 * abs(1 - 0.75)
    assert m["ece"] == pytest.approx(expected) == pytest.approx(0.35)
    cal = m["calibration"]
    assert cal["counts"] == [0, 0, 6, 2, 0]
    assert cal["accuracy"][:3] == [None, None, pytest.approx(1 / 6)] and cal["confidence"][3] == pytest.approx(0.75)


def test_ece_edges_and_perfect_calibration():
    assert expected_calibration_error([0.0, 1.0], [0, 1], bins=10) == 0.0  # 0 -> first bin, 1 -> last
    assert calibration_bins([0.0, 1.0], [0, 1], bins=10)["counts"] == [1] + [0] * 8 + [1]
    conf = [0.25] * 4 + [0.75] * 4
    correct = [1, 0, 0, 0] + [1, 1, 1, 0]
    assert expected_calibration_error(conf, correct, bins=2) == pytest.approx(0.0)
    assert expected_calibration_error([0.9] * 4, [1, 0, 0, 0], bins=15) == pytest.approx(0.65)


def test_result_is_plain_json(m):
    assert json.loads(json.dumps(m, allow_nan=False)) == json.loads(json.dumps(m))
    assert isinstance(m["per_class"]["a"]["TP"], int) and isinstance(m["accuracy"], float)


def test_confusion_matrix_helper_and_errors():
    assert confusion_matrix([0, 1, 1], [1, 1, 0], 2).tolist() == [[0, 1], [1, 1]]
    with pytest.raises(ClassifierError, match="label 3 is outside 0..2"):
        confusion_matrix([0, 3], [0, 0], 3)
    with pytest.raises(ClassifierError, match="0 samples"):
        compute_metrics([], np.zeros((0, 3)), ["x", "y", "z"])
    with pytest.raises(ClassifierError, match=r"shape \(N, 2\)"):
        compute_metrics([0], np.zeros((1, 3)), ["x", "y"])

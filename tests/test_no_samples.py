"""Classes absent from the evaluated data are reported as "no samples", never ranked as worst."""
from __future__ import annotations

import json

import numpy as np

from classifier.commands.eval import print_summary
from classifier.metrics import compute_metrics, worst_classes
from classifier.report.writer import write_evaluation_report

# "red" has samples; "green" has none and is never predicted; "blue" has none but is predicted once
CLASSES = ["blue", "green", "red"]
Y_TRUE = np.array([2, 2, 2, 2])
PROBS = np.array([[0.1, 0.1, 0.8], [0.2, 0.1, 0.7], [0.6, 0.1, 0.3], [0.1, 0.2, 0.7]])


def test_metrics_list_absent_classes_and_rank_only_present_ones():
    m = compute_metrics(Y_TRUE, PROBS, CLASSES)
    assert m["no_samples"] == ["blue", "green"]
    assert m["per_class"]["blue"]["f1"] == 0.0  # predicted once, no samples: F1 is 0, still not "worst"
    assert worst_classes(m["per_class"]) == [("red", m["per_class"]["red"]["f1"])]
    assert m["worst_class"]["name"] == "red"


def test_report_and_console_say_no_samples(tmp_path, capsys):
    m = compute_metrics(Y_TRUE, PROBS, CLASSES)
    write_evaluation_report(tmp_path, m, predictions=[])
    assert json.loads((tmp_path / "metrics.json").read_text())["no_samples"] == ["blue", "green"]
    report = (tmp_path / "report.md").read_text()
    assert "| no samples (not ranked) | blue, green |" in report
    table = report.split("## Per-class results")[1].split("##")[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["blue"].endswith("| no samples |") and rows["green"].endswith("| no samples |")
    assert rows["red"].endswith("| **best** |")  # the only ranked class is best and worst at once

    print_summary(m, tmp_path)
    out = capsys.readouterr().out
    assert "worst classes (F1): red 0.857\n" in out
    assert "no samples: blue, green (not in the evaluated data)\n" in out

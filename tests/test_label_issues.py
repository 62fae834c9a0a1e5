"""Mislabelled images (classifier/label_issues.py: k-fold out-of-fold probabilities + cleanlab) and
--exclude (classifier/data/exclude.py)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import classifier
from classifier.commands.train import main as train_main
from classifier.data import run_splits
from classifier.data.exclude import sample_ids
from classifier.errors import ClassifierError
from classifier.label_issues import FILTERS, rank_label_issues
from tests.conftest import write_class_images
from tests.test_folds import FAST, folder_hash, stripes


def test_cleanlab_ranks_the_contradicted_labels_first():
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 3
    probs = rng.dirichlet([1, 1, 1], 300) * 0.2
    probs[np.arange(300), labels] += 0.8  # the model agrees with the given label ...
    wrong = np.array([5, 50, 120, 200])
    probs[wrong] = np.roll(probs[wrong], 1, axis=1)  # ... except on these
    flagged, scores = rank_label_issues(labels, probs, "prune_by_noise_rate")
    assert set(flagged.tolist()) <= set(wrong.tolist()) and len(flagged) >= 3  # cleanlab's count estimate
    default, _ = rank_label_issues(labels, probs)  # 3 classes: off_diagonal counts fewer (2), none of them wrong
    assert 1 <= len(default) <= len(flagged) and set(default.tolist()) <= set(wrong.tolist())
    assert set(np.argsort(scores)[:4].tolist()) == set(wrong.tolist())  # the four lowest label qualities
    assert np.all(np.diff(scores[flagged]) >= 0)  # most suspicious (lowest quality) first
    with pytest.raises(ClassifierError, match="no train"):
        rank_label_issues(np.zeros(10, int), np.full((10, 2), 0.5))


def test_the_default_rule_flags_cleanlabs_count_of_the_lowest_given_label_probabilities(capsys):
    from cleanlab.count import num_label_issues

    rng = np.random.default_rng(1)
    labels = np.arange(600) % 4
    probs = rng.dirichlet([1, 1, 1, 1], 600) * 0.5
    probs[np.arange(600), labels] += 0.5
    wrong = rng.choice(600, 60, replace=False)
    probs[wrong] = np.roll(probs[wrong], 1 + rng.integers(0, 3), axis=1)
    flagged, scores = rank_label_issues(labels, probs)  # the default: low_self_confidence
    assert FILTERS[0] == "low_self_confidence"
    assert len(flagged) == num_label_issues(labels, probs) and len(flagged) > 0
    assert set(flagged.tolist()) == set(np.argsort(scores, kind="stable")[:len(flagged)].tolist())
    assert scores[flagged].max() <= np.delete(scores, flagged).min()  # nothing less likely left unflagged
    by_noise_rate, _ = rank_label_issues(labels, probs, "prune_by_noise_rate")  # the other rules stay selectable
    assert len(by_noise_rate) and set(by_noise_rate.tolist()) != set(flagged.tolist())
    for argv, message in ((["--find-label-issues", "--label-issue-filter", "nope"], "invalid label issue filter"),
                          (["--label-issue-filter", "both"], "goes with --find-label-issues")):
        with pytest.raises(SystemExit) as exit_info:  # checked before any training
            train_main(["--model", "lenet5", "--dataset", "fashion_mnist", *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_planted_label_errors_are_found_and_listed_with_both_labels(tmp_path):
    images, labels = stripes(150)
    given = labels.copy()
    planted = [7, 32, 58, 85, 110, 140]  # spread over the 3 folds
    given[planted] = (labels[planted] + 1) % 3
    issues = classifier.find_label_issues(dataset=(images, given), class_names=["a", "b", "c"], folds=3,
                                          project=str(tmp_path), name="issues",
                                          **{**FAST, "epochs": 8, "lr": 0.1, "augment": "none", "test_fraction": 0,
                                             "plots": True})
    found = {f"train[{i}]" for i in planted} & set(issues.files)
    assert len(found) >= 4 and len(issues.files) - len(found) <= 2  # (measured: 5 of 6, nothing else)
    with open(issues.dir / "label_issues.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "given_label", "suggested_label", "score"]
    by_file = {r["file"]: r for r in rows}
    for i in [i for i in planted if f"train[{i}]" in found]:
        r = by_file[f"train[{i}]"]
        assert (r["given_label"], r["suggested_label"]) == ("abc"[given[i]], "abc"[labels[i]])
    assert [float(r["score"]) for r in rows] == sorted(float(r["score"]) for r in rows)
    assert sum(issues.per_class.values()) == len(rows)
    assert (issues.dir / "label_issues.png").is_file()
    assert "| given class | flagged |" in (issues.dir / "label_issues.md").read_text()
    # training without them: the listed files are gone from every split, nothing else moved
    run = classifier.train(dataset=(images, given), class_names=["a", "b", "c"], project=str(tmp_path),
                           name="clean", exclude=str(issues.dir / "label_issues.csv"), **{**FAST, "test_fraction": 0})
    record = json.loads((run.dir / "split.json").read_text())
    used = {f"train[{i}]" for entry in record["splits"].values() for i in entry.get("indices", [])}
    assert used == {f"train[{i}]" for i in range(150)} - set(issues.files)


def test_exclude_removes_exactly_the_listed_files_and_changes_nothing_on_disk(tmp_path, capsys):
    data = write_class_images(tmp_path / "colours", per_class=10)
    before = folder_hash(data)
    base = {"dataset": f"folder:{data}", "seed": 0}
    plain = run_splits(base)
    listed = ["red/red_3.png", "blue/blue_0.png", str(data / "green" / "green_9.png")]
    names = {"red/red_3.png", "blue/blue_0.png", "green/green_9.png"}
    text = tmp_path / "bad.txt"
    text.write_text("# checked by hand\nred/red_3.png\n\nblue/blue_0.png\n" + listed[2] + "\n")
    table = tmp_path / "issues.csv"
    table.write_text("file,given_label,suggested_label,score\n" + "".join(f"{n},x,y,0.1\n" for n in sorted(names)))
    for exclude in (listed, ",".join(listed), str(text), str(table)):
        found = run_splits({**base, "exclude": exclude})
        for split in ("train", "val", "test"):  # every other image stays in the split it had
            assert sample_ids(found.splits[split]) == [s for s in sample_ids(plain.splits[split]) if s not in names]
        assert found.record["excluded"] == 3
    with pytest.raises(ClassifierError, match="not images of the dataset.*red/red_30.png"):
        run_splits({**base, "exclude": ["red/red_30.png"]})
    with pytest.raises(ClassifierError, match="does not exist"):
        run_splits({**base, "exclude": "missing.txt"})
    run_dir = train_main(["--model", "lenet5", "--dataset", f"folder:{data}", "--exclude", str(text), "--epochs", "1",
                          "--batch-size", "16", "--progress", "false", "--tensorboard", "false", "--plots", "false",
                          "--workers", "0", "--project", str(tmp_path / "runs")])
    record = json.loads((run_dir / "split.json").read_text())
    used = {p for entry in record["splits"].values() for p in entry["paths"]}
    assert len(used) == 27 and not used & names
    assert folder_hash(data) == before

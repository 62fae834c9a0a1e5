"""k-fold cross-validation (classifier/data/folds.py, classifier/crossval.py): the folds, out-of-fold
predictions, resuming, and the --folds/--fold flags."""
from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest

import classifier
from classifier.commands.train import main as train_main
from classifier.data import run_splits
from classifier.data.exclude import sample_ids
from classifier.data.folds import fold_assignment
from classifier.data.sources import arrays_dataset
from classifier.errors import ClassifierError
from classifier.inference import Predictor
from tests.conftest import stripes, write_class_images

FAST = dict(model="lenet5", epochs=1, batch_size=16, lr=0.05, progress=False, amp="off", workers=0,
            tensorboard=False, plots=False, eval_test=False)


def folder_hash(folder) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
            digest.update(str(path.stat().st_mtime_ns).encode())
    return digest.hexdigest()


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_folds_are_stratified_disjoint_and_cover_every_sample_once(folds):
    labels = np.repeat([0, 1, 2, 3], [23, 7, 40, 5])
    fold_of = fold_assignment(labels, folds, seed=3)
    assert set(fold_of.tolist()) == set(range(folds))  # every sample in exactly one fold (an int each)
    sizes = np.bincount(fold_of, minlength=folds)
    assert sizes.max() - sizes.min() <= 1
    for c in range(4):
        per_fold = np.bincount(fold_of[labels == c], minlength=folds)
        assert per_fold.max() - per_fold.min() <= 1, (c, per_fold)
    assert np.array_equal(fold_of, fold_assignment(labels, folds, seed=3))
    assert not np.array_equal(fold_of, fold_assignment(labels, folds, seed=4))


def test_multilabel_folds_use_iterative_stratification():
    rng = np.random.default_rng(0)
    matrix = (rng.random((60, 4)) < [0.5, 0.2, 0.1, 0.4]).astype(np.uint8)
    fold_of = fold_assignment(matrix, 3, seed=0)
    assert sorted(set(fold_of.tolist())) == [0, 1, 2]
    for column in range(4):  # each label spread over the folds
        per_fold = np.array([matrix[fold_of == k, column].sum() for k in range(3)])
        assert per_fold.max() - per_fold.min() <= 2


def test_fold_runs_split_train_val_and_keep_the_test_split():
    images, labels = stripes(90)
    arrays = arrays_dataset(images, labels, class_names=["a", "b", "c"])
    base = {"dataset": arrays[0].name, "seed": 0, "val_fraction": 0.1, "test_fraction": 0.2}
    plain = run_splits(base, dataset=arrays)
    pool = set(sample_ids(plain.splits["train"])) | set(sample_ids(plain.splits["val"]))
    seen = []
    for k in (1, 2, 3):
        found = run_splits({**base, "folds": 3, "fold": k}, dataset=arrays)
        train, val = set(sample_ids(found.splits["train"])), set(sample_ids(found.splits["val"]))
        assert not train & val and train | val == pool
        assert sample_ids(found.splits["test"]) == sample_ids(plain.splits["test"])
        assert found.record["folds"] == {"folds": 3, "fold": k}
        seen += sorted(val)
    assert sorted(seen) == sorted(pool)  # every train+val image validated exactly once
    with pytest.raises(ClassifierError, match="cross_validate"):
        run_splits({**base, "folds": 3}, dataset=arrays)
    with pytest.raises(ClassifierError, match="out of range"):
        run_splits({**base, "folds": 3, "fold": 4}, dataset=arrays)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_out_of_fold_probabilities_come_from_the_model_that_did_not_train_on_the_image(tmp_path):
    images, labels = stripes(60)
    cv = classifier.cross_validate(dataset=(images, labels), class_names=["a", "b", "c"], folds=3,
                                   project=str(tmp_path), name="cv", **FAST)
    assert cv.complete and cv.dir == tmp_path / "cv"
    rows = read_csv(cv.dir / "oof.csv")
    assert list(rows[0]) == ["file", "given_label", "fold", "a", "b", "c"]
    arrays = arrays_dataset(images, labels, class_names=["a", "b", "c"])
    plain = run_splits({"dataset": arrays[0].name}, dataset=arrays)
    assert sorted(r["file"] for r in rows) == sorted(sample_ids(plain.splits["train"]) + sample_ids(plain.splits["val"]))
    for k in (1, 2, 3):
        record = json.loads((cv.dir / f"fold-{k}" / "split.json").read_text())
        trained_on = {f"train[{i}]" for i in record["splits"]["train"]["indices"]}
        mine = [r for r in rows if r["fold"] == str(k)]
        assert mine and not {r["file"] for r in mine} & trained_on
        predictor = Predictor.load(cv.dir / f"fold-{k}" / "best.pt")  # fold k's own model gives the numbers,
        predictor.set_trust(None, predictor.ood)  # uncalibrated: its temperature was fitted on these images
        positions = [int(r["file"][6:-1]) for r in mine]
        probs = predictor.predict(list(images[positions][..., None]))
        assert np.allclose(probs, [[float(r[c]) for c in "abc"] for r in mine], atol=1e-5)
        assert {r["given_label"] for r in mine} <= {"a", "b", "c"}
    summary = json.loads((cv.dir / "summary.json").read_text())
    accuracies = [f["val_accuracy"] for f in summary["per_fold"]]
    assert summary["cv_val_accuracy_mean"] == pytest.approx(np.mean(accuracies))
    assert summary["cv_val_accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert {"cv_val_loss_mean", "cv_val_macro_f1_std"} <= set(summary)


def test_an_interrupted_cross_validation_resumes_at_the_next_fold(tmp_path):
    data = write_class_images(tmp_path / "colours", per_class=12)
    before = folder_hash(data)
    flags = ["--model", "lenet5", "--dataset", f"folder:{data}", "--epochs", "1", "--batch-size", "16", "--lr", "0.05",
             "--amp", "off",
             "--progress", "false", "--tensorboard", "false", "--plots", "false", "--eval-test", "false",
             "--workers", "0", "--project", str(tmp_path / "runs"), "--name", "cv", "--folds", "3"]
    assert train_main(flags + ["--fold", "1"]) == tmp_path / "runs" / "cv"  # one fold alone (another machine)
    cv_dir = tmp_path / "runs" / "cv"
    assert (cv_dir / "fold-1" / "oof.csv").is_file() and not (cv_dir / "fold-2").exists()
    assert not (cv_dir / "oof.csv").exists()

    started = []

    def stop_at_fold_3(run):
        started.append(run.dir.name)
        if run.dir.name == "fold-3":
            raise KeyboardInterrupt

    settings = dict(dataset=f"folder:{data}", folds=3, project=str(tmp_path / "runs"), name="cv", **FAST)
    with pytest.raises(KeyboardInterrupt):
        classifier.cross_validate(callbacks={"on_train_start": [stop_at_fold_3]}, **settings)
    assert started == ["fold-2", "fold-3"]  # fold 1 was done: kept
    kept = {k: (cv_dir / f"fold-{k}" / "best.pt").stat().st_mtime_ns for k in (1, 2)}
    started.clear()
    cv = classifier.cross_validate(callbacks={"on_train_start": [lambda run: started.append(run.dir.name)]},
                                   **settings)
    assert started == ["fold-3"] and cv.complete and cv.folds_done == [1, 2, 3]
    assert kept == {k: (cv_dir / f"fold-{k}" / "best.pt").stat().st_mtime_ns for k in (1, 2)}
    assert len(read_csv(cv_dir / "oof.csv")) == 36 - 7  # 20% carved as the test split, which stays out
    assert folder_hash(data) == before  # the user's folder is untouched
    other = classifier.cross_validate(**{**settings, "seed": 1, "name": "cv"}, fold=1)  # other settings:
    assert other.dir == tmp_path / "runs" / "cv2"  # a new folder, never mixed with the first


def test_multilabel_cross_validation_writes_label_sets_and_map_from_models_that_did_not_see_the_image(tmp_path):
    from classifier.data.images import load_image
    from classifier.tasks import mean_average_precision
    from tests.test_multilabel import ML_CLASSES, write_multilabel_csv

    labels_csv = write_multilabel_csv(tmp_path / "data", n=60)
    before = folder_hash(tmp_path / "data")
    settings = dict(dataset=f"csv:{labels_csv}", folds=3, project=str(tmp_path / "runs"), name="cv",
                    **{**FAST, "optimizer": "adam", "lr": 0.01})
    first = classifier.cross_validate(fold=1, **settings)  # one fold alone, as on another machine
    assert first.folds_done == [1] and first.task == "multilabel" and first.labels.ndim == 2 and not first.summary
    started = []
    cv = classifier.cross_validate(callbacks={"on_train_start": [lambda run: started.append(run.dir.name)]},
                                   **settings)
    assert started == ["fold-2", "fold-3"] and cv.complete and cv.task == "multilabel"
    rows = read_csv(cv.dir / "oof.csv")
    assert list(rows[0]) == ["file", "given_labels", "fold", *ML_CLASSES]
    truth = {r["filename"]: set(r["labels"].split()) for r in read_csv(labels_csv)}
    assert len({r["file"] for r in rows}) == len(rows) == 48  # train+val once each (20% carved as test)
    assert all(set(r["given_labels"].split()) == truth[r["file"]] for r in rows)
    assert np.array_equal(cv.labels, [[c in truth[f] for c in ML_CLASSES] for f in cv.files])
    summary = json.loads((cv.dir / "summary.json").read_text())
    assert summary["task"] == "multilabel" and "cv_val_accuracy_mean" not in summary
    for k in (1, 2, 3):
        fold_dir = cv.dir / f"fold-{k}"
        found = run_splits(Predictor.load(fold_dir / "best.pt").metadata["config"], split_file=fold_dir / "split.json")
        mine = [r for r in rows if r["fold"] == str(k)]
        assert mine and not {r["file"] for r in mine} & set(sample_ids(found.splits["train"]))
        assert {r["file"] for r in mine} == set(sample_ids(found.splits["val"]))
        predictor = Predictor.load(fold_dir / "best.pt")  # fold k's own model gives the numbers
        predictor.set_trust(None, predictor.ood)
        probs = predictor.predict([load_image(labels_csv.parent / r["file"], 3) for r in mine])
        assert np.allclose(probs, [[float(r[c]) for c in ML_CLASSES] for r in mine], atol=1e-5)
        assert not np.allclose(probs.sum(1), 1, atol=1e-3)  # per-class sigmoids, not a softmax
        given = np.array([[c in truth[r["file"]] for c in ML_CLASSES] for r in mine], dtype=int)
        assert summary["per_fold"][k - 1]["val_mAP"] == pytest.approx(mean_average_precision(given, probs), abs=1e-4)
    maps = [f["val_mAP"] for f in summary["per_fold"]]
    assert summary["cv_val_mAP_mean"] == pytest.approx(np.mean(maps))
    assert summary["cv_val_mAP_std"] == pytest.approx(np.std(maps, ddof=1))
    assert {"cv_val_macro_f1_mean", "cv_val_loss_std", "cv_val_hamming_loss_mean"} <= set(summary)
    assert folder_hash(tmp_path / "data") == before  # the user's folder and CSV are untouched



def test_label_sets_survive_the_oof_text_with_spaces_in_class_names():
    from classifier.tasks import get_task

    task, classes = get_task("multilabel"), ["a", "a b", "b c", "old car", "red"]
    y = np.array([[1, 0, 1, 0, 0], [0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    texts = [task.label_text(row, classes) for row in y]
    assert texts[:3] == ["a b c", "a b old car red", ""]  # "a b c": "a b" + "c" would not split; "a" + "b c" does
    assert np.array_equal(task.parse_labels(texts, classes), y)
    with pytest.raises(ClassifierError, match="not made of the classes"):
        task.parse_labels(["a blue"], classes)
    single = get_task("multiclass")
    assert single.label_text(2, classes) == single.label_text(np.eye(5)[2], classes) == "b c"
    assert single.parse_labels(["red", "a b"], classes).tolist() == [4, 1]

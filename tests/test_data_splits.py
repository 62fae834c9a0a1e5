"""split_dataset: stratified, seeded, recorded; the record reloads the same samples."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_data_helpers import index_images, write_fashion, write_image_folder  # noqa: E402

from classifier.data.sources import fashion_mnist as fm  # noqa: E402
from classifier.data import (DatasetInfo, Samples, load_dataset, load_split, samples_from_record,  # noqa: E402
                             save_split, split_dataset)
from classifier.errors import ClassifierError  # noqa: E402

INFO = DatasetInfo("toy", [f"c{i}" for i in range(4)], 3, (4, 4), (0.5,) * 3, (0.25,) * 3)


def _arrays(counts):
    labels = np.repeat(np.arange(len(counts)), counts)
    return Samples(labels=labels, images=index_images(len(labels), size=(4, 4)), source="train")


def test_stratified_proportions_without_official_test():
    splits, record = split_dataset(INFO, {"train": _arrays([100, 100, 100, 100])}, seed=3)
    for name, per_class in (("train", 70), ("val", 10), ("test", 20)):
        assert np.bincount(splits[name].labels).tolist() == [per_class] * 4
        assert record["splits"][name]["class_counts"] == [per_class] * 4
    all_idx = np.concatenate([splits[n].index for n in ("train", "val", "test")])
    assert sorted(all_idx.tolist()) == list(range(400))  # a partition: nothing lost, nothing twice


def test_uneven_classes_totals_and_minimum():
    counts = [53, 7, 2, 1]
    splits, _ = split_dataset(INFO, {"train": _arrays(counts)}, val_fraction=0.15, test_fraction=0.25, seed=0)
    n = sum(counts)
    assert len(splits["test"]) == round(n * 0.25) and len(splits["val"]) == round(n * 0.15)
    for c, count in enumerate(counts):
        got = {k: int((splits[k].labels == c).sum()) for k in splits}
        assert got["train"] >= 1  # every class keeps a training sample
        assert abs(got["test"] - count * 0.25) <= 1 and abs(got["val"] - count * 0.15) <= 1


def test_seed_reproducible():
    official = {"train": _arrays([30, 30, 30, 30])}
    a, ra = split_dataset(INFO, official, seed=1)
    b, rb = split_dataset(INFO, official, seed=1)
    c, _ = split_dataset(INFO, official, seed=2)
    assert ra == rb
    assert np.array_equal(a["test"].index, b["test"].index)
    assert not np.array_equal(a["test"].index, c["test"].index)


def test_official_test_is_kept_and_val_carved():
    official = {"train": _arrays([20, 20, 20, 20]), "test": _arrays([5, 5, 5, 5])}
    official["test"].source = "test"
    splits, record = split_dataset(INFO, official, val_fraction=0.25, test_fraction=0.5)
    assert splits["test"] is official["test"]
    assert np.bincount(splits["val"].labels).tolist() == [5] * 4 and len(splits["train"]) == 60
    assert record["splits"]["test"]["source"] == "test" and record["splits"]["val"]["source"] == "train"


def test_bad_fractions():
    with pytest.raises(ClassifierError, match="val_fraction"):
        split_dataset(INFO, {"train": _arrays([5] * 4)}, val_fraction=1.5)
    with pytest.raises(ClassifierError, match="below 1"):
        split_dataset(INFO, {"train": _arrays([5] * 4)}, val_fraction=0.5, test_fraction=0.5)


def test_record_round_trip_arrays(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "SYSTEM_DIR", str(tmp_path / "none"))
    write_fashion(tmp_path / "fashion_mnist", n_train=40)
    info, official = load_dataset("fashion_mnist", tmp_path, download=False)
    splits, record = split_dataset(info, official, seed=5)
    save_split(record, tmp_path / "run" / "split.json")
    loaded = load_split(tmp_path / "run" / "split.json")
    assert loaded == record and loaded["dataset"] == "fashion_mnist" and loaded["seed"] == 5
    for name in ("val", "test", "train"):
        info2, again = samples_from_record(None, tmp_path, loaded, name, download=False)
        assert info2.classes == info.classes
        np.testing.assert_array_equal(again.images, splits[name].images)
        np.testing.assert_array_equal(again.labels, splits[name].labels)

    from test_data_helpers import write_idx
    write_idx(tmp_path / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(10, np.uint8))
    with pytest.raises(ClassifierError, match="different version"):
        samples_from_record(None, tmp_path, loaded, "test", download=False)


def test_record_round_trip_files(tmp_path):
    labels = np.repeat(np.arange(3), 10)
    write_image_folder(tmp_path / "data", index_images(30, size=(6, 6)), labels)
    info, official = load_dataset(f"folder:{tmp_path / 'data'}")
    splits, record = split_dataset(info, official, seed=0)
    assert record["splits"]["test"]["paths"][0].startswith("class")  # relative to the dataset folder
    save_split(record, tmp_path / "split.json")
    _, test = samples_from_record(f"folder:{tmp_path / 'data'}", tmp_path, load_split(tmp_path / "split.json"), "test")
    assert test.paths == splits["test"].paths and test.labels.tolist() == splits["test"].labels.tolist()

    os.remove(splits["test"].paths[0])
    with pytest.raises(ClassifierError, match="missing"):
        samples_from_record(None, tmp_path, record, "test")
    with pytest.raises(ClassifierError, match="unknown split"):
        samples_from_record(None, tmp_path, record, "holdout")


def test_load_split_errors(tmp_path):
    with pytest.raises(ClassifierError, match="does not exist"):
        load_split(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ClassifierError, match="not valid JSON"):
        load_split(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"format": "something-else"}')
    with pytest.raises(ClassifierError, match="not a split record"):
        load_split(tmp_path / "other.json")


def test_train_val_without_test_keeps_all_training_samples():
    from classifier.data.splits import evaluation_split, split_note

    official = {"train": _arrays([10] * 4), "val": _arrays([3] * 4)}
    official["val"].source = "val"
    splits, record = split_dataset(INFO, official, val_fraction=0.25)
    assert len(splits["train"]) == 40 and len(splits["test"]) == 0 and splits["val"] is official["val"]
    assert evaluation_split(record) == "val" and "training on all 40 images" in split_note(record)
    splits, record = split_dataset(INFO, official, test_fraction=0.25)  # asked explicitly: carved
    assert len(splits["test"]) == 10 and len(splits["train"]) == 30 and evaluation_split(record) == "test"
    splits, record = split_dataset(INFO, {"train": _arrays([10] * 4)})  # no val, no test: 20% carved as before
    assert len(splits["test"]) == 8 and "carved from train" in split_note(record)

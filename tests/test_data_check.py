"""The dataset check (train.py --check-data, data_check.json) and training on a folder with bad files."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from classifier.checkpoint import load_checkpoint
from classifier.commands.train import main as train_main
from tests.conftest import COLOURS, UNREADABLE, UNUSUAL, write_class_images, write_problem_files

FAST = ["--batch-size", "8", "--progress", "false", "--amp", "off", "--workers", "0", "--tensorboard", "false",
        "--plots", "false",
        "--eval-test", "false"]


@pytest.fixture
def messy_folder(tmp_path):
    """PATH/train (red 12 + the problem files, green 6, blue 4) and PATH/test (2 per class), with one
    training image copied into test/green (a leak, mislabelled too) and one copied within train/red."""
    root = tmp_path / "messy"
    for name, n in (("red", 12), ("green", 6), ("blue", 4)):
        write_class_images(root / "train", per_class=n, classes={name: COLOURS[name]}, seed=len(name))
    write_class_images(root / "test", per_class=2, seed=7)
    write_problem_files(root / "train" / "red")
    shutil.copy(root / "train" / "red" / "red_0.png", root / "test" / "green" / "copy.png")
    shutil.copy(root / "train" / "red" / "red_1.png", root / "train" / "red" / "again.png")
    return root


def test_check_data_reports_counts_modes_bad_files_and_leaks(messy_folder, tmp_path, capsys):
    report_path = tmp_path / "check.json"
    report = train_main(["--check-data", str(report_path), "--dataset", f"folder:{messy_folder}",
                         "--val-fraction", "0"])
    assert json.loads(report_path.read_text()) == report
    red = 12 + 1 + len(UNREADABLE) + len(UNUSUAL)  # + again.png; hidden and .txt files are not samples
    assert report["classes"] == ["blue", "green", "red"]
    assert report["counts"] == {"train": [4, 6, red], "val": [0, 0, 0], "test": [2, 3, 2]}
    assert report["imbalance"] == round(red / 4, 2)
    readable = sum(map(sum, report["counts"].values())) - len(UNREADABLE)
    assert {"RGB", "CMYK", "I;16", "P"} <= set(report["modes"]) and sum(report["modes"].values()) == readable
    assert report["sizes"] == {"16x16": readable}
    bad = {b["file"]: b["reason"] for b in report["unreadable"]}
    assert set(bad) == {f"train/red/{n}" for n in UNREADABLE}
    assert bad["train/red/empty.png"] == "empty file (0 bytes)" and "too many pixels" in bad["train/red/bomb2x.png"]
    assert report["wrong_extension"] == [{"split": "train", "file": "train/red/png_named.jpg", "format": "PNG"}]
    groups = sorted(sorted(w["file"] for w in g) for g in report["duplicates"])
    assert groups == [["test/green/copy.png", "train/red/red_0.png"], ["train/red/again.png", "train/red/red_1.png"]]
    assert report["duplicates_across_splits"] == 1
    assert ".hidden" not in json.dumps(report) and "notes.txt" not in json.dumps(report)
    out = capsys.readouterr().out
    assert f"smallest blue 4, largest red {red}" in out and "--class-weights auto or --sampler balanced" in out
    assert "unreadable, skipped (5):" in out and "train: train/red/empty.png: empty file (0 bytes)" in out
    assert "identical images in two splits (1):" in out and "test: test/green/copy.png" in out
    assert "train/red/png_named.jpg is PNG" in out and f"report: {report_path}" in out


def test_check_data_on_an_in_memory_dataset_finds_duplicates():
    import numpy as np

    from classifier.data import Samples
    from classifier.data.check import check_splits

    images = np.zeros((6, 4, 4, 1), np.uint8)
    images[:, 0, 0, 0] = [0, 1, 2, 3, 4, 0]  # image 5 repeats image 0
    samples = Samples(labels=[0, 0, 0, 1, 1, 1], images=images, source="train")
    report = check_splits(["a", "b"], {"train": samples.subset([0, 1, 2, 3]), "test": samples.subset([4, 5])})
    assert report["modes"] == {"L": 6} and report["sizes"] == {"4x4": 6} and report["unreadable"] == []
    assert report["duplicates"] == [[{"split": "train", "file": "train[0]"}, {"split": "test", "file": "train[5]"}]]


def test_training_on_a_messy_folder_skips_and_lists_bad_files(messy_folder, tmp_path, capsys):
    run = train_main(["--dataset", f"folder:{messy_folder}", "--model", "lenet5", "--epochs", "2",
                      "--project", str(tmp_path / "runs"), "--name", "messy", *FAST])
    check = json.loads((run / "data_check.json").read_text())
    assert {b["file"] for b in check["unreadable"]} == {f"train/red/{n}" for n in UNREADABLE}
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    out = capsys.readouterr().out
    assert "unreadable, skipped (5):" in out and f"report: {run / 'data_check.json'}" in out
    # a resumed run does not check again, and keeps the report
    train_main(["--resume", str(run), "--epochs", "3", *FAST])
    assert "data check" not in capsys.readouterr().out and (run / "data_check.json").is_file()


@pytest.mark.parametrize("augment", ["none", "[{name: HorizontalFlip, p: 0.5}]"])
def test_both_loader_paths_skip_the_bad_files(tmp_path, augment):
    """In-memory (decoded once) and streamed (a user pipeline) loaders both drop exactly the unreadable files."""
    import yaml

    from classifier.data import build_loader, load_dataset
    from classifier.data.loaders import StreamingLoader

    folder = write_class_images(tmp_path / "f", per_class=3)
    write_problem_files(folder / "red")
    info, splits = load_dataset(f"folder:{folder}")
    loader = build_loader(splits["train"], info.preprocessing(), train=False, batch_size=4, workers=0,
                          augment=yaml.safe_load(augment))
    assert isinstance(loader, StreamingLoader) == (augment != "none")
    labels = [y for _, batch in loader for y in batch.tolist()]
    assert len(labels) == len(splits["train"]) - len(UNREADABLE)
    assert sorted(p.split("/")[-1] for p in loader.skipped) == sorted(UNREADABLE)


def test_check_cache_rechecks_only_changed_files_and_still_reports_bad_ones(messy_folder, tmp_path, monkeypatch):
    import os

    from PIL import Image

    from classifier.data import check

    args = ["--check-data", str(tmp_path / "check.json"), "--dataset", f"folder:{messy_folder}", "--val-fraction", "0"]
    first = train_main(args)
    inspected = []
    real = check._inspect_file
    monkeypatch.setattr(check, "_inspect_file", lambda path: inspected.append(path) or real(path))
    assert train_main(args) == first and inspected == []  # nothing changed: every result from the cache
    assert len(first["unreadable"]) == len(UNREADABLE)  # the bad files are still listed

    changed = messy_folder / "train" / "green" / "green_0.png"
    Image.new("RGB", (20, 12), (1, 2, 3)).save(changed)  # another image, another size
    os.utime(changed, ns=(os.stat(changed).st_atime_ns, os.stat(changed).st_mtime_ns + 10**9))
    (messy_folder / "train" / "blue" / "blue_0.png").write_bytes(b"now corrupt")
    report = train_main(args)
    assert sorted(inspected) == sorted([str(changed), str(messy_folder / "train" / "blue" / "blue_0.png")])
    assert report["sizes"]["20x12"] == 1
    bad = {b["file"]: b["reason"] for b in report["unreadable"]}
    assert len(bad) == len(UNREADABLE) + 1 and bad["train/blue/blue_0.png"] == "not a readable image"


def test_a_damaged_check_cache_is_checked_again(messy_folder, tmp_path, monkeypatch):
    from classifier.data import check

    args = ["--check-data", str(tmp_path / "check.json"), "--dataset", f"folder:{messy_folder}", "--val-fraction", "0"]
    first = train_main(args)
    stored = list((Path(os.environ["CLASSIFIER_CACHE"]) / "checks").glob("*.npz"))
    assert len(stored) == 1
    stored[0].write_bytes(stored[0].read_bytes()[:100])  # cut short, as by a full disk
    inspected = []
    real = check._inspect_file
    monkeypatch.setattr(check, "_inspect_file", lambda path: inspected.append(path) or real(path))
    assert train_main(args) == first and inspected  # every file checked again, the same report


def test_absolute_paths_of_a_listing_equal_abspath(tmp_path, monkeypatch):
    from classifier.data.check import _absolute

    monkeypatch.chdir(tmp_path)
    paths = ["data/red/a.png", "data/./red/b.png", "data/../data/red/c.png", "data//red/d.png", "data/.x/e.png",
             str(tmp_path / "data" / "red" / "f.png"), "other/g.png"]
    for root in ("data", "data/", "./data", str(tmp_path / "data")):
        assert _absolute(paths, root) == [os.path.abspath(p) for p in paths], root

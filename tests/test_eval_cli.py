"""eval.py and test.py end to end: run split, new folders with extra/missing/reordered classes, .pt/.onnx parity."""
from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from classifier.commands.eval import main as eval_main
from classifier.commands.test import main as classify_main
from classifier.commands.train import main as train_main
from tests.conftest import COLOURS, write_class_images


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    data = write_class_images(root / "colours", per_class=20)
    run = train_main(["--dataset", f"folder:{data}", "--model", "lenet5", "--epochs", "4", "--optimizer", "adam",
                      "--lr", "0.01", "--augment", "none", "--batch-size", "16", "--progress", "false",
                      "--amp", "off", "--workers", "0", "--project", str(root / "runs"), "--name", "run"])
    return run


def test_eval_on_the_runs_own_test_split(trained_run, capsys):
    out = eval_main(["--checkpoint", str(trained_run / "best.pt"), "--no-progress"])
    metrics = json.loads((out / "metrics.json").read_text())
    split = json.loads((trained_run / "split.json").read_text())
    assert metrics["n_samples"] == len(split["splits"]["test"]["paths"])
    assert (out / "report.md").is_file() and list((out / "figures").glob("*.png"))
    assert "accuracy" in capsys.readouterr().out


def test_the_runs_test_figure_is_what_eval_py_reproduces(tmp_path):
    """Training with bf16 autocast (forced on): the end-of-training test report equals eval.py's on
    best.pt, down to every image's confidence (eval.py evaluates in fp32)."""
    data = write_class_images(tmp_path / "colours", per_class=12)
    run = train_main(["--dataset", f"folder:{data}", "--model", "lenet5", "--epochs", "1", "--augment", "none",
                      "--batch-size", "16", "--progress", "false", "--amp", "on", "--workers", "0",
                      "--project", str(tmp_path / "runs"), "--name", "run"])
    out = eval_main(["--checkpoint", str(run / "best.pt"), "--no-progress"])
    assert out != run / "eval"
    at_train_end = (run / "eval" / "predictions.csv").read_text()
    assert at_train_end == (out / "predictions.csv").read_text() and len(at_train_end.splitlines()) > 5
    assert json.loads((run / "summary.json").read_text())["test_accuracy"] == \
        json.loads((out / "metrics.json").read_text())["accuracy"]


def test_eval_new_folder_matches_classes_by_name(trained_run, tmp_path, capsys):
    # reordered (sorted differently on disk), one unknown class, one model class missing
    folder = write_class_images(tmp_path / "new", per_class=4, seed=9,
                                classes={"red": COLOURS["red"], "blue": COLOURS["blue"], "yellow": (220, 220, 30)})
    out = eval_main(["--checkpoint", str(trained_run / "best.pt"), str(folder), "--no-progress"])
    printed = capsys.readouterr().out
    assert "yellow" in printed and "green" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_samples"] == 8 and metrics["unknown_class_samples"] == 4
    assert metrics["per_class"]["green"]["support"] == 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 12
    by_file = {r["file"]: r for r in rows}
    red = [r for f, r in by_file.items() if "/red/" in f]
    assert all(r["true"] == "red" for r in red)
    assert all(r["true"] == "" for f, r in by_file.items() if "/yellow/" in f)
    assert metrics["accuracy"] >= 0.75


def test_test_py_same_predictions_from_pt_and_onnx(trained_run, tmp_path):
    from classifier.commands.export import main as export_main

    onnx_path = tmp_path / "model.onnx"
    export_main(["--checkpoint", str(trained_run / "best.pt"), "--output", str(onnx_path)])
    images = tmp_path / "imgs"
    images.mkdir()
    for i, (name, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (20 + 7 * i, 16 + 3 * i), rgb).save(images / f"{name}.png")
    Image.new("L", (30, 30), 128).save(images / "gray.png")
    Image.new("RGBA", (16, 16), (200, 30, 30, 128)).save(images / "rgba.png")
    pt = classify_main(["--checkpoint", str(trained_run / "best.pt"), str(images), "--output", str(tmp_path / "a"), "--quiet"])
    ox = classify_main(["--checkpoint", str(onnx_path), str(images), "--output", str(tmp_path / "b"), "--quiet"])
    assert [p.label for p in pt] == [p.label for p in ox]
    assert [p.path for p in pt] == [p.path for p in ox] and len(pt) == 5
    for a, b in zip(pt, ox):
        assert abs(a.confidence - b.confidence) < 1e-4
    assert (tmp_path / "a" / "predictions.png").is_file() and (tmp_path / "b" / "predictions.csv").is_file()


def test_compare_runs_table(trained_run, tmp_path):
    out = tmp_path / "cmp.md"
    eval_main(["--compare", str(trained_run), "--output", str(out)])
    text = out.read_text()
    assert "lenet5" in text and "scratch" in text


def test_dataset_viewer_writes_a_grid(tmp_path, tiny_folder):
    path = train_main(["--dataset", f"folder:{tiny_folder}", "--visualize", "--save", str(tmp_path / "g.png")])
    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 100

"""Multi-label classification: the task object (loss, thresholds, metrics vs scikit-learn), the carved
split, and a multi-label run end to end (thresholds saved and applied by every consumer)."""
from __future__ import annotations

import json

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
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float()) * 3  # summed over classes
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


# --- a multi-label run end to end ---------------------------------------------------------------------
import csv as csv_module  # noqa: E402
import importlib.util  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

from PIL import Image  # noqa: E402

import classifier  # noqa: E402
from classifier.checkpoint import load_checkpoint  # noqa: E402
from classifier.data import run_splits  # noqa: E402
from classifier.inference import Predictor  # noqa: E402
from tests.test_web import browser  # noqa: E402,F401 - the headless Chromium fixture

ML_CLASSES = ["blue", "green", "red"]  # sorted, as the CSV source names them
FAST = dict(model="lenet5", epochs=2, batch_size=16, optimizer="adam", lr=0.01, progress=False, plots=False,
            tensorboard=False, amp="off", seed=0)


def write_multilabel_csv(folder: Path, n: int = 96, seed: int = 0) -> Path:
    """PNGs whose red / green / blue channels are on or off: labels = the channels on (maybe none)."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        on = rng.random(3) < 0.45
        pixels = np.clip(np.where(on, 200, 25)[None, None, :] + rng.integers(-25, 25, (16, 16, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / "img" / f"{i:03d}.png")
        labels = " ".join(name for name, flag in zip(("red", "green", "blue"), on) if flag)
        rows.append((f"img/{i:03d}.png", labels))
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv_module.writer(f)
        writer.writerow(["filename", "labels"])
        writer.writerows(rows)
    return folder / "labels.csv"


def onnx_client():
    path = Path(__file__).resolve().parent.parent / "examples" / "onnx_client.py"
    spec = importlib.util.spec_from_file_location("onnx_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("multilabel")
    labels = write_multilabel_csv(root / "data")
    run = classifier.train(dataset=f"csv:{labels}", project=str(root / "runs"), name="ml", **FAST)
    return run, labels


def test_run_fits_saves_and_applies_thresholds_everywhere(ml_run, tmp_path):
    run, labels = ml_run
    assert run.summary["task"] == "multilabel" and 0 <= run.summary["test_mAP"] <= 1
    assert run.summary["test_macro_f1"] is not None and run.config.task == "multilabel"
    ckpt = load_checkpoint(run.dir / "best.pt")
    assert ckpt["task"] == "multilabel" and len(ckpt["thresholds"]) == 3
    # fitted on the validation split with best.pt (each class's best F1): refit from the checkpoint's own probs
    val = run_splits(ckpt["config"], split_file=run.dir / "split.json").splits["val"]
    predictor = Predictor.load(run.dir / "best.pt")
    probs = predictor.predict_files(val.paths)
    np.testing.assert_allclose(ckpt["thresholds"], fit_thresholds(probs, val.labels), atol=1e-5)
    # predict: labels = classes at or above their thresholds; probs are sigmoids (not summing to 1)
    files = sorted(str(p) for p in (labels.parent / "img").glob("*.png"))[:24]
    preds = run.model.predict(files)
    expected = [[c for c, p, t in zip(ML_CLASSES, row, ckpt["thresholds"]) if p >= t] for row in
                predictor.predict_files(files)]
    assert [p.labels for p in preds] == expected and any(len(e) > 1 for e in expected)
    assert not np.allclose([p.probs.sum() for p in preds], 1.0)
    assert [p.labels for p in run.model.predict(files, threshold=0.0)] == [ML_CLASSES] * len(files)
    # test.py writes the same label sets, space-separated
    from classifier.commands.test import main as test_main

    test_main(["--checkpoint", str(run.dir / "best.pt"), *files, "--output", str(tmp_path / "pred"), "--quiet"])
    with open(tmp_path / "pred" / "predictions.csv") as f:
        rows = list(csv_module.DictReader(f))
    assert [r["labels"].split() for r in rows] == expected
    # ONNX: logits output + metadata; a client reading only the metadata decides the same
    onnx_path = run.model.export(tmp_path / "model.onnx")
    meta = classifier.load(onnx_path).metadata
    assert meta["task"] == "multilabel" and meta["thresholds"] == pytest.approx(ckpt["thresholds"])
    assert [p.labels for p in classifier.load(onnx_path).predict(files)] == expected
    client = onnx_client()
    session, raw = client.load_model(str(onnx_path))
    got = [[ML_CLASSES[i] for i in client.label_set(raw, client.classify(session, raw, f))] for f in files]
    assert got == expected


def test_a_multilabel_run_answers_unknown_by_the_knn_score(ml_run, tmp_path):
    run, labels = ml_run
    assert load_checkpoint(run.dir / "best.pt")["ood"]["score"] == "knn"  # (its ood_score: mahalanobis, the default)
    # 19 validation images: keeping 80% of them puts the threshold inside their scores, not at the lowest
    run = classifier.train(dataset=f"csv:{labels}", project=str(tmp_path), name="ood", reject_keep=0.8, **FAST)
    ckpt = load_checkpoint(run.dir / "best.pt")
    assert ckpt["ood"]["score"] == "knn" and ckpt["ood"]["keep"] == pytest.approx(0.8)
    val = run_splits(ckpt["config"], split_file=run.dir / "split.json").splits["val"]
    known = run.model.predict(list(val.paths), reject=True)
    assert np.mean([p.label != "unknown" for p in known]) >= 0.75  # the threshold keeps 80% of validation images
    rng = np.random.default_rng(0)
    strange = []
    for i in range(6):  # stripes and noise: none of the colour sets
        pixels = np.indices((16, 16)).sum(0)[..., None] % 4 * 80 if i % 2 else rng.integers(0, 256, (16, 16, 3))
        strange.append(tmp_path / "strange" / f"strange{i}.png")
        strange[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(np.broadcast_to(pixels, (16, 16, 3)).astype(np.uint8)).save(strange[-1])
    answers = run.model.predict(strange, reject=True)
    assert sum(p.label == "unknown" for p in answers) >= 3  # (measured: 5 of 6)
    assert all(p.labels == [] for p in answers if p.label == "unknown")  # an unknown image gets no label
    onnx_path = run.model.export(tmp_path / "model.onnx")  # the score travels as the graph's ood_score output
    exported = classifier.load(onnx_path).predict(strange, reject=True)
    np.testing.assert_allclose([p.ood_score for p in exported], [p.ood_score for p in answers], rtol=1e-4, atol=1e-4)
    assert [p.label for p in exported] == [p.label for p in answers]
    report = run.model.evaluate(output=tmp_path / "ev", ood=tmp_path / "strange", progress=False)
    assert report.metrics["ood_score_name"] == "knn" and report.metrics["ood_samples"] == 6
    assert report.metrics["ood_rejected"] == pytest.approx(np.mean([p.label == "unknown" for p in answers]))


def test_evaluation_reports_multilabel_metrics(ml_run, tmp_path):
    run, labels = ml_run
    metrics = json.loads((run.dir / "eval" / "metrics.json").read_text())
    assert metrics["task"] == "multilabel" and metrics["mAP"] == pytest.approx(run.summary["test_mAP"])
    assert {"CP", "CR", "CF1", "OP", "OR", "OF1", "hamming_loss", "subset_accuracy"} <= set(metrics)
    report = classifier.load(run.dir / "best.pt").evaluate(output=tmp_path / "ev", threshold=0.5)
    assert report.metrics["thresholds"] == [0.5] * 3 and report.metrics["mAP"] == pytest.approx(metrics["mAP"])
    assert "mAP" in (tmp_path / "ev" / "report.md").read_text()
    every_row = classifier.load(run.dir / "best.pt").evaluate(str(labels), output=tmp_path / "csv", progress=False)
    assert every_row.metrics["n_samples"] == 96 and every_row.metrics["task"] == "multilabel"
    assert "val_mAP" in (run.dir / "history.csv").read_text().splitlines()[0]


def test_resume_continues_a_multilabel_run_exactly(ml_run, tmp_path):
    run, labels = ml_run
    stop_after_one = {"on_epoch_end": [lambda r, row: r.stop("stopped after epoch 1")]}
    first = classifier.train(dataset=f"csv:{labels}", project=str(tmp_path), name="r", callbacks=stop_after_one,
                             **{**FAST, "eval_test": False})
    assert len(first.history) == 1
    resumed = classifier.train(resume=first.dir, progress=False)
    assert [r["val_mAP"] for r in resumed.history] == pytest.approx([r["val_mAP"] for r in run.history])
    assert load_checkpoint(resumed.dir / "best.pt")["thresholds"] == \
        pytest.approx(load_checkpoint(run.dir / "best.pt")["thresholds"])


def test_arrays_api_takes_a_label_matrix(tmp_path):
    rng = np.random.default_rng(1)
    y = (rng.random((64, 3)) < 0.5).astype(int)
    x = np.clip(np.where(y[:, None, None, :] == 1, 200, 25) + rng.integers(-25, 25, (64, 12, 12, 3)), 0, 255)
    run = classifier.train(dataset=(x.astype(np.uint8), y), class_names=["r", "g", "b"], task="multilabel",
                           project=str(tmp_path), **{**FAST, "epochs": 1})
    assert run.summary["task"] == "multilabel"
    report = run.model.evaluate((x[:16].astype(np.uint8), y[:16]), output=tmp_path / "ev")
    assert report.metrics["n_samples"] == 16 and report.metrics["task"] == "multilabel"


def test_single_label_csv_trains_as_the_class_folders(tmp_path):
    from tests.conftest import write_class_images

    folder = write_class_images(tmp_path / "folder", per_class=10, size=16)
    rows = [(f"{p.parent.name}/{p.name}", p.parent.name) for p in sorted(folder.rglob("*.png"))]
    with open(folder / "labels.csv", "w", newline="") as f:
        csv_module.writer(f).writerows([("file", "label"), *rows[::-1]])  # another order than the listing
    settings = {**FAST, "epochs": 1, "project": str(tmp_path / "runs"), "eval_test": False}
    a = classifier.train(dataset=f"folder:{folder}", name="folder", **settings)
    b = classifier.train(dataset=f"csv:{folder / 'labels.csv'}", name="csv", **settings)
    split_a, split_b = (json.loads((r.dir / "split.json").read_text())["splits"] for r in (a, b))
    assert split_a == split_b and b.summary["task"] == "multiclass"
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert a.history[0]["val_loss"] == b.history[0]["val_loss"]


def test_browser_page_shows_the_label_sets(ml_run, browser, tmp_path):
    """The web page (headless Chromium) decides with the fitted thresholds as predict does."""
    from classifier.export import web
    from tests.test_web import open_page, runtime_or_skip, wait_for

    run, labels = ml_run
    runtime_or_skip()
    page = run.model.export_web(tmp_path / "site" / "page")
    files = sorted((labels.parent / "img").glob("*.png"))[:12]
    expected = [p.labels for p in run.model.predict([str(f) for f in files])]
    assert any(len(e) > 1 for e in expected) or any(not e for e in expected)
    server = web.make_server(page.parent, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        state, message = open_page(browser, web.server_url(server) + "page/")
        assert state == "ready", message
        browser.find_element("id", "file-input").send_keys("\n".join(str(f) for f in files))
        wait_for(browser, f"document.querySelectorAll('.result[data-probs]').length === {len(files)}")
        got = browser.execute_script("return Array.from(document.querySelectorAll('.result'), "
                                     "f => [f.dataset.file, f.dataset.labels, f.dataset.probs])")
    finally:
        server.shutdown()
        server.server_close()
    by_name = {name: (json.loads(chosen), json.loads(probs)) for name, chosen, probs in got}
    assert [sorted(by_name[f.name][0]) for f in files] == [sorted(e) for e in expected]
    reference = Predictor.load(run.dir / "best.pt").predict_files(files)
    np.testing.assert_allclose([by_name[f.name][1] for f in files], reference, atol=1e-4)

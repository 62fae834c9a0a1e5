"""The Python API: train on arrays and folders, predict on every input kind from .pt and .onnx, evaluate,
export, callbacks, global state, CLI == API, and the two resume / Ctrl-C defects."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import classifier
from classifier.checkpoint import load_checkpoint
from classifier.commands.test import main as classify_main
from classifier.commands.train import main as train_main
from classifier.engine import build
from classifier.errors import ClassifierError
from tests.conftest import stripes

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(batch_size=16, progress=False, amp="off", workers=0, tensorboard=False, plots=False)


def test_train_on_arrays_records_them_and_predicts(tmp_path):
    images, labels = stripes()
    run = classifier.train(model="lenet5", dataset=(images, labels), class_names=["left", "mid", "right"],
                           epochs=3, lr=0.05, project=str(tmp_path), name="arrays", **FAST)
    assert run.dir == tmp_path / "arrays" and len(run.history) == 3
    assert {"epoch", "train_loss", "val_acc"} <= set(run.history[0])
    assert run.config.dataset.startswith("arrays:") and 0 <= run.metrics["accuracy"] <= 1
    model = run.model
    assert model.classes == ["left", "mid", "right"]
    preds = model.predict(images[:5])  # an (N, H, W) batch
    assert len(preds) == 5 and all(p.path is None for p in preds)
    # the same arrays evaluate; a resume without them is a one-line error, with them it continues
    report = model.evaluate((images, labels), output=tmp_path / "ev")
    assert report.metrics["n_samples"] == len(images) and (tmp_path / "ev" / "report.md").is_file()
    with pytest.raises(ClassifierError, match="in-memory arrays"):
        classifier.train(resume=run.dir, epochs=4)
    with pytest.raises(ClassifierError, match="in-memory arrays"):
        model.evaluate()
    again = classifier.train(resume=run.dir, dataset=(images, labels), class_names=["left", "mid", "right"],
                             epochs=4)
    assert len(again.history) == 4
    other = stripes(seed=1)
    with pytest.raises(ClassifierError, match="cannot change when resuming"):
        classifier.train(resume=run.dir, dataset=other, class_names=["left", "mid", "right"], epochs=5)


@pytest.mark.parametrize("bad, message", [
    (dict(dataset=(np.zeros((4, 8, 8, 5), np.uint8), [0, 1, 0, 1])), "channel axis"),
    (dict(dataset=(np.zeros((4, 8, 8), np.uint8), [0, 1, 0])), "labels must be"),
    (dict(dataset=(np.zeros((4, 8, 8), np.uint8), [0, 1, 0, 7]), class_names=["a", "b"]), "labels must be in"),
    (dict(dataset="fashion_mnist", class_names=["a"]), "class_names"),
    (dict(model="resnet19"), "did you mean"),
])
def test_bad_api_arguments_are_one_line_errors(tmp_path, bad, message):
    with pytest.raises(ClassifierError, match=message) as info:
        classifier.train(project=str(tmp_path), **{**FAST, **bad})
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A lenet5 run on a 3-class folder, and its ONNX export."""
    from tests.conftest import write_class_images

    tmp = tmp_path_factory.mktemp("api")
    data = write_class_images(tmp / "colours", per_class=20)
    run = classifier.train(model="lenet5", dataset=f"folder:{data}", epochs=2, project=str(tmp / "runs"),
                           name="folder", **FAST)
    onnx_path = run.model.export()
    return run, onnx_path, data


def test_predict_takes_paths_folders_pil_and_arrays_from_pt_and_onnx(folder_run, tmp_path):
    run, onnx_path, data = folder_run
    files = sorted((data / "red").glob("*.png"))[:3]
    pil = Image.open(files[0])
    array = np.asarray(pil)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    inputs = [str(files[1]), pil, array, array.astype(np.float32) / 255, data / "blue", str(tmp_path / "broken.png")]
    labels = {}
    for path in (run.dir / "best.pt", onnx_path):
        model = classifier.load(path)
        preds = model.predict(inputs, topk=2)
        assert len(preds) == 4 + len(list((data / "blue").glob("*.png")))
        assert preds.skipped and preds.skipped[0][0].endswith("broken.png")
        assert preds[0].path == str(files[1]) and preds[1].path is None
        assert preds[1].label == preds[2].label == preds[3].label  # PIL, uint8 and float arrays: same image
        assert len(preds[0].topk) == 2 and preds[0].topk[0][0] == preds[0].label
        assert np.isclose(preds[0].probs.sum(), 1, atol=1e-5) and preds[0].label in model.classes
        labels[path.suffix] = [p.label for p in preds]
    assert labels[".pt"] == labels[".onnx"]


def test_predict_on_a_folder_lists_images_as_training_does(folder_run, tmp_path):
    run, _, data = folder_run
    files = sorted((data / "red").glob("*.png"))[:2]
    (tmp_path / "photos" / "day2").mkdir(parents=True)
    (tmp_path / "photos" / ".ipynb_checkpoints").mkdir()  # a notebook's hidden copies: not images to classify
    for target in ("photos/b.png", "photos/day2/a.png", "photos/.ipynb_checkpoints/b.png"):
        (tmp_path / target).write_bytes(files[0].read_bytes())
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    preds = classifier.load(run.dir / "best.pt").predict(tmp_path / "photos")
    assert [p.path for p in preds] == [str(tmp_path / "photos" / "b.png"), str(tmp_path / "photos" / "day2" / "a.png")]


def test_bad_batch_size_and_data_tuple_are_one_line_errors(folder_run):
    run, _, data = folder_run
    model = classifier.load(run.dir / "best.pt")
    with pytest.raises(ClassifierError, match="batch_size must be a whole number of at least 1, got 0"):
        model.predict(data / "red", batch_size=0)
    with pytest.raises(ClassifierError, match="batch_size must be"):
        model.evaluate(data, batch_size=0)
    with pytest.raises(ClassifierError, match="takes two arrays, got 3 items"):
        model.evaluate((np.zeros((2, 8, 8), np.uint8), [0, 1], ["a", "b"]))


def test_evaluate_and_export_from_the_api(folder_run, tmp_path):
    run, onnx_path, data = folder_run
    model = classifier.load(run.dir / "best.pt")
    on_split = model.evaluate(output=tmp_path / "split")
    assert on_split.metrics["n_samples"] == len(load_split_paths(run.dir, "test"))
    on_folder = classifier.load(onnx_path).evaluate(str(data), output=tmp_path / "folder")
    assert on_folder.metrics["n_samples"] == 60 and "accuracy" in on_folder._repr_html_()
    assert classifier.load(onnx_path).metadata["classes"] == model.classes
    with pytest.raises(ClassifierError, match="already an exported model"):
        classifier.load(onnx_path).export()
    with pytest.raises(ClassifierError, match="unexpected keyword"):
        model.export(quantise="int8")


def load_split_paths(run_dir, split):
    return json.loads((run_dir / "split.json").read_text())["splits"][split]["paths"]


def test_cli_and_api_give_the_same_run_and_predictions(tmp_path, tiny_folder):
    argv = ["--model", "lenet5", "--dataset", f"folder:{tiny_folder}", "--epochs", "2", "--project",
            str(tmp_path), "--name", "cli", "--batch-size", "16", "--progress", "false", "--amp", "off",
            "--workers", "0", "--tensorboard", "false", "--plots", "false"]
    cli_dir = train_main(argv)
    api_run = classifier.train(model="lenet5", dataset=f"folder:{tiny_folder}", epochs=2, project=str(tmp_path),
                               name="api", **FAST)
    for name in ("config.yaml", "split.json", "given.yaml"):
        cli_text = (cli_dir / name).read_text().replace("name: cli", "name: api")
        assert cli_text == (api_run.dir / name).read_text(), name
    a, b = load_checkpoint(cli_dir / "best.pt")["model"], load_checkpoint(api_run.dir / "best.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    classify_main(["--checkpoint", str(cli_dir / "best.pt"), str(tiny_folder), "--output", str(tmp_path / "p"),
               "--quiet"])
    cli_rows = (tmp_path / "p" / "predictions.csv").read_text().splitlines()
    api_preds = classifier.load(api_run.dir / "best.pt").predict(str(tiny_folder))
    api_preds.save(tmp_path / "q")
    assert cli_rows == (tmp_path / "q" / "predictions.csv").read_text().splitlines()


def test_callbacks_fire_in_order_and_can_stop_the_run(tmp_path, tiny_folder):
    seen = []

    def on_epoch_end(run, row):
        seen.append(("epoch", row["epoch"], row["is_best"] in (True, False)))
        if row["epoch"] == 2:
            run.stop("enough")

    result = classifier.train(model="lenet5", dataset=f"folder:{tiny_folder}", epochs=5, project=str(tmp_path),
                              callbacks={"on_train_start": [lambda run: seen.append(("start",))],
                                         "on_epoch_end": [on_epoch_end],
                                         "on_train_end": lambda run, summary: seen.append(("end", summary["epochs"]))},
                              **FAST)
    assert seen == [("start",), ("epoch", 1, True), ("epoch", 2, True), ("end", 2)]
    assert len(result.history) == 2 and json.loads((result.dir / "summary.json").read_text())["epochs"] == 2
    with pytest.raises(ClassifierError, match="unknown callback event"):
        classifier.train(model="lenet5", dataset=f"folder:{tiny_folder}", project=str(tmp_path),
                         callbacks={"on_epoch_done": [print]}, **FAST)


def test_train_restores_global_state(tmp_path, tiny_folder):
    torch.set_num_threads(2)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    classifier.train(model="lenet5", dataset=f"folder:{tiny_folder}", epochs=1, threads=1, seed=3,
                     deterministic=True, project=str(tmp_path), **FAST)
    threads_after = torch.get_num_threads()
    torch.set_num_threads(1)  # the suite's setting (conftest)
    assert threads_after == 2 and not torch.are_deterministic_algorithms_enabled()
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_resume_honours_every_given_flag(tmp_path, tiny_folder):
    """Defect: --epochs 10 (the default value) on a finished 2-epoch run was ignored on resume."""
    argv = ["--model", "lenet5", "--dataset", f"folder:{tiny_folder}", "--project", str(tmp_path), "--name", "r",
            "--batch-size", "16", "--progress", "false", "--amp", "off", "--workers", "0", "--tensorboard", "false", "--plots", "false"]
    run_dir = train_main(argv + ["--epochs", "2", "--early-stopping", "1", "--lr", "0.02"])
    done = json.loads((run_dir / "summary.json").read_text())["epochs"]
    assert done <= 2
    train_main(["--resume", str(run_dir), "--epochs", "10", "--early-stopping", "0", "--progress", "false"])
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt["epoch"] == 10 and ckpt["config"]["early_stopping"] == 0 and ckpt["config"]["epochs"] == 10
    assert ckpt["given"]["epochs"] == 10 and ckpt["given"]["lr"] == 0.02
    with pytest.raises(SystemExit):
        train_main(["--resume", str(run_dir), "--lr", "0.1"])


def test_ctrl_c_saves_the_unfinished_epoch_and_resumes_exactly(tmp_path, tiny_folder, monkeypatch, capsys):
    """Defect: Ctrl-C kept only the last end-of-epoch checkpoint. SIGINT in the middle of epoch 2 now
    saves that epoch's progress; resuming gives the same weights as an uninterrupted run."""
    settings = dict(model="lenet5", dataset=f"folder:{tiny_folder}", epochs=3, batch_size=8, progress=False,
                    amp="off", workers=0, tensorboard=False, eval_test=False, plots=False, project=str(tmp_path))
    whole = classifier.train(name="whole", **settings)
    real = build.build_model

    def interrupting_model(*args, **kw):
        model, note = real(*args, **kw)
        calls = []

        def hook(module, inputs, output):
            if module.training:
                calls.append(1)
                if len(calls) == 8:  # epoch 2 has 5 batches of 8 (40 training images): its third step
                    signal.raise_signal(signal.SIGINT)
        model.register_forward_hook(hook)
        return model, note

    monkeypatch.setattr(build, "build_model", interrupting_model)
    handler_before = signal.getsignal(signal.SIGINT)  # default, or SIG_IGN when run in a background job
    with pytest.raises(KeyboardInterrupt):
        classifier.train(name="cut", **settings)
    monkeypatch.setattr(build, "build_model", real)
    out = capsys.readouterr().out
    assert "python train.py --resume" in out and str(tmp_path / "cut") in out
    ckpt = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["state"]["batch_in_epoch"] == 3 and ckpt["step"] == 8
    assert signal.getsignal(signal.SIGINT) == handler_before
    resumed = classifier.train(resume=tmp_path / "cut")
    a, b = load_checkpoint(whole.dir / "last.pt")["model"], load_checkpoint(resumed.dir / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_on_the_command_line_exits_cleanly_with_the_resume_command(tmp_path, tiny_folder):
    cmd = [sys.executable, str(ROOT / "train.py"), "--model", "lenet5", "--dataset", f"folder:{tiny_folder}",
           "--epochs", "100000", "--batch-size", "4", "--project", str(tmp_path), "--name", "sig", "--progress",
           "false", "--amp", "off", "--workers", "0", "--tensorboard", "false", "--plots", "false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while not (tmp_path / "sig" / "history.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    start = time.time()
    out, err = proc.communicate(timeout=30)
    assert time.time() - start < 10
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert f"python train.py --resume {tmp_path / 'sig'}" in out
    assert load_checkpoint(tmp_path / "sig" / "last.pt")["epoch"] >= 1

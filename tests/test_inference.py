"""Predictor: one API for checkpoints and exported models, the same predictions from both."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from classifier.checkpoint import save_checkpoint
from classifier.errors import ClassifierError
from classifier.export import export_onnx, to_ort
from classifier.inference import Predictor
from classifier.models import create_model
from classifier.preprocess import Preprocessing

CLASSES = ["coat", "dress", "shirt", "bag"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A grayscale 28x28 checkpoint and its ONNX exports (plain and with embedded preprocessing)."""
    folder = tmp_path_factory.mktemp("predictor")
    torch.manual_seed(0)
    prep = Preprocessing(size=(28, 28), channels=1, mean=(0.29,), std=(0.35,))
    model = create_model("vggnet", num_classes=len(CLASSES), in_chans=1).eval()
    ckpt = save_checkpoint({"model": model.state_dict(), "model_name": "vggnet", "num_classes": len(CLASSES),
                            "in_chans": 1, "classes": CLASSES, "preprocessing": prep.to_dict(),
                            "config": {"dataset": "fashion_mnist"}, "dataset": "fashion_mnist", "epoch": 3},
                           folder / "best.pt")
    meta = {"model_name": "vggnet", "classes": CLASSES, "dataset": "fashion_mnist"}
    onnx_path = export_onnx(model, prep, meta, folder / "model.onnx")
    raw_path = export_onnx(model, prep, meta, folder / "raw" / "model.onnx", embed_preprocessing=True)
    return {"pt": ckpt, "onnx": onnx_path, "raw": raw_path}


def mixed_images():
    """Different sizes and channel counts: gray HW, gray HWx1, RGB, RGBA, and model-sized."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, shape, dtype=np.uint8)
            for shape in [(28, 28), (40, 31, 1), (50, 60, 3), (20, 20, 4), (28, 28, 1)]]


def test_checkpoint_and_onnx_predict_the_same(artifacts):
    pt, ox = Predictor.load(artifacts["pt"]), Predictor.load(artifacts["onnx"])
    assert pt.classes == ox.classes == CLASSES and pt.prep == ox.prep
    images = mixed_images()
    p_pt, p_ox = pt.predict(images), ox.predict(images)
    assert p_pt.shape == (5, len(CLASSES)) and np.allclose(p_pt.sum(1), 1, atol=1e-5)
    assert np.abs(p_pt - p_ox).max() <= 1e-5 and (p_pt.argmax(1) == p_ox.argmax(1)).all()
    batch = np.random.default_rng(1).integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
    assert np.abs(pt.predict(batch, batch_size=4) - ox.predict(batch)).max() <= 1e-5


def test_embedded_preprocessing_model_agrees(artifacts):
    pt, raw = Predictor.load(artifacts["pt"]), Predictor.load(artifacts["raw"])
    assert raw.raw_pixels and raw.resize_embedded and raw.prepare(mixed_images()[2:3]).dtype == np.uint8
    batch = np.random.default_rng(2).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    assert np.abs(pt.predict(batch) - raw.predict(batch)).max() <= 1e-5
    gray = [image for image in mixed_images() if image.ndim == 2 or image.shape[2] == 1]  # 28x28 and 40x31
    assert np.abs(pt.predict(gray) - raw.predict(gray)).max() <= 1e-5  # the graph resizes as the checkpoint does
    # colour images reach the gray graph as rounded luma (as PIL's convert("L") gives); the checkpoint keeps
    # the fractions
    assert np.abs(pt.predict(mixed_images()) - raw.predict(mixed_images())).max() <= 1e-2


def test_ort_format_predicts_like_onnx(artifacts, tmp_path):
    local = tmp_path / "model.onnx"
    local.write_bytes(artifacts["onnx"].read_bytes())
    ort_predictor = Predictor.load(to_ort(local))
    assert ort_predictor.classes == CLASSES
    assert np.abs(ort_predictor.predict(mixed_images()) - Predictor.load(local).predict(mixed_images())).max() <= 1e-5


def test_predict_files(artifacts, tmp_path):
    paths = []
    for i, (mode, size) in enumerate([("L", (28, 28)), ("RGB", (45, 30)), ("RGBA", (28, 28))]):
        path = tmp_path / f"img{i}.png"
        Image.new(mode, size, color=(90 + 40 * i,) * len(mode)).save(path)
        paths.append(path)
    pt, ox = Predictor.load(artifacts["pt"]), Predictor.load(artifacts["onnx"])
    probs = ox.predict_files(paths, batch_size=2)
    assert probs.shape == (3, len(CLASSES))
    assert np.abs(probs - pt.predict_files(paths)).max() <= 1e-5


def test_wrong_input_size_is_a_one_line_error(artifacts):
    predictor = Predictor.load(artifacts["onnx"])
    with pytest.raises(ClassifierError) as err:
        predictor.logits(np.zeros((1, 1, 32, 32), np.float32))
    message = str(err.value)
    assert "(N, 1, 28, 28)" in message and "(1, 1, 32, 32)" in message and "\n" not in message
    with pytest.raises(ClassifierError, match="uint8"):
        Predictor.load(artifacts["raw"]).logits(np.zeros((1, 1, 28, 28), np.float32))


def test_bad_inputs_and_files_are_user_errors(artifacts, tmp_path):
    predictor = Predictor.load(artifacts["onnx"])
    with pytest.raises(ClassifierError, match="uint8"):
        predictor.predict([np.zeros((28, 28), np.float32)])
    with pytest.raises(ClassifierError, match="NHWC"):
        predictor.predict(np.zeros((28, 28, 1), np.uint8))
    with pytest.raises(ClassifierError, match="expected a checkpoint"):
        Predictor.load(tmp_path / "model.h5")
    with pytest.raises(ClassifierError, match="not found"):
        Predictor.load(tmp_path / "missing.onnx")
    assert predictor.predict([]).shape == (0, len(CLASSES))


def test_onnx_client_example(artifacts, tmp_path):
    image = tmp_path / "photo.png"  # at the model's size, so Pillow's resize and ours cannot differ
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (28, 28), dtype=np.uint8)).save(image)
    result = subprocess.run([sys.executable, str(REPO / "examples" / "onnx_client.py"), str(artifacts["onnx"]),
                             str(image), "--top", "2"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    expected = CLASSES[int(Predictor.load(artifacts["onnx"]).predict_files([image]).argmax())]
    assert first.startswith(expected)
    # a model with embedded preprocessing takes the image at any size and resizes it in the graph
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (45, 33), dtype=np.uint8)).save(image)
    result = subprocess.run([sys.executable, str(REPO / "examples" / "onnx_client.py"), str(artifacts["raw"]),
                             str(image), "--top", str(len(CLASSES))], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    shown = result.stdout.split("(")[1].rstrip(")\n").split(", ")
    probs = Predictor.load(artifacts["pt"]).predict_files([image])[0]
    assert shown == [f"{CLASSES[i]} {probs[i]:.1%}" for i in np.argsort(probs)[::-1]]  # the checkpoint's figures


def test_tta_flip_runs_are_predicted_as_they_were_evaluated(tmp_path):
    """A run trained with --tta-flip is evaluated on image + mirror; its checkpoint and its ONNX export too."""
    from classifier.checkpoint import load_checkpoint
    from classifier.artifact import checkpoint_metadata

    torch.manual_seed(0)
    prep = Preprocessing(size=(28, 28), channels=1, mean=(0.29,), std=(0.35,))
    model = create_model("lenet5", num_classes=len(CLASSES), in_chans=1).eval()
    ckpt = save_checkpoint({"model": model.state_dict(), "model_name": "lenet5", "num_classes": len(CLASSES),
                            "in_chans": 1, "classes": CLASSES, "preprocessing": prep.to_dict(),
                            "config": {"dataset": "fashion_mnist", "tta_flip": True}, "dataset": "fashion_mnist",
                            "epoch": 1}, tmp_path / "best.pt")
    onnx_path = export_onnx(model, prep, checkpoint_metadata(load_checkpoint(ckpt)), tmp_path / "model.onnx")
    pt, ox = Predictor.load(ckpt), Predictor.load(onnx_path)
    assert pt.tta_flip and ox.tta_flip
    x = pt.prepare(mixed_images())
    with torch.inference_mode():
        t = torch.from_numpy(x)
        expected = ((model(t) + model(t.flip(-1))) / 2).numpy()
        plain = model(t).numpy()
    assert np.abs(plain - expected).max() > 1e-4  # the mirror image really changes the logits
    assert np.abs(pt.logits(x) - expected).max() <= 1e-5
    assert np.abs(ox.logits(x) - expected).max() <= 1e-4

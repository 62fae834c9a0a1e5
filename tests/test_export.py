"""ONNX export: custom, torchvision and timm models; metadata; parity with PyTorch; embedded
preprocessing; int8; ORT format; refused external data; the export.py command."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from classifier.checkpoint import save_checkpoint
from classifier.errors import ClassifierError
from classifier.export import (checkpoint_metadata, export_onnx, quantize_int8, read_metadata,
                               required_operators_path, to_ort, verify_onnx)
from classifier.inference import Predictor
from classifier.models import create_model
from classifier.preprocess import Preprocessing, to_model_input
from tests.conftest import COLOURS, write_class_images

SIZE = 32
CLASSES = sorted(COLOURS)  # folder datasets list classes in sorted order


def random_images(n, size=SIZE, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def colour_images(n, seed=0):
    """Noisy solid colours with their labels, like the folder dataset."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    rgb = np.array([COLOURS[c] for c in CLASSES])[labels][:, None, None, :]
    pixels = np.clip(rgb + rng.integers(-40, 40, (n, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    return pixels, labels


def train_briefly(model, prep, steps=15):
    """A few Adam steps on colour images: confident logits, so int8 agreement is meaningful."""
    images, labels = colour_images(96, seed=1)
    x = to_model_input(torch.from_numpy(images).permute(0, 3, 1, 2), prep)
    y = torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def make_checkpoint(path, model_name, *, dataset, prep, classes, model=None):
    model = model or create_model(model_name, num_classes=len(classes), in_chans=prep.channels)
    return save_checkpoint({
        "model": model.state_dict(), "model_name": model_name, "num_classes": len(classes),
        "in_chans": prep.channels, "classes": list(classes), "preprocessing": prep.to_dict(),
        "config": {"model": model_name, "dataset": dataset, "seed": 0, "val_fraction": 0.2, "test_fraction": 0.2},
        "dataset": dataset, "epoch": 1, "step": 10,
    }, path)


def colour_folder_run(root, *, per_class: int, seed: int):
    """A briefly trained lenet5 checkpoint (32 px colour) on an image folder that export can reload."""
    prep = Preprocessing(size=(32, 32), channels=3, mean=(0.45, 0.45, 0.45), std=(0.25, 0.25, 0.25))
    torch.manual_seed(0)
    model = train_briefly(create_model("lenet5", num_classes=3, in_chans=3), prep)
    data = write_class_images(root / "colours", per_class=per_class, size=32, seed=seed)
    return make_checkpoint(root / "run" / "best.pt", "lenet5", dataset=f"folder:{data}", prep=prep,
                           classes=CLASSES, model=model)


@pytest.fixture(scope="module")
def prep():
    return Preprocessing(size=(SIZE, SIZE), channels=3, mean=(0.45, 0.45, 0.45), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def lenet(prep):
    torch.manual_seed(0)
    return train_briefly(create_model("lenet5", num_classes=3, in_chans=3), prep)


@pytest.fixture(scope="module")
def lenet_onnx(lenet, prep, tmp_path_factory):
    meta = {"model_name": "lenet5", "classes": CLASSES, "num_classes": 3, "dataset": "colours"}
    return export_onnx(lenet, prep, meta, tmp_path_factory.mktemp("lenet") / "model.onnx")


def test_metadata_round_trip(lenet_onnx, prep):
    meta = read_metadata(lenet_onnx)
    assert meta["classes"] == CLASSES and meta["num_classes"] == 3
    assert meta["model_name"] == "lenet5" and meta["dataset"] == "colours"
    assert meta["input_size"] == [SIZE, SIZE] and meta["channels"] == 3 and meta["color_mode"] == "RGB"
    assert meta["mean"] == list(prep.mean) and meta["std"] == list(prep.std)
    assert meta["preprocessing_embedded"] is False and meta["input_dtype"] == "float32"
    assert meta["toolkit_version"]
    proto = onnx.load(str(lenet_onnx))
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert not any(node.metadata_props or node.doc_string for node in proto.graph.node)  # no local stack traces
    raw = {p.key: p.value for p in proto.metadata_props}
    assert all(isinstance(v, str) for v in raw.values()) and json.loads(raw["classes"]) == CLASSES


def test_lenet_fp32_parity_on_real_images(lenet_onnx, lenet):
    images, _ = colour_images(64, seed=3)
    parity = verify_onnx(lenet_onnx, lenet, images)
    assert parity.max_abs_diff <= 1e-4 and parity.top1_agreement == 1.0 and parity.images == 64


@pytest.mark.parametrize("name", ["resnet18", "timm/test_resnet"])
def test_pretrained_family_exports_verify(name, prep, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=3).eval()
    path = export_onnx(model, prep, {"model_name": name, "classes": CLASSES}, tmp_path / "m.onnx")
    parity = verify_onnx(path, model, random_images(16))
    assert parity.max_abs_diff <= 1e-4 and parity.top1_agreement == 1.0


def test_embedded_preprocessing_takes_uint8_pixels_of_any_size(lenet, prep, tmp_path):
    path = export_onnx(lenet, prep, {"classes": CLASSES}, tmp_path / "raw.onnx", embed_preprocessing=True)
    meta = read_metadata(path)
    assert meta["preprocessing_embedded"] is True and meta["resize_embedded"] is True
    assert meta["input_dtype"] == "uint8"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for height, width in [(SIZE, SIZE), (45, 28), (20, 70)]:  # the graph resizes as the checkpoint path does
        pixels = torch.from_numpy(random_images(3, size=max(height, width), seed=height)[:, :height, :width])
        pixels = pixels.permute(0, 3, 1, 2).contiguous()
        got = session.run(None, {"input": pixels.numpy()})[0]
        with torch.inference_mode():
            want = lenet(to_model_input(pixels, prep)).numpy()
        assert np.abs(got - want).max() <= 1e-4, (height, width)
    mixed = [random_images(1, size=s, seed=s)[0] for s in (SIZE, 40, 25, 40)]
    assert verify_onnx(path, lenet, mixed).top1_agreement == 1.0
    with pytest.raises(ClassifierError, match="2 sizes: use predict"):
        Predictor.load(path).prepare(mixed[:2])
    # with --dynamic-size the model itself takes other sizes: the graph normalises and does not resize
    dyn = export_onnx(lenet, prep, {"classes": CLASSES}, tmp_path / "dyn.onnx", embed_preprocessing=True,
                      dynamic_size=True)
    assert read_metadata(dyn)["resize_embedded"] is False
    assert "Resize" not in {node.op_type for node in onnx.load(str(dyn)).graph.node}


def test_dynamic_size_export_runs_at_other_sizes(prep, tmp_path):
    model = create_model("vggnet", num_classes=3, in_chans=3).eval()
    path = export_onnx(model, prep, {"classes": CLASSES}, tmp_path / "dyn.onnx", dynamic_size=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = to_model_input(torch.from_numpy(random_images(2, size=48)).permute(0, 3, 1, 2), prep)
    x = nn.functional.interpolate(x, size=(48, 40))
    with torch.inference_mode():
        assert np.abs(session.run(None, {"input": x.numpy()})[0] - model(x).numpy()).max() <= 1e-4


def _kernel_shapes(path):
    return [list(a.ints) for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"
            for a in n.attribute if a.name == "kernel_shape"]


def test_fixed_size_export_trims_taps_that_only_see_padding(tmp_path):
    """8x8 -> 4x4 -> 2x2 -> 1x1: the stride-2 conv from 2x2 uses a 2x2 corner of its kernel, the
    convolutions at 1x1 (dense and depthwise) their centre tap only; the outputs stay the same."""
    torch.manual_seed(0)
    conv = lambda i, o, s=1, g=1: nn.Sequential(nn.Conv2d(i, o, 3, s, 1, groups=g), nn.BatchNorm2d(o), nn.ReLU())
    model = nn.Sequential(conv(3, 8, 2), conv(8, 8, 2), conv(8, 16, 2), conv(16, 16), conv(16, 16, g=16),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding them is tested too
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    small = Preprocessing(size=(8, 8), channels=3, mean=(0.45,) * 3, std=(0.25,) * 3)
    path = export_onnx(model, small, {"classes": CLASSES}, tmp_path / "fixed.onnx")
    assert _kernel_shapes(path) == [[3, 3], [3, 3], [2, 2], [1, 1], [1, 1]]
    parity = verify_onnx(path, model, random_images(32, size=8, seed=6))
    assert parity.max_abs_diff <= 1e-5 and parity.top1_agreement == 1.0
    dynamic = export_onnx(model, small, {"classes": CLASSES}, tmp_path / "dyn.onnx", dynamic_size=True)
    assert _kernel_shapes(dynamic) == [[3, 3]] * 5  # another size may need every tap


def test_dynamic_size_refused_for_fixed_size_models(prep, tmp_path):
    fixed = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * (SIZE - 2) ** 2, 3)).eval()
    with pytest.raises(ClassifierError, match="only runs at its own input size"):
        export_onnx(fixed, prep, {}, tmp_path / "fixed.onnx", dynamic_size=True)
    assert not (tmp_path / "fixed.onnx").exists()


def test_unsupported_layer_is_a_one_line_error(prep, tmp_path):
    class Eigen(nn.Module):
        def forward(self, x):
            return torch.linalg.eigvals(x[:, 0, :4, :4]).real

    with pytest.raises(ClassifierError, match="cannot export") as err:
        export_onnx(Eigen(), prep, {}, tmp_path / "bad.onnx")
    assert "\n" not in str(err.value)


def test_int8_static_agrees_with_fp32(lenet_onnx, lenet, tmp_path):
    fp32 = Predictor.load(lenet_onnx)
    calibration = [fp32.prepare(colour_images(32, seed=10 + i)[0]) for i in range(4)]
    path = quantize_int8(lenet_onnx, tmp_path / "model.int8.onnx", calibration_batches=calibration)
    meta = read_metadata(path)
    assert meta["classes"] == CLASSES and "static" in meta["quantization"] and "128" in meta["quantization"]
    images, labels = colour_images(128, seed=20)
    int8 = Predictor.load(path)
    agree = (int8.predict(images).argmax(1) == fp32.predict(images).argmax(1)).mean()
    assert agree >= 0.9
    assert path.stat().st_size < lenet_onnx.stat().st_size


def test_int8_dynamic_runs(lenet_onnx, tmp_path):
    path = quantize_int8(lenet_onnx, tmp_path / "dyn.int8.onnx", method="dynamic")
    assert "dynamic" in read_metadata(path)["quantization"]
    assert Predictor.load(path).predict(colour_images(4)[0]).shape == (4, 3)
    with pytest.raises(ClassifierError, match="calibration"):
        quantize_int8(lenet_onnx, tmp_path / "x.onnx")


def test_ort_format_loads_in_onnxruntime(lenet_onnx, tmp_path):
    local = tmp_path / "model.onnx"
    local.write_bytes(lenet_onnx.read_bytes())
    ort_path = to_ort(local)
    assert ort_path == tmp_path / "model.ort"
    config = required_operators_path(ort_path).read_text()
    assert "ai.onnx" in config and "Gemm" in config
    session = ort.InferenceSession(str(ort_path), providers=["CPUExecutionProvider"])
    x = Predictor.load(local).prepare(colour_images(4)[0])
    reference = ort.InferenceSession(str(local), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(session.run(None, {"input": x})[0] - reference).max() <= 1e-4
    assert read_metadata(ort_path)["classes"] == CLASSES
    assert "nchwc" not in config  # the default target is ARM: no x86-only layout


def test_ort_format_for_x86_keeps_the_nchwc_layout(lenet_onnx, tmp_path):
    local = tmp_path / "model.onnx"
    local.write_bytes(lenet_onnx.read_bytes())
    config = required_operators_path(to_ort(local, target="amd64")).read_text()
    assert "com.microsoft.nchwc" in config
    x = Predictor.load(local).prepare(colour_images(4)[0])
    reference = Predictor.load(local).logits(x)
    assert np.abs(Predictor.load(tmp_path / "model.ort").logits(x) - reference).max() <= 1e-4
    with pytest.raises(ClassifierError, match="unknown ORT target"):
        to_ort(local, target="x86")


def _with_external_weight(lenet_onnx, folder, location):
    proto = onnx.load(str(lenet_onnx))
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    tensor.external_data.add(key="location", value=location)
    folder.mkdir(exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd"])
def test_external_data_outside_model_folder_is_refused(lenet_onnx, tmp_path, location):
    path = _with_external_weight(lenet_onnx, tmp_path / "model", location)
    with pytest.raises(ClassifierError, match="outside the model's folder"):
        read_metadata(path)
    with pytest.raises(ClassifierError, match="outside the model's folder"):
        Predictor.load(path)


# --- the export.py command -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def colour_run(lenet, prep, tmp_path_factory):
    """A run folder whose checkpoint was trained on an image-folder dataset the command can reload."""
    root = tmp_path_factory.mktemp("colour_run")
    data = write_class_images(root / "colours", per_class=20, size=SIZE, seed=7)
    return make_checkpoint(root / "run" / "best.pt", "lenet5", dataset=f"folder:{data}", prep=prep,
                           classes=CLASSES, model=lenet)


def test_export_command_int8_and_mobile(colour_run, capsys):
    from classifier.commands.export import main

    out = main(["--checkpoint", str(colour_run), "--quantize", "int8", "--mobile", "--threads", "1"])
    run = colour_run.parent
    assert out == run / "model.onnx"
    for name in ("model.onnx", "model.int8.onnx", "model.ort", "model.int8.ort", "model.required_operators.config"):
        assert (run / name).is_file(), name
    report = capsys.readouterr().out
    assert "verified" in report and "val images" in report and "batch 1, 1 thread(s))" in report
    assert "model.ort (optimised for arm;" in report
    lines = {line.split()[0] + " " + line.split()[1]: line for line in report.splitlines() if line.startswith("ONNX")}
    assert "100.00%" in lines["ONNX fp32"] and " MB" in lines["ONNX int8"]
    assert read_metadata(run / "model.onnx")["config"]["dataset"].startswith("folder:")


def test_export_command_user_errors_are_one_line(colour_run, tmp_path, capsys, monkeypatch):
    from classifier.commands.export import main
    from classifier.export import onnx as onnx_module

    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "missing.pt")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint not found") and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(colour_run), "--threads", "0"])
    assert capsys.readouterr().err == "error: --threads must be at least 1, got 0\n"

    monkeypatch.setattr(onnx_module, "compare_with_torch",
                        lambda *a, **k: onnx_module.Parity(max_abs_diff=0.5, top1_agreement=0.9, images=8))
    out = tmp_path / "bad.onnx"
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(colour_run), "--output", str(out)])
    err = capsys.readouterr().err
    assert "verification failed" in err and err.count("\n") == 1
    assert not out.exists()  # a model that failed verification is not left behind


def test_checkpoint_metadata_is_plain(colour_run):
    from classifier.checkpoint import load_checkpoint

    meta = checkpoint_metadata(load_checkpoint(colour_run))
    assert meta["classes"] == CLASSES and meta["model_name"] == "lenet5"
    json.dumps(meta)


def test_export_command_without_data(lenet, prep, tmp_path, capsys):
    from classifier.commands.export import main

    ckpt = make_checkpoint(tmp_path / "run" / "best.pt", "lenet5", dataset=f"folder:{tmp_path / 'gone'}",
                           prep=prep, classes=CLASSES, model=lenet)
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(ckpt), "--quantize", "int8"])
    assert "calibrates on training images" in capsys.readouterr().err
    out = tmp_path / "deploy" / "net.onnx"
    main(["--checkpoint", str(ckpt), "--output", str(out), "--quantize", "int8", "--quantize-method", "dynamic",
          "--embed-preprocessing", "--opset", "18"])
    report = capsys.readouterr().out
    assert "64 random images" in report and "no accuracy" in report
    assert read_metadata(out.with_name("net.int8.onnx"))["preprocessing_embedded"] is True


def test_benchmark_times_every_engine(lenet, lenet_onnx, prep):
    from classifier.export import benchmark

    results = benchmark(prep, model=lenet, onnx_models={"ORT fp32": lenet_onnx}, threads=1, batch=4, runs=10,
                        budget_s=0.5, rounds=2)
    assert [r.name for r in results] == ["PyTorch eager", "ORT fp32"]
    for r in results:
        assert r.threads == 1 and r.batch == 4 and 0 < r.median_ms <= r.p90_ms and r.throughput > 0

"""The export formats table (classifier/export/formats.py): every format from the API and the CLI, each
output loaded and predicting like the checkpoint; the flags generated from ``ExportOptions``; the old
spellings of every script still accepted; one-line errors for unknown formats and bad combinations."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import classifier
from classifier.artifact import METADATA_KEYS, checkpoint_metadata, metadata_key, read_metadata
from classifier.checkpoint import load_checkpoint
from classifier.errors import ClassifierError
from classifier.export import formats as formats_module
from classifier.export import from_checkpoint, web
from classifier.export.formats import FORMATS, ExportFormat, ExportOptions, Row, register_format
from classifier.inference import Predictor
from classifier.models import create_model
from classifier.preprocess import Preprocessing, to_model_input
from tests.test_export import CLASSES, colour_folder_run, colour_images


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny trained checkpoint on an image folder the export can reload (calibration, accuracy)."""
    return colour_folder_run(tmp_path_factory.mktemp("formats_run"), per_class=10, seed=5)


@pytest.fixture(scope="module")
def images():
    return colour_images(12, seed=9)[0]


def assert_predicts_like_checkpoint(path, run, images, *, exact=True):
    """``path`` loads with ``classifier.load`` and gives the checkpoint's classes (and probabilities, fp32)."""
    model = classifier.load(path)
    assert model.classes == CLASSES
    got = Predictor.load(path).predict(images)
    expected = Predictor.load(run).predict(images)
    if exact:
        np.testing.assert_allclose(got, expected, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= (1.0 if exact else 0.9)


def web_runtime_or_skip():
    try:
        web.onnxruntime_web()
    except ClassifierError as err:
        pytest.skip(f"onnxruntime-web unavailable: {err}")


# --- every format, from the API and from the CLI ---------------------------------------------------------
def test_api_onnx_int8_ort_through_the_table(run, images, tmp_path):
    out = classifier.load(run).export(tmp_path / "net.onnx", format=["onnx", "int8", "ort"], threads=1)
    assert out == tmp_path / "net.onnx"
    assert_predicts_like_checkpoint(out, run, images)
    for name in ("net.int8.onnx", "net.ort", "net.int8.ort"):
        assert_predicts_like_checkpoint(tmp_path / name, run, images, exact=name == "net.ort")
    assert "static" in read_metadata(tmp_path / "net.int8.onnx")["quantization"]


def test_cli_int8_and_ort_with_the_generated_flags(run, images, tmp_path, capsys):
    from classifier.commands.export import main

    out = main(["--checkpoint", str(run), "--format", "int8,ort", "--output", str(tmp_path / "m.onnx"),
                "--quantize-method", "dynamic", "--ort-target", "amd64", "--verify", "false", "--threads", "1"])
    assert out == tmp_path / "m.int8.onnx"  # the first asked format's file; its fp32 source is written too
    report = capsys.readouterr().out
    assert "verified" not in report and "optimised for amd64" in report and "dynamic" in report
    for name in ("m.onnx", "m.ort", "m.int8.ort"):
        assert (tmp_path / name).is_file(), name
    assert_predicts_like_checkpoint(tmp_path / "m.ort", run, images)
    assert_predicts_like_checkpoint(out, run, images, exact=False)


def test_web_is_a_format_on_the_same_path(run, images, tmp_path, capsys):
    """API ``format="web"`` and CLI ``--format web int8`` write the page folder; its models predict as the
    checkpoint and appear in the same report as every other format."""
    from classifier.commands.export import main

    web_runtime_or_skip()
    folder = classifier.load(run).export(tmp_path / "api-page", format="web", threads=1)
    assert folder == tmp_path / "api-page" and (folder / "index.html").is_file()
    assert_predicts_like_checkpoint(folder / "model.onnx", run, images)
    capsys.readouterr()
    folder = main(["--checkpoint", str(run), "--format", "web", "int8", "--output", str(tmp_path / "cli-page"),
                   "--threads", "1"])
    page = json.loads((folder / "page.json").read_text())
    assert [m["precision"] for m in page["models"]] == ["fp32", "int8"]
    assert_predicts_like_checkpoint(folder / "model.int8.onnx", run, images, exact=False)
    report = capsys.readouterr().out
    assert "web fp32" in report and "web int8" in report and "test acc" in report


def test_a_registered_format_works_everywhere(run, tmp_path):
    """Adding a format is one registration: it then works in Model.export and export.py."""
    def build_copy(job):
        fp32 = job.model_files()[0]
        out = fp32.with_name(f"{fp32.stem}.copy.onnx")
        shutil.copyfile(fp32, out)
        job.rows.append(Row("copy", out))
        return out

    register_format(ExportFormat("copy", build_copy, "a copy of the fp32 model", needs=("onnx",)))
    try:
        from classifier.commands.export import main

        out = main(["--checkpoint", str(run), "--format", "copy", "--output", str(tmp_path / "a.onnx"),
                    "--verify", "false", "--threads", "1"])
        assert out == tmp_path / "a.copy.onnx" and (tmp_path / "a.onnx").is_file()
        assert classifier.load(out).classes == CLASSES
    finally:
        FORMATS.pop("copy")


# --- options, flags and old spellings (no export: the options reaching export_checkpoint are captured) ----
@pytest.fixture
def captured(monkeypatch):
    calls = []
    monkeypatch.setattr(from_checkpoint, "export_checkpoint",
                        lambda checkpoint, options: calls.append(options) or options)
    return calls


@pytest.mark.parametrize("argv, expected", [
    ([], {"requested": ["onnx"]}),
    (["--format", "onnx", "int8", "ort"], {"requested": ["onnx", "int8", "ort"]}),
    (["--format", "web,int8", "--serve"], {"requested": ["web", "int8"], "serve": True}),
    # old spellings, as scripts and the README used them
    (["--quantize", "int8"], {"requested": ["onnx", "int8"], "quantize": "int8"}),
    (["--mobile"], {"requested": ["onnx", "ort"], "mobile": "arm"}),
    (["--mobile", "amd64", "--quantize", "int8", "--quantize-method", "dynamic"],
     {"requested": ["onnx", "int8", "ort"], "mobile": "amd64", "quantize_method": "dynamic"}),
    (["--no-verify"], {"verify": False}),
    (["--verify", "false"], {"verify": False}),
    (["--dynamic-size", "--embed-preprocessing", "--benchmark"],
     {"dynamic_size": True, "embed_preprocessing": True, "benchmark": True}),
    (["--benchmark", "false", "--embed-preprocessing", "yes"], {"benchmark": False, "embed_preprocessing": True}),
    (["--threads", "2", "--opset", "18", "--data-dir", "d", "--output", "x.onnx"],
     {"threads": 2, "opset": 18, "data_dir": "d", "output": "x.onnx"}),
    (["--web"], {"requested": ["web"], "web": ""}),
    (["--web", "site", "--quantize", "int8", "--serve"], {"requested": ["web", "int8"], "web": "site", "serve": True}),
])
def test_export_flags_and_old_spellings(run, captured, argv, expected):
    from classifier.commands.export import main

    main(["--checkpoint", str(run), *argv])
    options = captured[-1]
    for name, value in expected.items():
        assert (options.requested() if name == "requested" else getattr(options, name)) == value, name


def test_api_old_spellings_reach_the_same_options(run, captured):
    model = classifier.load(run)
    model.export_web("site", quantize="int8", serve=True)
    assert captured[-1].requested() == ["web", "int8"] and captured[-1].output == "site" and captured[-1].serve
    model.export_web("site", format="web")  # the format it writes anyway: taken
    assert captured[-1].requested() == ["web"]
    with pytest.raises(ClassifierError, match="export_web writes the web page only"):
        model.export_web("site", format="onnx")
    model.export(quantize="int8", mobile="amd64", verify="false", threads="2")
    options = captured[-1]
    assert options.requested() == ["onnx", "int8", "ort"] and options.verify is False and options.threads == 2


def test_every_option_is_a_flag():
    from classifier.commands.export import build_parser

    flags = {s for action in build_parser()._actions for s in action.option_strings}
    for name in ExportOptions.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in flags


@pytest.mark.parametrize("argv, name, value", [
    (["--checkpoint", "c.pt", "--no-progress"], "progress", False),
    (["--checkpoint", "c.pt", "--progress", "false"], "progress", False),
    (["--checkpoint", "c.pt", "--progress", "photos"], "progress", True),  # a folder after --progress
    (["--checkpoint", "c.pt", "photos"], "progress", True),
])
def test_eval_progress_flag_both_spellings(argv, name, value):
    from classifier.commands.eval import build_parser

    args = build_parser().parse_args(argv)
    assert getattr(args, name) is value
    if "photos" in argv:
        assert args.folder == "photos"


@pytest.mark.parametrize("argv, quiet", [
    (["--quiet", "a.png", "b.png"], True),  # as before: --quiet does not take the image as its value
    (["a.png", "--quiet"], True), (["--quiet", "false", "a.png"], False), (["a.png"], False),
])
def test_test_quiet_flag_both_spellings(argv, quiet):
    from classifier.commands.test import build_parser

    args = build_parser().parse_args(["--checkpoint", "c.pt", *argv])
    assert args.quiet is quiet and "a.png" in args.images


def test_train_boolean_flags_keep_their_style():
    from classifier.commands.train import build_parser

    args = build_parser().parse_args(["--progress", "false", "--plots", "--tta-flip", "yes"])
    assert args.progress is False and args.plots is True and args.tta_flip is True


# --- one-line errors ---------------------------------------------------------------------------------------
def test_unknown_format_lists_the_table(run, capsys):
    from classifier.commands.export import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(run), "--format", "tflite"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown export format 'tflite'") and err.count("\n") == 1
    assert all(f"{name}: " in err for name in FORMATS)
    with pytest.raises(ClassifierError, match="did you mean 'int8'"):
        classifier.load(run).export(format="int9")


@pytest.mark.parametrize("options, message", [
    ({"format": ["web", "onnx"]}, "drop onnx from --format"),
    ({"format": "web", "mobile": "arm"}, "drop --mobile"),
    ({"format": "web", "dynamic_size": True}, "drop --dynamic-size"),
    ({"mobile": "arm", "ort_target": "amd64"}, "give the .ort target once"),
    ({"serve": True}, "add --web"),
    ({"output": "model.pt"}, "must end in .onnx"),
    ({"format": "web", "web": "a", "output": "b"}, "give the page's folder once"),
    ({"threads": "many"}, "threads='many' is not a valid int"),
    ({"verifyy": False}, "did you mean 'verify'"),
])
def test_bad_combinations_are_one_line_errors(run, options, message):
    with pytest.raises(ClassifierError, match=message) as info:
        classifier.load(run).export(**options)
    assert "\n" not in str(info.value)


# --- metadata keys: declared in one place ----------------------------------------------------------------
def test_a_declared_metadata_key_is_written_and_decoded(run, tmp_path):
    ckpt = load_checkpoint(run)
    metadata_key("test_temperature", "float", lambda c: c.get("test_temperature"))
    try:
        assert "test_temperature" not in checkpoint_metadata(ckpt)  # older checkpoints: the key is left out
        ckpt["test_temperature"] = 1.5
        meta = checkpoint_metadata(ckpt)
        assert meta["test_temperature"] == 1.5
        from classifier.export import export_onnx

        model = create_model("lenet5", num_classes=3, in_chans=3)
        path = export_onnx(model, Preprocessing.from_dict(ckpt["preprocessing"]), meta, tmp_path / "t.onnx")
        assert read_metadata(path)["test_temperature"] == 1.5
    finally:
        METADATA_KEYS.pop("test_temperature")
    assert read_metadata(path)["test_temperature"] == "1.5"  # undeclared keys stay strings


def test_formats_table_is_what_the_help_lists():
    from classifier.commands.export import build_parser

    text = build_parser().format_help()
    assert all(f"  {name} " in text for name in FORMATS)
    assert formats_module.plan(ExportOptions.of(format="ort"))[0].name == "onnx"  # needs come first


def test_a_second_output_is_exported_after_the_logits(tmp_path):
    """``export_onnx(outputs=...)``: e.g. a CAM beside the logits; predictors read the first output."""
    from torch import nn

    from classifier.artifact import open_session
    from classifier.export import export_onnx

    class WithMap(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x), x.mean(dim=1)

    prep = Preprocessing(size=(32, 32), channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    net = create_model("lenet5", num_classes=3, in_chans=3).eval()
    meta = {"model_name": "lenet5", "classes": CLASSES, "num_classes": 3}
    path = export_onnx(WithMap(net), prep, meta, tmp_path / "two.onnx", outputs=("logits", "map"))
    assert [o.name for o in open_session(path).get_outputs()] == ["logits", "map"]
    images = colour_images(4, seed=2)[0]
    with torch.inference_mode():
        expected = torch.softmax(net(to_model_input(torch.from_numpy(images).permute(0, 3, 1, 2), prep)), 1).numpy()
    np.testing.assert_allclose(Predictor.load(path).predict(images), expected, atol=1e-5)

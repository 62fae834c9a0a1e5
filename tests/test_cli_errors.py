"""User mistakes get one line on stderr (``error: ...``), exit code 2 and no traceback, from each command."""
from __future__ import annotations

import socket

import numpy as np
import pytest

from classifier.checkpoint import save_checkpoint
from classifier.commands import cli_entry
from classifier.commands.eval import main as eval_main
from classifier.commands.test import main as classify_main
from classifier.commands.train import main as train_main
from classifier.models import create_model
from classifier.preprocess import Preprocessing
from tests.conftest import write_class_images

PREP = Preprocessing(size=(16, 16), channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Folders and models the cases below point at."""
    root = tmp_path_factory.mktemp("errors")
    (root / "empty").mkdir()
    write_class_images(root / "one", per_class=2, classes={"red": (200, 30, 30)})
    write_class_images(root / "hollow", per_class=2, classes={"red": (200, 30, 30)})
    (root / "hollow" / "blue").mkdir()
    (root / "hollow" / "blue" / "notes.txt").write_text("no images here")
    write_class_images(root / "colours", per_class=3)
    write_class_images(root / "pets", per_class=2, classes={"cat": (1, 2, 3), "dog": (4, 5, 6)})
    model = create_model("lenet5", num_classes=3, in_chans=3)
    ckpt = {"model": model.state_dict(), "model_name": "lenet5", "num_classes": 3, "in_chans": 3,
            "classes": CLASSES, "preprocessing": PREP.to_dict(), "config": {}, "dataset": f"folder:{root / 'colours'}",
            "epoch": 1, "step": 1}
    save_checkpoint(ckpt, root / "lenet.pt")
    save_checkpoint({**ckpt, "model_name": "vggnet"}, root / "mislabelled.pt")  # lenet5 weights, called vggnet
    (root / "typo.yaml").write_text("lrr: 0.1\n")
    (root / "bad_value.yaml").write_text("epochs: many\n")
    return root


def onnx_fed_the_wrong_size(root):
    """A library user calling an exported 16x16 model on 20x20 input (scripts resize; direct calls may not)."""
    from classifier.export import export_onnx
    from classifier.inference import Predictor

    path = root / "model.onnx"
    if not path.exists():
        export_onnx(create_model("lenet5", num_classes=3, in_chans=3), PREP,
                    {"model_name": "lenet5", "classes": CLASSES, "num_classes": 3, "dataset": "colours"}, path)
    return cli_entry(lambda argv: Predictor.load(path).logits(np.zeros((1, 3, 20, 20), np.float32))), []


def offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)


TRAIN = ["--model", "lenet5", "--workers", "0", "--progress", "false"]
# case -> (how to run it, what the one line must contain)
CASES = {
    "unknown model": (lambda r: (train_main, [*TRAIN, "--model", "resnet19", "--dataset", f"folder:{r / 'colours'}"]),
                      "unknown model 'resnet19'; did you mean resnet18"),
    "unknown dataset": (lambda r: (train_main, [*TRAIN, "--dataset", "fashion_mnits"]),
                        "unknown dataset 'fashion_mnits'; did you mean fashion_mnist?"),
    "missing folder": (lambda r: (train_main, [*TRAIN, "--dataset", f"folder:{r / 'nowhere'}"]), "does not exist"),
    "empty folder": (lambda r: (train_main, [*TRAIN, "--dataset", f"folder:{r / 'empty'}"]), "no class sub-folders"),
    "class folder without images": (lambda r: (train_main, [*TRAIN, "--dataset", f"folder:{r / 'hollow'}"]),
                                    "class folder '{r}/hollow/blue' has no images"),
    "single class": (lambda r: (train_main, [*TRAIN, "--dataset", f"folder:{r / 'one'}"]),
                     "has only one class folder ('red'); at least 2 are needed"),
    "weights that do not fit the model": (
        lambda r: (train_main, [*TRAIN, "--model", "vggnet", "--mode", "finetune", "--weights", str(r / "lenet.pt"),
                                "--dataset", f"folder:{r / 'colours'}", "--project", str(r / "runs")]),
        "does not fit model 'vggnet'"),
    "checkpoint that does not fit its model": (
        lambda r: (eval_main, ["--checkpoint", str(r / "mislabelled.pt"), str(r / "colours")]),
        "checkpoint weights do not fit model 'vggnet'"),
    "missing checkpoint": (lambda r: (classify_main, ["--checkpoint", str(r / "nope.pt"), str(r / "colours")]),
                           "checkpoint not found"),
    "evaluation folder sharing no class": (
        lambda r: (eval_main, ["--checkpoint", str(r / "lenet.pt"), str(r / "pets")]),
        "'{r}/pets' shares no class with the model (folder: cat, dog; model: blue, green, red)"),
    "ONNX model fed the wrong input size": (onnx_fed_the_wrong_size,
                                            "expects input of shape (N, 3, 16, 16) (channels, height, width), "
                                            "got (1, 3, 20, 20)"),
    "unknown config key": (lambda r: (train_main, ["--config", str(r / "typo.yaml")]),
                           "unknown config key 'lrr'; did you mean 'lr'?"),
    "invalid config value in YAML": (lambda r: (train_main, ["--config", str(r / "bad_value.yaml")]),
                                     "config value epochs='many' is not a valid int"),
    "invalid flag value": (lambda r: (train_main, ["--batch-size", "abc"]),
                           "config value batch_size='abc' is not a valid int"),
    "invalid choice": (lambda r: (train_main, ["--sampler", "even"]),
                       "invalid sampler 'even' (choices: shuffle, balanced)"),
    "missing data, offline": (
        lambda r: (train_main, [*TRAIN, "--dataset", "cifar10", "--data-dir", str(r / "data")]),
        "CIFAR-10 not found; put data_batch_1"),
    "two commands in one": (lambda r: (train_main, [*TRAIN, "--find-label-issues", "--resume", str(r / "runs")]),
                            "--find-label-issues and --resume are different commands: give one of them"),
    "a search option without the search": (lambda r: (train_main, [*TRAIN, "--tune-time", "30m"]),
                                           "--tune-time goes with --tune"),
    "missing data, downloads off": (
        lambda r: (train_main, [*TRAIN, "--dataset", "cifar10", "--data-dir", str(r / "data"), "--download", "false"]),
        "(download disabled)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_error(files, case, capsys, monkeypatch):
    offline(monkeypatch)  # no case needs the network; "missing data, offline" relies on it
    run, expected = CASES[case]
    main, argv = run(files)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("error: ") and expected.replace("{r}", str(files)) in err, err
    if case == "missing data, offline":
        assert "download failed: URLError" in err and "name resolution" in err

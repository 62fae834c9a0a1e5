"""Speed options: each can be turned off and a run still trains; the in-memory path feeds a run the same
data as streaming; recipes give defaults that config files and flags override; test-time flip averages
the logits of an image and its mirror image; the speed bench's plain loop reads the toolkit's images.

(Batched augmentation keeping labels aligned is tested in test_data_loaders.py.)
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, os.path.dirname(__file__))
from test_data_helpers import write_fashion  # noqa: E402

from classifier.commands.train import build_parser, main as train_main  # noqa: E402
from classifier.config import RECIPES_DIR, load_recipe, load_yaml, make_config, recipe_names, resolve_config, \
    with_recipe  # noqa: E402
from classifier.data import InMemoryLoader, StreamingLoader, load_dataset  # noqa: E402
from classifier.engine import loop  # noqa: E402
from classifier.engine.runtime import Dist, use_channels_last  # noqa: E402
from classifier.engine.build import build_data  # noqa: E402
from classifier.engine.trainer import fit  # noqa: E402
from classifier.inference import Predictor  # noqa: E402
from classifier.models import create_model  # noqa: E402
from classifier.preprocess import Preprocessing  # noqa: E402


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny_run(tmp_path, dataset, **overrides) -> dict:
    return {**dict(dataset=f"folder:{dataset}", model="vggnet", extra={"width": 8}, epochs=1, batch_size=16,
                   amp="on", workers=0, progress=False, tensorboard=False, plots=False,
                   project=str(tmp_path / "runs")),
            **overrides}


# --- every speed option can be turned off ---------------------------------------------------------
OPTIONS = {  # config override -> what the run must then use
    "all on": ({}, dict(amp=torch.bfloat16, loader="InMemoryLoader", channels_last=True)),
    "amp off": ({"amp": "off"}, dict(amp=None)),
    "channels_last off": ({"channels_last": False}, dict(channels_last=False)),
    "in_memory off": ({"in_memory": False}, dict(loader="StreamingLoader")),
    "threads 1": ({"threads": 1}, dict(threads=1)),
}


@pytest.mark.parametrize("option", OPTIONS)
def test_each_speed_option_off_still_trains(tmp_path, tiny_folder, restore_threads, option):
    overrides, expected = OPTIONS[option]
    seen = {}

    def probe(run):
        conv = next(m for m in run.raw_model.modules() if isinstance(m, torch.nn.Conv2d))
        seen.update(amp=run.amp_dtype, loader=type(run.data.loaders["train"]).__name__, threads=torch.get_num_threads(),
                    channels_last=conv.weight.is_contiguous(memory_format=torch.channels_last),
                    initial={k: v.detach().clone() for k, v in run.raw_model.state_dict().items()})

    run_dir = fit(make_config(tiny_run(tmp_path, tiny_folder, name=option.replace(" ", "-"), **overrides)),
                  callbacks={"on_train_start": [probe]}).dir
    assert {k: seen[k] for k in expected} == expected
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 1 and math.isfinite(summary["val_loss"]) and summary["test_accuracy"] is not None
    trained = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(trained[k], v) for k, v in seen["initial"].items() if v.is_floating_point())


def test_channels_last_is_left_off_where_the_cpu_backward_corrupts_memory(tmp_path, tiny_folder, capsys):
    """A 1x1 stride-2 convolution with 2-7 input channels (the custom resnet at width 4) trains in the default
    memory format: in channels_last, torch 2.13's oneDNN backward aborted the process or hung. Wider models
    keep channels_last."""
    cpu = torch.device("cpu")
    assert use_channels_last(True, create_model("resnet", num_classes=2, width=8), cpu)
    assert not use_channels_last(True, create_model("resnet", num_classes=2, width=4), cpu)
    assert not use_channels_last(False, create_model("resnet", num_classes=2, width=8), cpu)
    seen = {}

    def probe(run):
        seen.update(run=run.channels_last, weights=[m.weight.is_contiguous(memory_format=torch.channels_last)
                                                    for m in run.raw_model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)])

    fit(make_config(tiny_run(tmp_path, tiny_folder, model="resnet", extra={"width": 4}, amp="off")),
        callbacks={"on_train_start": [probe]})
    assert seen["run"] is False and not any(seen["weights"])
    assert "channels_last off: the model has a 1x1 stride-2 convolution" in capsys.readouterr().out


def test_in_memory_and_streaming_runs_get_the_same_data(tmp_path):
    """Same split, same preprocessing (resized to 32x32), no augmentation: the same batches, in order."""
    write_fashion(tmp_path / "data" / "fashion_mnist", n_train=40, n_test=10)
    values = dict(dataset="fashion_mnist", data_dir=str(tmp_path / "data"), download=False, model="vggnet",
                  img_size=32, augment="none", batch_size=8, workers=0, val_fraction=0.25, seed=3)
    runs = {}
    for in_memory in (True, False):
        run_dir = tmp_path / f"run-{in_memory}"
        run_dir.mkdir()
        runs[in_memory] = build_data(make_config({**values, "in_memory": in_memory}), run_dir, Dist())
    fast, slow = runs[True], runs[False]
    assert isinstance(fast.loaders["train"], InMemoryLoader) and isinstance(slow.loaders["train"], StreamingLoader)
    assert fast.record == slow.record and fast.prep == slow.prep
    for split in ("train", "val"):
        a, b = fast.loaders[split], slow.loaders[split]
        a.set_epoch(1)
        b.set_epoch(1)
        pairs = list(zip(a, b))
        assert len(pairs) == len(a) == len(b) > 0
        for (xa, ya), (xb, yb) in pairs:
            assert xa.shape[1:] == (1, 32, 32)
            torch.testing.assert_close(xa, xb, rtol=0, atol=1e-6)
            assert torch.equal(ya, yb)


# --- test-time flip --------------------------------------------------------------------------------
def test_tta_flip_averages_the_logits_of_image_and_mirror():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1 * 4 * 5, 3))
    images = torch.randint(0, 256, (6, 1, 4, 5), dtype=torch.uint8)
    x, y = images.float(), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        both = (model(x) + model(x.flip(3))) / 2
    cpu = torch.device("cpu")
    out = loop.evaluate(model, [(x, y)], cpu, tta_flip=True)
    assert out["loss"] == pytest.approx(F.cross_entropy(both, y).item(), rel=1e-5)
    assert out["acc"] == pytest.approx((both.argmax(1) == y).float().mean().item())
    assert loop.evaluate(model, [(x, y)], cpu)["loss"] != pytest.approx(out["loss"], rel=1e-5)
    raw = Preprocessing(size=(4, 5), channels=1, mean=(0.0,), std=(1 / 255,))  # model input == pixel values
    probs = Predictor.from_model(model, raw, ["a", "b", "c"], tta_flip=True).predict(images.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(probs, torch.softmax(both, 1).numpy(), rtol=1e-5, atol=1e-6)


def test_tta_flip_reaches_validation_and_test_evaluation(tmp_path, tiny_folder, monkeypatch):
    """The one flip rule (inference.flip_averaged) runs in validation (torch tensors) and in the test-split
    report (the Predictor, numpy arrays)."""
    from classifier import inference

    kinds = []
    original = inference.flip_averaged

    def spy(forward, x):
        kinds.append(type(x).__name__)
        return original(forward, x)

    monkeypatch.setattr(loop, "flip_averaged", spy)
    monkeypatch.setattr(inference, "flip_averaged", spy)
    fit(make_config(tiny_run(tmp_path, tiny_folder, name="tta", tta_flip=True)))
    assert "Tensor" in kinds and "ndarray" in kinds  # validation during training, and the test-split report


# --- recipes ---------------------------------------------------------------------------------------
def resolve(argv):
    return resolve_config(build_parser().parse_args(argv))


def test_recipe_sets_defaults_that_config_files_and_flags_override(tmp_path):
    recipe = load_recipe("fast")
    cfg = resolve(["--recipe", "fast"])
    assert cfg.recipe == "fast" and {k: getattr(cfg, k) for k in recipe} == recipe
    cfg = resolve(["--recipe", "fast", "--epochs", "3", "--tta-flip", "false"])
    assert (cfg.epochs, cfg.tta_flip, cfg.model, cfg.label_smoothing) == (3, False, recipe["model"],
                                                                          recipe["label_smoothing"])
    config_file = tmp_path / "mine.yaml"
    config_file.write_text(yaml.safe_dump({"recipe": "fast", "epochs": 4, "batch_size": 64}))
    cfg = resolve(["--config", str(config_file), "--batch-size", "32"])
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == (4, 32, recipe["lr"])
    assert resolve(["--config", str(config_file), "--recipe", "fast-95"]).epochs == 4  # the file's keys win


def test_unknown_recipe_is_one_line_with_close_matches(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--recipe", "fsat"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err
    assert err.startswith("error: unknown recipe 'fsat'") and "did you mean fast" in err


@pytest.mark.parametrize("name", recipe_names())
def test_shipped_recipes_are_valid_and_give_a_reason_for_every_key(name):
    path = RECIPES_DIR / f"{name}.yaml"
    make_config(with_recipe({"recipe": name}))
    keys = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert keys and all(" # " in line for line in keys), "every key line ends with '# reason'"
    own = load_yaml(path)
    if own.get("recipe"):  # built on another recipe: its keys, then ours
        base = load_recipe(own.pop("recipe"))
        assert load_recipe(name) == {**base, **own}


# --- the speed bench's two sides read the same images -----------------------------------------------
def test_bench_plain_loop_reads_the_toolkits_fashion_mnist(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from train_speed import torchvision_root

    from classifier._compat import import_torchvision

    write_fashion(tmp_path / "data" / "fashion_mnist", n_train=20, n_test=5)
    _, official = load_dataset("fashion_mnist", tmp_path / "data", download=False)
    root = torchvision_root(str(tmp_path / "data"), tmp_path / "tv")
    plain = import_torchvision().datasets.FashionMNIST(str(root), train=True)
    np.testing.assert_array_equal(plain.data.numpy(), official["train"].images[..., 0])
    np.testing.assert_array_equal(plain.targets.numpy(), official["train"].labels)

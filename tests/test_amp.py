"""Mixed precision: --amp auto|bf16|fp16|off. fp16 trains with a gradient scaler whose state is saved, so a
resume is exact; a device whose fp16 gives a non-finite loss falls back to fp32 with a message. fp16 also
runs on the CPU, so all of this is tested here (tests/test_cuda.py repeats it on a GPU)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from classifier.checkpoint import load_checkpoint
from classifier.commands.train import main as train_main
from classifier.config import make_config
from classifier.engine import runtime
from classifier.engine.loop import StepContext, train_one_epoch
from tests.conftest import write_class_images

FAST = ["--model", "lenet5", "--batch-size", "8", "--progress", "false", "--workers", "0", "--threads", "1",
        "--tensorboard", "false", "--eval-test", "false", "--plots", "false", "--seed", "1", "--deterministic"]


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return write_class_images(tmp_path_factory.mktemp("amp") / "colours", per_class=12)


def test_amp_choices_and_on_is_an_alias_of_auto():
    assert make_config({"amp": "on"}).amp == "auto"
    cpu = torch.device("cpu")
    assert runtime.amp_dtype("fp16", cpu) is torch.float16 and runtime.amp_dtype("bf16", cpu) is torch.bfloat16
    assert runtime.amp_dtype("off", cpu) is None
    assert runtime.grad_scaler(torch.float16, cpu) is not None
    assert runtime.grad_scaler(torch.bfloat16, cpu) is None and runtime.grad_scaler(None, cpu) is None


def test_fp16_saves_its_scaler_and_resumes_exactly(colours, tmp_path):
    common = ["--dataset", f"folder:{colours}", "--project", str(tmp_path), "--amp", "fp16", *FAST]
    train_main([*common, "--epochs", "2", "--name", "straight"])
    import classifier  # stopped after epoch 1 of 2 (the schedule is the 2-epoch one), then resumed

    stop = {"on_epoch_end": [lambda run, row: run.stop("test")]}
    classifier.train(dataset=f"folder:{colours}", project=str(tmp_path), amp="fp16", epochs=2, name="resumed",
                     model="lenet5", batch_size=8, progress=False, workers=0, threads=1, tensorboard=False,
                     eval_test=False, plots=False, seed=1, deterministic=True, callbacks=stop)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    classifier.train(resume=tmp_path / "resumed")
    a, b = (load_checkpoint(tmp_path / name / "last.pt") for name in ("straight", "resumed"))
    assert a["grad_scaler"]["scale"] > 0 and a["grad_scaler"] == b["grad_scaler"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["amp"] == "fp16" and summary["grad_scale"] == a["grad_scaler"]["scale"]
    off = ["--dataset", f"folder:{colours}", "--project", str(tmp_path), "--amp", "off", *FAST]
    train_main([*off, "--epochs", "1", "--name", "fp32"])
    assert json.loads((tmp_path / "fp32" / "summary.json").read_text())["amp"] == "fp32"
    assert "grad_scaler" not in load_checkpoint(tmp_path / "fp32" / "last.pt")


class NaNInHalf(torch.nn.Module):
    """A net whose fp16 forward gives NaN (what some cards' fp16 kernels do) and whose fp32 forward is fine."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(12, 3)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out * float("nan") if out.dtype == torch.float16 else out


class Batches(list):
    def iter_from(self, start):
        return iter(self[start:])


def test_fp16_that_gives_nan_falls_back_to_fp32(capsys):
    torch.manual_seed(0)
    model = NaNInHalf()
    batches = Batches([(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(3)])
    before = model.fc.weight.detach().clone()
    ctx = StepContext(torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"), torch.float16,
                      scaler=runtime.grad_scaler(torch.float16, torch.device("cpu")))
    sums, step = train_one_epoch(model, batches, ctx, step=0)
    assert step == 3 and math.isfinite(sums.mean_loss) and sums.count == 12
    assert ctx.amp_dtype is None and ctx.scaler is None
    assert not torch.equal(model.fc.weight, before)  # it trained, in fp32
    assert "fp16 gave a loss of nan at step 1: continuing in fp32" in capsys.readouterr().out

"""On a CUDA GPU: each mode for one epoch, bf16 and fp16 (with its gradient scaler), exact resume, DDP over
NCCL when two GPUs are there, and ONNX export parity of a GPU-trained model. Skipped without CUDA (as
Ultralytics' tests/test_cuda.py is); bench/gpu_check.sh runs it on a GPU machine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from classifier.checkpoint import load_checkpoint
from classifier.commands.train import main as train_main
from tests.conftest import write_class_images

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ROOT = Path(__file__).resolve().parents[1]
FAST = ["--batch-size", "16", "--progress", "false", "--workers", "0", "--tensorboard", "false",
        "--eval-test", "false", "--plots", "false", "--device", "cuda", "--seed", "2"]


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return write_class_images(tmp_path_factory.mktemp("cuda") / "colours", per_class=24, size=32)


@pytest.fixture(scope="module")
def pretrained(colours, tmp_path_factory):
    """A scratch vggnet checkpoint on the GPU, the weights the finetune / feature-extract tests start from."""
    project = tmp_path_factory.mktemp("cuda-runs")
    train_main(["--model", "vggnet", "--dataset", f"folder:{colours}", "--epochs", "1", "--project", str(project),
                "--name", "pre", *FAST])
    return project / "pre" / "best.pt"


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_scratch_one_epoch_per_precision(colours, tmp_path, amp):
    train_main(["--model", "vggnet", "--dataset", f"folder:{colours}", "--epochs", "1", "--amp", amp,
                "--project", str(tmp_path), "--name", amp, *FAST])
    s = summary(tmp_path / amp)
    assert s["amp"] == {"off": "fp32"}.get(amp, amp) and s["peak_gpu_memory_mb"] > 0
    assert ("grad_scale" in s) == (amp == "fp16")
    assert np.isfinite(s["val_loss"])


@pytest.mark.parametrize("mode", ["finetune", "feature-extract"])
def test_transfer_modes_one_epoch(colours, pretrained, tmp_path, mode):
    train_main(["--model", "vggnet", "--mode", mode, "--weights", str(pretrained), "--dataset",
                f"folder:{colours}", "--epochs", "3", "--project", str(tmp_path), "--name", mode, *FAST])
    assert np.isfinite(summary(tmp_path / mode)["val_loss"])


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_resume_on_the_gpu_is_exact(colours, tmp_path, amp):
    common = ["--model", "vggnet", "--dataset", f"folder:{colours}", "--project", str(tmp_path), "--amp", amp,
              "--deterministic", *FAST]
    train_main([*common, "--epochs", "2", "--name", "straight"])
    train_main([*common, "--epochs", "1", "--name", "resumed"])
    train_main(["--resume", str(tmp_path / "resumed"), "--epochs", "2"])
    a, b = (load_checkpoint(tmp_path / n / "last.pt") for n in ("straight", "resumed"))
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)


def test_onnx_export_of_a_gpu_trained_model_matches(colours, pretrained, tmp_path):
    import classifier

    model = classifier.load(pretrained)
    path = model.export(tmp_path / "model.onnx")  # verification (max logit difference <= 1e-4) runs inside
    onnx = classifier.load(path)
    files = sorted(str(p) for p in Path(colours).rglob("*.png"))[:16]
    a, b = model.predict(files), onnx.predict(files)
    assert [p.label for p in a] == [p.label for p in b]
    np.testing.assert_allclose([p.probs for p in a], [p.probs for p in b], atol=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("mode", ["scratch", "finetune"])
def test_ddp_over_nccl_with_two_gpus(colours, pretrained, tmp_path, mode):
    extra = ["--mode", mode, "--weights", str(pretrained), "--head-warmup-epochs", "1"] if mode != "scratch" else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "train.py",
           "--model", "vggnet", "--dataset", f"folder:{colours}", "--epochs", "2", "--project", str(tmp_path),
           "--name", mode, *extra, *FAST]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert summary(tmp_path / mode)["epochs"] == 2

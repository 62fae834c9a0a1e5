"""Faults: SIGKILL during a checkpoint save, SIGKILL during training then --resume, NaN and non-finite weights.

The kills are real SIGKILLs of a child process (no cleanup runs). Most are placed exactly, the child killing
itself at the chosen point, so those tests are deterministic; one test also kills at random moments.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from classifier.checkpoint import load_checkpoint
from classifier.commands.train import main as train_main
from tests.conftest import write_class_images

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
KILLED = -getattr(signal, "SIGKILL", 9)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


def child(script: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=ENV, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# --- a kill during a save ------------------------------------------------------------------------
STALLED_SAVE = """
import io, os, sys, time, torch
from classifier.checkpoint import save_checkpoint
path = sys.argv[1]
save_checkpoint({"model": {"w": torch.full((1000,), 1.0)}, "step": 1}, path)
real_save = torch.save

def half_then_stall(obj, f):  # write half of the real bytes, then hang until killed
    buffer = io.BytesIO()
    real_save(obj, buffer)
    out = f if hasattr(f, "write") else open(f, "wb")  # save_checkpoint passes an open file
    out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    out.flush()
    os.fsync(out.fileno())
    print("half written", flush=True)
    time.sleep(60)

torch.save = half_then_stall
save_checkpoint({"model": {"w": torch.full((1000,), 2.0)}, "step": 2}, path)
"""

SAVE_LOOP = """
import sys, torch
from classifier.checkpoint import save_checkpoint
for step in range(1, 10**6):
    save_checkpoint({"model": {"w": torch.full((250_000,), float(step))}, "step": step}, sys.argv[1])
    print(step, flush=True)
"""


def test_kill_in_the_middle_of_a_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    proc = child(STALLED_SAVE, path)
    try:
        assert proc.stdout.readline().strip() == "half written", proc.stderr.read()
        proc.kill()
    finally:
        assert proc.wait(timeout=30) == KILLED
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["model"]["w"], torch.full((1000,), 1.0))
    partial = list(tmp_path.glob(".last.pt.*.tmp"))  # the interrupted write went to a temporary file
    assert len(partial) == 1 and 0 < partial[0].stat().st_size


def test_kill_at_random_moments_of_repeated_saves(tmp_path):
    path, rng = tmp_path / "last.pt", random.Random(7)
    for _ in range(2):
        proc = child(SAVE_LOOP, path)
        try:
            first = int(proc.stdout.readline())  # a save of this process has finished...
            time.sleep(rng.uniform(0, 0.1))  # ...then a kill at a random moment of the following ones
            proc.kill()
        finally:
            assert proc.wait(timeout=30) == KILLED
        ckpt = load_checkpoint(path)
        assert ckpt["step"] >= first and torch.equal(ckpt["model"]["w"], torch.full((250_000,), float(ckpt["step"])))


# --- a kill during training, then --resume ---------------------------------------------------------
TRAIN = """
import os, signal, sys
from classifier.commands.train import main
from classifier.engine import trainer

what, _, n = os.environ.get("KILL_AT", "").partition(":")  # step:N or epoch:N


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if what in ("step", "SIGTERM", "SIGUSR1"):  # right after optimiser step N: SIGKILL, or a scheduler's signal
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps = []

    def count_then_die(optimizer, args, kwargs):
        steps.append(1)
        if len(steps) == int(n):
            die() if what == "step" else os.kill(os.getpid(), getattr(signal, what))

    register_optimizer_step_post_hook(count_then_die)
elif what == "epoch":  # right after the end-of-epoch-N checkpoint is written
    real_save = trainer.save_checkpoint

    def save_then_die(payload, path):
        real_save(payload, path)
        if str(path).endswith("last.pt") and payload["epoch"] == int(n) and not payload["state"]["batch_in_epoch"]:
            die()

    trainer.save_checkpoint = save_then_die
main(sys.argv[1:])
"""
# 60 images -> 42 train: 5 steps of 8 per epoch (drop_last). Dropout draws from the random state a checkpoint
# saves; augmentation is a function of (seed, epoch, sample).
RUN = ["--model", "lenet5-dropout", "--epochs", "3", "--batch-size", "8", "--augment", "light", "--seed", "3",
       "--save-every", "2", "--deterministic", "--threads", "1", "--workers", "0", "--amp", "off",
       "--progress", "false", "--tensorboard", "false", "--eval-test", "false", "--plots", "false"]
TIMING = ("epoch_time_s", "images_per_s")


def train(*args, kill=None, code=None):
    env = {**ENV, **({"KILL_AT": kill} if kill else {})}
    proc = subprocess.run([sys.executable, "-c", TRAIN, *map(str, args)], env=env, cwd=ROOT, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == (code if code is not None else KILLED if kill else 0), proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data = write_class_images(root / "colours", per_class=20)
    common = ["--dataset", f"folder:{data}", "--project", str(root / "runs"), *RUN]
    train(*common, "--name", "straight")
    return root / "runs", common


def assert_same_run(a: Path, b: Path):
    """Final weights bit-for-bit, and every metric of every epoch (train and val loss and accuracy) equal."""
    for name in ("last.pt", "best.pt"):
        x, y = load_checkpoint(a / name), load_checkpoint(b / name)
        assert x["epoch"] == y["epoch"] and x["step"] == y["step"] and x["model"].keys() == y["model"].keys()
        for k in x["model"]:
            assert torch.equal(x["model"][k], y["model"][k]), (name, k)
    history = [[{k: v for k, v in row.items() if k not in TIMING} for row in load_checkpoint(run / "last.pt")
                ["state"]["history"]] for run in (a, b)]
    assert history[0] == history[1] and len(history[0]) == 3
    summaries = [json.loads((run / "summary.json").read_text()) for run in (a, b)]
    assert summaries[0]["val_loss"] == summaries[1]["val_loss"]
    assert summaries[0]["best_epoch"] == summaries[1]["best_epoch"]


@pytest.mark.parametrize("kill, saved", [
    ("step:7", (1, 6, 1)),  # mid-epoch 2: step 7 is lost, resumed from the step-6 save (batch 1 of epoch 2)
    ("epoch:1", (1, 5, 0)),  # between epochs: right after the end-of-epoch-1 checkpoint
])
def test_sigkill_then_resume_ends_bit_identical(runs, kill, saved):
    project, common = runs
    name = kill.replace(":", "-")
    train(*common, "--name", name, kill=kill)
    run = project / name
    ckpt = load_checkpoint(run / "last.pt")
    assert (ckpt["epoch"], ckpt["step"], ckpt["state"]["batch_in_epoch"]) == saved
    assert "resuming lenet5-dropout" in train("--resume", run).stdout
    assert_same_run(project / "straight", run)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_scheduler_signal_saves_mid_epoch_like_ctrl_c_then_resumes_bit_identical(runs, sig):
    """SIGTERM (spot machines, Kubernetes) and SIGUSR1 (SLURM before the time limit) save the unfinished
    epoch after the step in flight, print the resume command and exit 130 without a traceback."""
    project, common = runs
    done = train(*common, "--name", sig, kill=f"{sig}:7", code=130)
    run = project / sig
    assert f"interrupted ({sig})" in done.stdout and f"--resume {run}" in done.stdout
    assert "Traceback" not in done.stderr
    ckpt = load_checkpoint(run / "last.pt")
    assert (ckpt["epoch"], ckpt["step"], ckpt["state"]["batch_in_epoch"]) == (1, 7, 2)  # step 7 kept
    train("--resume", run)
    assert_same_run(project / "straight", run)


# --- non-finite loss and weights ---------------------------------------------------------------------
FAST = ["--model", "lenet5", "--batch-size", "8", "--save-every", "2", "--progress", "false", "--amp", "off",
        "--workers", "0", "--tensorboard", "false", "--eval-test", "false", "--plots", "false"]


class BlowUpGradient(torch.autograd.Function):
    """Identity forward; an infinite gradient backward (a finite loss that ruins the weights)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def sabotage(monkeypatch, at_step: int, make_bad):
    """Make the model's output bad (``make_bad(logits)``) on training forward pass number ``at_step``."""
    from classifier.engine import build as setup

    real = setup.build_model

    def prepare(*args, **kw):
        model, note = real(*args, **kw)
        calls = []

        def hook(module, inputs, output):
            if module.training:
                calls.append(1)
                if len(calls) == at_step:
                    return make_bad(output)
            return output

        model.register_forward_hook(hook)
        return model, note

    monkeypatch.setattr(setup, "build_model", prepare)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_folder, monkeypatch,
                                                                           capsys):
    sabotage(monkeypatch, 5, lambda logits: logits * float("nan"))
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--dataset", f"folder:{tiny_folder}", "--project", str(tmp_path), "--name", "nan", *FAST])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: loss became nan at step 5 (epoch batch 4); training stopped, the last good checkpoint "
                   "is kept")
    ckpt = load_checkpoint(tmp_path / "nan" / "last.pt")
    assert ckpt["step"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_finite_loss_with_exploding_weights_never_saves_them(tmp_path, tiny_folder, monkeypatch, capsys):
    sabotage(monkeypatch, 4, BlowUpGradient.apply)  # step 4's loss is fine, its update is not
    with pytest.raises(SystemExit):
        train_main(["--dataset", f"folder:{tiny_folder}", "--project", str(tmp_path), "--name", "inf", *FAST])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: weights became non-finite by step 4 (") and "\n" not in err
    assert err.endswith("training stopped, the last good checkpoint is kept")
    ckpt = load_checkpoint(tmp_path / "inf" / "last.pt")
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["model"].values())

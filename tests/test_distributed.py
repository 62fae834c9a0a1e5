"""torchrun: 2 CPU processes (gloo) train like 1 process with the same global batch, write one set of
outputs, reduce validation metrics exactly, and resume from last.pt after an elastic restart."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from classifier.checkpoint import load_checkpoint
from classifier.models import model_from_checkpoint
from classifier.config import make_config
from classifier.data import InMemoryLoader, Samples, StreamingLoader, build_loader
from classifier.engine.runtime import Dist
from classifier.engine.build import make_run_dir, per_process_batch, build_data, wrap_model
from classifier.errors import ClassifierError
from classifier.preprocess import Preprocessing
from tests.conftest import write_class_images
from tests.test_data_helpers import index_images, write_image_folder

REPO = Path(__file__).resolve().parents[1]
# 60 images: train 39 (odd, so the ranks' shards are padded), val 9 (odd: ranks get 5 and 4 samples,
# i.e. 2 and 1 batches of 4), test 12. lenet5 has no BatchNorm: see test_two_processes_train_like_one.
# No --deterministic: these CPU kernels are deterministic anyway, and it costs each process 3 s of imports.
CONFIG = dict(model="lenet5", epochs=3, batch_size=8, optimizer="sgd", lr=0.05, val_fraction=0.15, seed=5,
              amp="off", workers=0, channels_last=False, plots=False)


def torchrun(*args: str, max_restarts: int = 0) -> subprocess.CompletedProcess:
    """Run torchrun with 2 processes; a job still running after 120 s (a hang) is killed, workers too."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", str(max_restarts), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as job:
        try:
            out, err = job.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            out, err = job.communicate()
    assert job.returncode == 0, out[-3000:] + err[-3000:]
    return subprocess.CompletedProcess(cmd, job.returncode, out, err)


def as_flags(values: dict) -> list[str]:
    """{"batch_size": 8, "channels_last": False} -> ["--batch-size", "8", "--channels-last", "false"]"""
    return [s for k, v in values.items() for s in (f"--{k.replace('_', '-')}", str(v).lower()
                                                   if isinstance(v, bool) else str(v))]


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return write_class_images(tmp_path_factory.mktemp("ddp") / "colours", per_class=20)


@pytest.fixture(scope="module")
def ddp_run(colours):
    """train.py under torchrun, 2 processes; (run folder, the job's stdout and stderr)."""
    project = colours.parent / "runs-ddp"
    done = torchrun("train.py", "--dataset", f"folder:{colours}", "--project", str(project), "--name", "ddp",
                    "--progress", "true", *as_flags(CONFIG), "--plots", "true")  # rank 0 alone draws the figures
    return project / "ddp", done


def read_history(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "history.csv").open()))


def test_two_processes_train_like_one(ddp_run, colours, tmp_path):
    from classifier.engine.trainer import fit

    run, done = ddp_run
    assert [p.name for p in run.parent.iterdir()] == ["ddp"]  # one run folder, chosen by rank 0
    assert [int(r["epoch"]) for r in read_history(run)] == [1, 2, 3]
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    for name in ("best.pt", "last.pt", "summary.json", "curves.png", "eval/report.md"):
        assert (run / name).is_file(), name
    assert not [p for p in run.rglob("*") if p.name.startswith(".")]  # no half-written checkpoint left
    # only rank 0 prints epochs and the summary, and draws progress bars (tqdm starts each at 0%)
    assert done.stdout.count("epoch   1/3") == 1 and done.stdout.count("done: 3 epochs") == 1
    assert done.stderr.count("epoch 1/3:   0%") == 1
    assert "distributed: 2 processes (gloo); global batch 8 = 2 x 4 per process; learning rate 0.05" in done.stdout

    single = fit(make_config({**CONFIG, "dataset": f"folder:{colours}", "project": str(tmp_path), "name": "one",
                              "progress": False, "eval_test": False, "tensorboard": False})).dir
    a, b = load_checkpoint(single / "last.pt"), load_checkpoint(run / "last.pt")
    assert a["step"] == b["step"] == 3 * (39 // 8)  # the same optimiser steps: --batch-size is global
    # Not bit-exact: each process averages the loss over its 4 samples and DDP averages the two
    # gradients, where one process averages 8 at once; the float sums run in another order. Measured
    # after these 12 steps: at most 3e-8 absolute on weights up to 0.3. lenet5 has no BatchNorm, whose
    # batch statistics would be per process (SyncBatchNorm, which would share them, needs GPUs).
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-6, msg=k)
    hist_a, hist_b = read_history(single), read_history(run)
    for ra, rb in zip(hist_a, hist_b):
        assert float(rb["train_loss"]) == pytest.approx(float(ra["train_loss"]), rel=1e-4)
        assert float(rb["val_loss"]) == pytest.approx(float(ra["val_loss"]), rel=1e-4)


def test_validation_metrics_equal_single_process_evaluation(ddp_run, tmp_path):
    """The val row of the last epoch (2 processes, 5 + 4 samples) equals evaluating the saved weights
    in one process: every sample counted once, none padded or dropped."""
    from classifier.engine.loop import evaluate

    run, _ = ddp_run
    ckpt = load_checkpoint(run / "last.pt")
    data = build_data(make_config(ckpt["config"]), tmp_path, Dist())
    assert len(data.splits["val"]) == 9
    one = evaluate(model_from_checkpoint(ckpt), data.loaders["val"], torch.device("cpu"))
    last = read_history(run)[-1]
    assert one["count"] == 9
    assert float(last["val_loss"]) == pytest.approx(one["loss"], rel=1e-5)
    assert round(float(last["val_acc"]) * 9) == round(one["acc"] * 9)


CRASH_ONCE = """
import json, os, sys
import torch.distributed as dist
from classifier.config import make_config
from classifier.engine.trainer import fit

def crash_once(run, row):
    if row["epoch"] == 1 and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        dist.barrier()  # rank 0 has saved last.pt for epoch 1
        if run.dist.rank == 1:
            os._exit(3)

fit(make_config(json.loads(sys.argv[1])), callbacks={"on_epoch_end": [crash_once]})
"""


def test_elastic_restart_resumes_from_last_checkpoint(ddp_run, colours, tmp_path):
    """A worker dies after epoch 1; torchrun restarts both, which continue the same run folder from
    last.pt (epoch 1 is not trained again) and end with the uninterrupted run's weights."""
    script = tmp_path / "crash_once.py"
    script.write_text(CRASH_ONCE)
    values = {**CONFIG, "dataset": f"folder:{colours}", "project": str(tmp_path / "runs"), "name": "elastic",
              "progress": False, "eval_test": False, "tensorboard": False}
    done = torchrun(str(script), json.dumps(values), max_restarts=1)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["elastic"]
    assert "torchrun restart 1: resuming" in done.stdout
    assert done.stdout.count("epoch   1/3") == 1 and done.stdout.count("epoch   3/3") == 1
    run = tmp_path / "runs" / "elastic"
    assert [int(r["epoch"]) for r in read_history(run)] == [1, 2, 3]
    a, b = load_checkpoint(ddp_run[0] / "last.pt"), load_checkpoint(run / "last.pt")
    assert b["step"] == a["step"]
    for k in a["model"]:  # same processes, same reduction order: resuming changes nothing
        assert torch.equal(a["model"][k], b["model"][k]), k


RAW3 = Preprocessing(size=(8, 8), channels=3, mean=(0.0,) * 3, std=(1 / 255,) * 3)


@pytest.mark.parametrize("path", ["in-memory", "streaming"])
def test_ranks_split_each_global_batch_of_one_process(path, tmp_path):
    """Both loader paths: with a global batch of 8 on 2 ranks (4 each), batch b of the two ranks together
    is batch b of one process (same samples, same augmentation); padding of the odd set is never
    trained on; the order changes with the epoch."""
    images, labels = index_images(39), np.arange(39) % 3
    samples = Samples(labels=labels, images=images)
    if path == "streaming":
        paths = write_image_folder(tmp_path / "imgs", images, labels)
        samples = Samples(labels=labels, paths=[str(p) for p in paths], root=str(tmp_path / "imgs"))
    kw = dict(train=True, augment="light", seed=7, workers=0, cache=path == "in-memory")

    def epoch_batches(loader, epoch):
        loader.set_epoch(epoch)
        return [sorted(row.tobytes() for row in x.numpy()) for x, _ in loader]

    one = build_loader(samples, RAW3, batch_size=8, **kw)
    ranks = [build_loader(samples, RAW3, batch_size=4, rank=r, world_size=2, **kw) for r in (0, 1)]
    assert type(one) is type(ranks[0]) is {"in-memory": InMemoryLoader, "streaming": StreamingLoader}[path]
    for epoch in (0, 1):
        single = epoch_batches(one, epoch)
        split = [sorted(a + b) for a, b in zip(*(epoch_batches(r, epoch) for r in ranks))]
        assert len(single) == len(split) == 39 // 8
        assert split == single
    assert epoch_batches(one, 0) != epoch_batches(one, 1)


def test_batch_size_is_global_and_must_split_evenly():
    assert per_process_batch(12, Dist(0, 3, 0)) == 4 and per_process_batch(12, Dist()) == 12
    with pytest.raises(ClassifierError, match="global batch.*3 processes.*9 or 12"):
        per_process_batch(10, Dist(1, 3, 1))


def test_sync_bn_on_cpu_is_refused_up_front():
    cfg = make_config({"model": "vggnet", "sync_bn": True})
    with pytest.raises(ClassifierError, match="sync-bn needs GPUs"):
        wrap_model(torch.nn.BatchNorm2d(3), cfg, Dist(0, 2, 0), torch.device("cpu"))


def test_restarted_job_reuses_the_first_attempts_folder(tmp_path):
    cfg = make_config({"project": str(tmp_path), "name": "job"})
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "last.pt").touch()  # an older run
    first = make_run_dir(cfg, Dist())  # the job's first attempt numbers a new folder
    assert first.name == "job2" and make_run_dir(cfg, Dist(), latest=True) == first  # empty: started, no files
    (first / "config.yaml").touch()
    assert make_run_dir(cfg, Dist(), latest=True) == first  # not job3
    assert make_run_dir(cfg, Dist()).name == "job3"  # a new job still gets a new folder


def test_finetune_with_head_warmup_under_ddp(ddp_run, colours):
    """The head warm-up freezes the backbone after DDP has wrapped the model: without find_unused_parameters the
    second step fails ("Expected to have finished reduction in the prior iteration"); the backbone then trains
    from epoch 2 on, its gradients reduced like the rest (both processes end with the same weights, saved once)."""
    run, _ = ddp_run
    project = colours.parent / "runs-ddp-finetune"
    torchrun("train.py", "--dataset", f"folder:{colours}", "--project", str(project), "--name", "ft",
             *as_flags({**CONFIG, "epochs": 2}), "--mode", "finetune", "--weights", str(run / "best.pt"),
             "--head-warmup-epochs", "1", "--eval-test", "false", "--plots", "false", "--tensorboard", "false")
    before, after = load_checkpoint(run / "best.pt")["model"], load_checkpoint(project / "ft" / "last.pt")["model"]
    backbone = [k for k in after if k.startswith("backbone.") and after[k].is_floating_point()]
    assert backbone and any(not torch.equal(before[k], after[k]) for k in backbone)  # trained after the warm-up

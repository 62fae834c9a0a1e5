"""Named training events, and what listens to them by default: the run header, console, CSV history,
TensorBoard, and the end-of-run evaluation of best.pt on the test split.

Integrations plug in here instead of inside the loop: ``classifier.train(..., callbacks={"on_epoch_end":
[fn]})``. Events (``run`` is the engine's Run: cfg, dir, state, raw_model, ...):

- ``on_train_start(run)``: before the first epoch (after the header is printed);
- ``on_epoch_end(run, row)``: after each epoch's checkpoints are saved; ``row`` is the epoch's history
  record (epoch, train_loss, train_acc, val_loss, val_acc, lr, epoch_time_s, images_per_s, is_best);
- ``on_train_end(run, summary)``: after training; ``summary`` is what summary.json will hold (add to it);
- ``on_train_interrupt(run)``: training stopped by Ctrl-C or a stop signal, after last.pt holds the
  progress (the run can be resumed); KeyboardInterrupt follows.

Any callback may call ``run.stop(reason)``: training ends after the current epoch and finishes normally.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist
import yaml
from torch.utils.tensorboard import SummaryWriter

from classifier.cache import describe_cache
from classifier.config import save_yaml
from classifier.data.splits import evaluation_split, split_note
from classifier.errors import unknown_choice
from classifier.evaluation import evaluate_and_report
from classifier.fileio import atomic_target, atomic_write_text
from classifier.inference import Predictor
from classifier.models import model_summary
from classifier.preprocess import policy_description
from classifier.report.plots import confusion_matrix_figure, plot_learning_curves
from classifier.tracking import add_tracking_callbacks
from classifier.trust.fitting import fit_run_trust

EVENTS = ("on_train_start", "on_epoch_end", "on_train_end", "on_train_interrupt")

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s")


class Callbacks:
    def __init__(self):
        self.handlers = defaultdict(list)

    def add(self, event: str, fn) -> None:
        if event not in EVENTS:
            raise unknown_choice("callback event", event, EVENTS)
        if not callable(fn):
            raise TypeError(f"callback for {event} must be callable, got {type(fn).__name__}")
        self.handlers[event].append(fn)

    def fire(self, event: str, *args, **kwargs) -> None:
        for fn in self.handlers[event]:
            fn(*args, **kwargs)


def print_epoch(run, row: dict) -> None:
    best = "  *best*" if row.get("is_best") and row["val_loss"] is not None else ""
    print(f"epoch {row['epoch']:>3}/{run.cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}  "
          + (f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}  " if row["val_loss"] is not None else "no val  ")
          + (f"mAP {row['val_mAP']:.4f}  " if row.get("val_mAP") is not None else "")
          + f"lr {row['lr']:.2e}  "
          f"{row['epoch_time_s']:.1f}s ({row['images_per_s']:.0f} img/s)"
          + (f" at {row['train_size'][0]}x{row['train_size'][1]} px" if row.get("train_size") else "") + best,
          flush=True)


def write_history(run, row: dict) -> None:
    """Rewrite history.csv from the run's full history (stays consistent across resumes)."""
    with atomic_target(Path(run.dir) / "history.csv", "training history") as tmp, tmp.open("w", newline="") as f:
        multilabel = any("val_mAP" in row for row in run.state.history)  # a column of multi-label runs only
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS + (("val_mAP",) if multilabel else ()),
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(run.state.history)


class TensorBoardLogger:
    def __init__(self, log_dir: Path):
        self.writer = SummaryWriter(str(log_dir))

    def on_epoch_end(self, run, row: dict) -> None:
        epoch = row["epoch"]
        for split in ("train", "val") if row["val_loss"] is not None else ("train",):
            self.writer.add_scalar(f"loss/{split}", row[f"{split}_loss"], epoch)
            self.writer.add_scalar(f"accuracy/{split}", row[f"{split}_acc"], epoch)
        self.writer.add_scalar("lr", row["lr"], epoch)
        self.writer.add_scalar("images_per_s", row["images_per_s"], epoch)
        self.writer.flush()

    def on_train_end(self, run, summary: dict) -> None:
        figure = summary.pop("_confusion_figure", None)
        if figure is not None:
            self.writer.add_figure("test/confusion_matrix", figure, run.state.epoch)
        if summary.get("test_accuracy") is not None:
            self.writer.add_scalar("accuracy/test", summary["test_accuracy"], run.state.epoch)
        self.writer.close()


def write_run_header(run) -> None:
    """Print and save what is about to be trained: config, given settings, data, model summary."""
    cfg, data, prep = run.cfg, run.data, run.data.prep
    save_yaml(cfg, Path(run.dir) / "config.yaml")
    save_given(run.given, Path(run.dir) / "given.yaml")
    summary = model_summary(run.raw_model, (prep.channels, *prep.size))
    atomic_write_text(Path(run.dir) / "model_summary.txt", summary + "\n", "model summary")
    sizes = ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
    print(("resuming" if run.resumed else "training") + f" {cfg.model} ({cfg.mode}) on {cfg.dataset}: "
          f"{len(data.classes)} classes, {sizes}; input {prep.channels}x{prep.size[0]}x{prep.size[1]}; "
          f"device {run.device}" + (" bf16" if run.amp_dtype == torch.bfloat16 else ""))
    print(f"resize policy: {policy_description(prep.resize_policy)}")
    print(describe_cache())
    if split_note(data.record or {}):
        print(split_note(data.record))
    if run.dist.enabled:
        n = run.dist.world_size
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in run.raw_model.modules())
        print(f"distributed: {n} processes ({tdist.get_backend()}); global batch {cfg.batch_size} = {n} x "
              f"{cfg.batch_size // n} per process; learning rate {cfg.peak_lr:g} is for "
              f"the global batch, unchanged by the process count"
              + ("; SyncBatchNorm" if cfg.sync_bn else "; BatchNorm statistics per process" if has_bn else ""))
    if run.load_note:
        print(f"weights: {run.load_note}")
    if run.ema is not None:
        print(f"weight average: EMA, decay {cfg.ema:g} (warm-up min(decay, (1+step)/(10+step))); validation, "
              "best.pt and the export use the averaged weights")
    if not run.resumed:
        print(summary)
    print(f"run folder: {run.dir}", flush=True)


def save_given(given: dict, path: Path) -> None:
    text = yaml.safe_dump(given, sort_keys=True) if given else "{}\n"
    header = ("# the settings given for this run (flags, config file, recipe, API arguments); every other\n"
              "# value in config.yaml is a default. A resume keeps these and never lets a default override them.\n")
    atomic_write_text(path, header + text, "given settings")


def plot_curves(run, summary: dict) -> None:
    if run.state.history:
        plot_learning_curves(Path(run.dir) / "curves.png", run.state.history)


def evaluate_test_split(run, summary: dict) -> None:
    """End of training: best.pt on the run's test split (val for a train/val layout without test images:
    labelled so), report in runs/NAME/eval/ (in fp32 even when training used autocast: the figure the run
    reports is the one eval.py and the ONNX export reproduce)."""
    split = evaluation_split(run.data.record or {})
    test = run.data.splits.get(split)
    if not run.cfg.eval_test or test is None or not len(test):
        return
    best = Path(run.dir) / "best.pt"
    if best.exists():
        predictor = Predictor.load(best)
    else:
        predictor = Predictor.from_model(run.eval_model, run.data.prep, run.data.classes, tta_flip=run.cfg.tta_flip)
        predictor.set_task(run.task.name, run.state.thresholds)
    metrics = evaluate_and_report(predictor, test, Path(run.dir) / "eval",
                                  title=f"{run.cfg.model} on {run.cfg.dataset} ({split} split)", source=str(best),
                                  history=run.state.history, progress=run.cfg.progress, figures=run.cfg.plots)
    print(f"{split} accuracy {metrics['accuracy']:.2%} on {metrics['n_samples']} images; "
          f"report: {Path(run.dir) / 'eval' / 'report.md'}")
    summary[f"{split}_accuracy"], summary["evaluated_split"] = metrics["accuracy"], split
    for key in ("ece", "ece_uncalibrated"):  # calibrated (the temperature in best.pt) and raw softmax
        if metrics.get(key) is not None:
            summary[f"{split}_{key}"] = metrics[key]
    if run.task.name == "multilabel":  # summary.json's multi-label figures (0-1, like the accuracy)
        summary[f"{split}_mAP"], summary[f"{split}_macro_f1"] = metrics["mAP"], metrics["macro_f1"]
        print(f"{split} mAP {_fmt(metrics['mAP'])}, macro F1 {_fmt(metrics['macro_f1'])} at the fitted thresholds")
    if run.cfg.plots and "confusion_matrix" in metrics:
        summary["_confusion_figure"] = confusion_matrix_figure(np.asarray(metrics["confusion_matrix"]),
                                                               run.data.classes)


def _fmt(value) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def add_default_callbacks(run) -> None:
    """Put the default listeners before the user's (main process only: other ranks never write)."""
    user = run.callbacks.handlers
    run.callbacks = Callbacks()
    if run.dist.is_main:
        run.callbacks.add("on_train_start", write_run_header)
        run.callbacks.add("on_epoch_end", print_epoch)
        run.callbacks.add("on_epoch_end", write_history)
        if run.cfg.plots:
            run.callbacks.add("on_train_end", plot_curves)
        run.callbacks.add("on_train_end", fit_run_trust)  # temperature + "unknown" threshold into best.pt
        run.callbacks.add("on_train_end", evaluate_test_split)
        if run.cfg.tensorboard:
            tb = TensorBoardLogger(Path(run.dir) / "tensorboard")
            run.callbacks.add("on_epoch_end", tb.on_epoch_end)
            run.callbacks.add("on_train_end", tb.on_train_end)
        add_tracking_callbacks(run)  # --mlflow (classifier/tracking.py)
    for event, fns in user.items():
        for fn in fns:
            run.callbacks.add(event, fn)

"""Named training events and the loggers that listen to them (console, CSV history, TensorBoard).

Integrations plug in here instead of inside the loop: ``callbacks.add("on_epoch_end", fn)``.
Events: on_train_start(run), on_epoch_end(run, row), on_train_end(run, summary).
"""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s")


class Callbacks:
    def __init__(self):
        self.handlers = defaultdict(list)

    def add(self, event: str, fn) -> None:
        self.handlers[event].append(fn)

    def fire(self, event: str, *args, **kwargs) -> None:
        for fn in self.handlers[event]:
            fn(*args, **kwargs)


def print_epoch(run, row: dict) -> None:
    best = "  *best*" if row.get("is_best") and row["val_loss"] is not None else ""
    print(f"epoch {row['epoch']:>3}/{run.cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}  "
          + (f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}  " if row["val_loss"] is not None else "no val  ")
          + f"lr {row['lr']:.2e}  "
          f"{row['epoch_time_s']:.1f}s ({row['images_per_s']:.0f} img/s){best}", flush=True)


def write_history(run, row: dict) -> None:
    """Rewrite history.csv from the run's full history (stays consistent across resumes)."""
    path = Path(run.dir) / "history.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(run.state.history)


class TensorBoardLogger:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

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


def default_callbacks(run) -> Callbacks:
    """Loggers for the main process; other ranks get none (they never write)."""
    callbacks = Callbacks()
    if not run.dist.is_main:
        return callbacks
    callbacks.add("on_epoch_end", print_epoch)
    callbacks.add("on_epoch_end", write_history)
    if run.cfg.tensorboard:
        tb = TensorBoardLogger(Path(run.dir) / "tensorboard")
        callbacks.add("on_epoch_end", tb.on_epoch_end)
        callbacks.add("on_train_end", tb.on_train_end)
    return callbacks

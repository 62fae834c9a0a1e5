"""One epoch of training, and evaluation: plain functions the trainer (and benchmarks) call."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from classifier.engine.runtime import all_reduce_sum, autocast
from classifier.errors import ClassifierError
from classifier.inference import flip_averaged
from classifier.tasks import Task, get_task


@dataclass
class EpochSums:
    """Running totals of an epoch; kept in mid-epoch checkpoints so a resumed epoch reports the same."""

    loss: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    seconds: float = 0.0
    batches: int = 0

    def add(self, loss: float, correct: float, count: int) -> None:
        self.loss += loss * count
        self.correct += correct
        self.count += count
        self.batches += 1

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.count, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.count, 1)


@dataclass
class StepContext:
    """What a training step needs besides the model and the batch."""

    optimizer: torch.optim.Optimizer
    device: torch.device
    amp_dtype: torch.dtype | None = None
    label_smoothing: float = 0.0
    grad_clip: float = 0.0
    channels_last: bool = False
    lr_at: object = None  # callable(step) -> lr, applied before each step
    on_step: object = None  # callable(step, batch_index, sums) after each step
    show_progress: bool = False
    desc: str = ""
    class_weights: torch.Tensor | None = None  # per-class loss weights (--class-weights auto), on ``device``
    train_size: tuple | None = None  # progressive resizing: this epoch's (height, width) (None: as loaded)
    scaler: object = None  # torch.amp.GradScaler under fp16 (runtime.grad_scaler), else None
    task: Task = field(default_factory=lambda: get_task(None))  # multiclass or multilabel: the loss and training accuracy
    extra: dict = field(default_factory=dict)


def loss_class_weights(setting: str, labels, num_classes: int, device: torch.device,
                       task: Task | None = None) -> torch.Tensor | None:
    """``--class-weights auto``: loss weights from the training labels (the task says how: inverse class
    frequencies for cross-entropy, negatives / positives per class for binary cross-entropy)."""
    if setting != "auto":
        return None
    weights = (task or get_task(None)).loss_weights(labels, num_classes)
    return torch.tensor(weights, dtype=torch.float32, device=device)


def progressive_size(epoch: int, epochs: int, full: tuple[int, int], start: float,
                     smallest: int = 8) -> tuple[int, int]:
    """Training (height, width) for ``epoch`` (0-based) under ``--progressive-resize start``: ``start`` times
    ``full`` at the first epoch, growing linearly to ``full`` at the last of the first 2/3 of the epochs, and
    ``full`` after that, so the final epochs train at the size evaluation uses. Sides at least ``smallest``
    (the model's minimum input side); ``start`` 0 means ``full`` throughout."""
    growing = math.ceil(2 * epochs / 3)
    if not start or growing < 2 or epoch >= growing - 1:
        return tuple(full)
    fraction = start + (1 - start) * epoch / (growing - 1)
    return tuple(max(min(smallest, side), min(side, round(side * fraction))) for side in full)


def resized(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """A float NCHW batch at ``size`` (antialiased bilinear), or as it is when already that size."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def training_step(model, x: torch.Tensor, y: torch.Tensor, ctx: StepContext):
    """One optimiser step on a batch, as training takes it (device, autocast, weighted and smoothed loss,
    gradient clipping); shared by ``train_one_epoch`` and the learning-rate finder.

    Returns (loss value, logits, labels on the device). A non-finite loss takes no step: the caller decides
    (training stops with an error, the finder ends its range test).
    """
    x, y = to_device(resized(x, ctx.train_size), y, ctx.device, ctx.channels_last)
    with autocast(ctx.device, ctx.amp_dtype):
        logits = model(x)
        loss = ctx.task.loss(logits, y, weight=ctx.class_weights, label_smoothing=ctx.label_smoothing)
    value = loss.item()
    if not math.isfinite(value):
        return value, logits, y
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.scaler is None:
        loss.backward()
    else:  # fp16: scaled loss; a step whose gradients overflowed is skipped and the scale lowered
        ctx.scaler.scale(loss).backward()
        if ctx.grad_clip:
            ctx.scaler.unscale_(ctx.optimizer)
    if ctx.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), ctx.grad_clip)
    if ctx.scaler is None:
        ctx.optimizer.step()
    else:
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    return value, logits, y


def fall_back_from_fp16(ctx: StepContext, loss: float, step: int) -> bool:
    """fp16 that gives a non-finite loss (some cards' fp16 kernels return NaN; Ultralytics keeps a list of
    them) falls back to fp32 for the rest of the run, with a message, instead of stopping; True if it did."""
    if ctx.amp_dtype != torch.float16:
        return False
    print(f"fp16 gave a loss of {loss} at step {step + 1}: continuing in fp32 (this device's fp16 is not "
          "reliable here; --amp off or --amp bf16 avoids the retry)", flush=True)
    ctx.amp_dtype, ctx.scaler = None, None
    return True


def train_one_epoch(model, loader, ctx: StepContext, *, step: int, start_batch: int = 0,
                    sums: EpochSums | None = None) -> tuple[EpochSums, int]:
    """Train over ``loader`` from batch ``start_batch``; returns the epoch totals and the new step count.

    A non-finite loss stops training with an error naming the step (the last good checkpoint stays).
    """
    model.train()
    sums = sums or EpochSums()
    batches = loader.iter_from(start_batch) if start_batch else iter(loader)
    bar = tqdm(batches, total=len(loader), initial=start_batch, desc=ctx.desc, leave=False,
               disable=not ctx.show_progress, mininterval=1.0, dynamic_ncols=True)
    started = time.perf_counter()
    for batch_index, (x, y) in enumerate(bar, start=start_batch):
        if ctx.lr_at is not None:
            ctx.lr_at(step)
        loss, logits, y = training_step(model, x, y, ctx)
        if not math.isfinite(loss) and fall_back_from_fp16(ctx, loss, step):
            loss, logits, y = training_step(model, x, y, ctx)  # the same batch again, in fp32
        if not math.isfinite(loss):
            raise ClassifierError(f"loss became {loss} at step {step + 1} (epoch batch {batch_index}); "
                                  "training stopped, the last good checkpoint is kept")
        step += 1
        sums.add(loss, ctx.task.correct(logits, y), len(y))
        sums.seconds += time.perf_counter() - started
        started = time.perf_counter()
        if ctx.show_progress:
            bar.set_postfix(loss=f"{sums.mean_loss:.4f}", acc=f"{sums.accuracy:.2%}",
                            img_s=f"{sums.count / max(sums.seconds, 1e-9):.0f}", refresh=False)
        if ctx.on_step is not None:
            ctx.on_step(step, batch_index + 1, sums)
    bar.close()
    return sums, step


def eval_logits(model, x: torch.Tensor, tta_flip: bool = False) -> torch.Tensor:
    """float32 logits; with ``tta_flip`` the mean of the logits of the images and of their mirror images."""
    forward = lambda images: model(images).float()  # noqa: E731
    return flip_averaged(forward, x) if tta_flip else forward(x)


@torch.inference_mode()
def evaluate(model, loader, device: torch.device, *, amp_dtype=None, channels_last=False, tta_flip=False,
             task: Task | None = None) -> dict:
    """Mean loss and accuracy over the loader, summed across processes when distributed; a multi-label task
    also returns the task's validation figures (mAP) and the probabilities and labels they came from
    (gathered from every process), which fit the decision thresholds."""
    task = task or get_task(None)
    model.eval()
    loss = correct = count = 0.0
    kept = task.validates_on_probabilities  # mAP needs every probability, not sums
    probs, labels = [], []
    for x, y in loader:
        x, y = to_device(x, y, device, channels_last)
        with autocast(device, amp_dtype):
            logits = eval_logits(model, x, tta_flip)
        loss += task.loss(logits, y, reduction="sum").item()
        correct += task.correct(logits, y)
        count += len(y)
        if kept:
            probs.append(task.torch_probabilities(logits).cpu())
            labels.append(y.cpu())
    loss, correct, count = all_reduce_sum([loss, correct, count], device)
    out = {"loss": loss / max(count, 1), "acc": correct / max(count, 1), "count": int(count)}
    if kept and count:
        p, y = gather_rows(torch.cat(probs).numpy(), torch.cat(labels).numpy())
        out.update(task.validation(p, y), probs=p, labels=y)
    return out


def gather_rows(*arrays):
    """Concatenate each array's rows over the processes (as they are when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return arrays
    parts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, arrays)
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(len(arrays)))


@torch.inference_mode()
def predict(model, loader, device: torch.device, *, amp_dtype=None, channels_last=False, tta_flip=False,
            task: Task | None = None):
    """Probabilities (softmax; sigmoid for a multi-label task) and labels for every sample of the loader."""
    model.eval()
    probs, labels = [], []
    for x, y in loader:
        x, _ = to_device(x, y, device, channels_last)
        with autocast(device, amp_dtype):
            logits = eval_logits(model, x, tta_flip)
        probs.append((task or get_task(None)).torch_probabilities(logits).cpu())
        labels.append(y.cpu())
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()

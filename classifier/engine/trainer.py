"""Training a built run: the epochs, checkpoints, Ctrl-C, and the run's end.

``fit(cfg)`` = ``build_run`` (engine/build.py) + ``train``. A run folder ``runs/NAME/`` holds:
config.yaml (every setting, resolved), given.yaml (the settings the user gave), model_summary.txt,
split.json, history.csv, tensorboard/, best.pt (lowest validation loss), last.pt (newest state, also
mid-epoch), curves.png, data_check.json (folder datasets), eval/ (test-split report), summary.json.
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
from pathlib import Path

import torch

from classifier.checkpoint import save_checkpoint
from classifier.config import Config
from classifier.engine import runtime
from classifier.engine.build import Run, build_run
from classifier.engine.callbacks import add_default_callbacks
from classifier.engine.features import head_training, validation
from classifier.engine.loop import (EpochSums, StepContext, evaluate, loss_class_weights, progressive_size,
                                    train_one_epoch)
from classifier.engine.optim import lr_factor, set_lr
from classifier.errors import ClassifierError
from classifier.fileio import atomic_write_text
from classifier.startup import seconds_since_start
from classifier.tasks import DEFAULT_THRESHOLD
from classifier.models import freeze_backbone, model_entry, unfreeze_backbone


def fit(cfg: Config, *, given: dict | None = None, resume: str | Path | None = None, arrays=None,
        callbacks: dict | None = None) -> Run:
    """Build the run (or continue the one in ``resume``), train it, write its reports; returns the Run.

    Under torchrun, workers restarted after a failure (--max-restarts) continue the first attempt's run
    folder from its last.pt (or start it afresh when no epoch was saved yet).
    """
    run = build_run(cfg, given=given, resume=resume, arrays=arrays, callbacks=callbacks)
    try:
        train(run)
    finally:
        runtime.barrier()
        runtime.shutdown_distributed()
    return run


def train(run: Run) -> dict:
    """Train a built run to its configured epochs; returns the summary (also written to summary.json).

    Events fired (engine/callbacks.py): on_train_start(run), on_epoch_end(run, row), on_train_end(run,
    summary), on_train_interrupt(run) when Ctrl-C or a stop signal ends it. A callback may call
    ``run.stop()``: training ends after that epoch and finishes normally.
    Ctrl-C saves the unfinished epoch in last.pt and prints the command that resumes it.
    """
    add_default_callbacks(run)
    run.callbacks.fire("on_train_start", run)
    try:
        with _interrupt_saves_progress(run):
            _train_epochs(run)
    except KeyboardInterrupt:
        run.callbacks.fire("on_train_interrupt", run)
        raise
    return finish(run)


# Ctrl-C, and what schedulers send before they kill: SIGTERM (Kubernetes, spot machines, SLURM's scancel)
# and SIGUSR1 (SLURM's --signal=USR1@SECONDS, before the end of a job's time)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


class _interrupt_saves_progress:
    """SIGINT, SIGTERM or SIGUSR1 sets a flag that the loop checks after each optimiser step: the step
    finishes, last.pt gets the unfinished epoch, and KeyboardInterrupt follows (the CLI exits 130 with the
    resume command, no traceback). A second Ctrl-C interrupts at once. Under torchrun the flag is summed
    over the processes after each step, so every rank stops after the same step, whichever got the signal."""

    def __init__(self, run: Run):
        self.run, self.previous = run, {}
        self.requested = None  # the name of the signal that asked, e.g. "SIGTERM"
        self.progress = None  # (step, batches done in the epoch, EpochSums) after the newest step

    def __enter__(self):
        self.run.interrupt = self
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, self.previous.get(signal.SIGINT) or signal.default_int_handler)

    def __exit__(self, kind, error, tb):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if kind is not None and self.requested and not isinstance(error, KeyboardInterrupt):
            self.save_and_stop()  # e.g. a data-loading worker that died of the same Ctrl-C
        return False

    def agreed(self) -> bool:
        """Whether any process was asked to stop (every rank calls this after the same step)."""
        if self.run.dist.enabled:
            anyone = runtime.all_reduce_sum([1.0 if self.requested else 0.0], self.run.device)[0] > 0
            if anyone and not self.requested:
                self.requested = "a signal to another process"
        return bool(self.requested)

    def check(self, step: int, batch_done: int, sums: EpochSums) -> None:
        self.progress = (step, batch_done, sums)
        if self.agreed():
            self.save_and_stop()

    def save_and_stop(self):
        run = self.run
        if self.progress is not None and run.state.step < self.progress[0]:
            _save_progress(run, *self.progress)
        if run.dist.is_main:
            print(f"\ninterrupted ({self.requested}): {run.dir / 'last.pt'} holds epoch {run.state.epoch + 1}, batch "
                  f"{run.state.batch_in_epoch} (step {run.state.step}); resume with:\n"
                  f"  python train.py --resume {run.dir}", flush=True)
        raise KeyboardInterrupt


def _save_progress(run: Run, step: int, batch_done: int, sums: EpochSums) -> None:
    """A mid-epoch last.pt: the counters and running sums of the unfinished epoch."""
    run.state.step, run.state.batch_in_epoch, run.state.epoch_sums = step, batch_done, dataclasses.asdict(sums)
    save_training_checkpoint(run, "last.pt")


def _train_epochs(run: Run) -> None:
    cfg, state, loaders = run.cfg, run.state, run.data.loaders
    steps_per_epoch = len(loaders["train"])
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    step_size = cfg.step_epochs * steps_per_epoch

    def lr_at(step):  # called with the first batch in hand, right before the first step
        if run.startup_s is None:
            run.startup_s = seconds_since_start()
        set_lr(run.optimizer, lr_factor(step, total, schedule=cfg.scheduler, warmup_steps=warmup,
                                         step_size=step_size))

    def on_step(step, batch_done, sums):
        if run.ema is not None:
            run.ema.update(run.raw_model, step)
        if cfg.save_every and step % cfg.save_every == 0 and batch_done < steps_per_epoch:
            _save_progress(run, step, batch_done, sums)
        run.interrupt.check(step, batch_done, sums)

    if state.epoch >= cfg.epochs:
        if run.dist.is_main:
            print(f"run already has {state.epoch} epochs (--epochs {cfg.epochs}); nothing to train")
        return
    # feature-extract: the head trains on cached backbone features (engine/features.py)
    train_model, train_loader, channels_last, note = head_training(run)
    if note and run.dist.is_main:
        print(note, flush=True)
    val_model, val_loader, val_channels_last = validation(run, on_features=train_model is not run.model)
    ctx = StepContext(run.optimizer, run.device, run.amp_dtype, cfg.label_smoothing, cfg.grad_clip,
                      channels_last, lr_at, on_step, show_progress=cfg.progress and run.dist.is_main,
                      class_weights=loss_class_weights(cfg.class_weights, loaders["train"].samples.labels,
                                                       len(run.data.classes), run.device, run.task),
                      scaler=run.scaler, task=run.task)
    smallest = max(8, model_entry(cfg.model).min_size)  # progressive resizing never goes below it
    for epoch in range(state.epoch, cfg.epochs):
        _set_finetune_phase(run, epoch)
        train_loader.set_epoch(epoch)
        ctx.desc = f"epoch {epoch + 1}/{cfg.epochs}"
        if cfg.progressive_resize and train_model is run.model:  # not on cached features
            ctx.train_size = progressive_size(epoch, cfg.epochs, run.data.prep.size, cfg.progressive_resize,
                                              smallest=smallest)
        sums = EpochSums(**state.epoch_sums) if state.batch_in_epoch else None
        sums, state.step = train_one_epoch(train_model, train_loader, ctx, step=state.step,
                                           start_batch=state.batch_in_epoch, sums=sums)
        run.amp_dtype, run.scaler = ctx.amp_dtype, ctx.scaler  # fp16 may have fallen back to fp32
        val = evaluate(val_model, val_loader, run.device, amp_dtype=run.amp_dtype, channels_last=val_channels_last,
                       tta_flip=cfg.tta_flip, task=run.task)
        if _end_epoch(run, epoch, sums, val, ctx.train_size):
            break
        if run.interrupt.agreed():
            run.interrupt.save_and_stop()


def _set_finetune_phase(run: Run, epoch: int) -> None:
    """Fine-tuning with head warm-up: backbone frozen for the first epochs, then trained."""
    if run.cfg.mode != "finetune" or not run.cfg.head_warmup_epochs:
        return
    if epoch < run.cfg.head_warmup_epochs:
        freeze_backbone(run.raw_model)
    else:
        unfreeze_backbone(run.raw_model)


def _end_epoch(run: Run, epoch: int, sums: EpochSums, val: dict, train_size=None) -> bool:
    """Record the epoch, save checkpoints, fire callbacks; True when early stopping says stop."""
    state, cfg = run.state, run.cfg
    loss_sum, correct, count, seconds = runtime.all_reduce_sum(
        [sums.loss, sums.correct, sums.count, sums.seconds], run.device)
    train_loss, train_acc = loss_sum / max(count, 1), correct / max(count, 1)
    seconds /= run.dist.world_size
    state.train_time_s += seconds
    has_val = val["count"] > 0  # without a validation split (--val-fraction 0) the newest epoch is best.pt
    # the task's score picks best.pt: the validation loss (multiclass), 1 - mAP (multilabel)
    score = run.task.score(val) if has_val else None
    best_so_far = state.best_score if state.best_score is not None else state.best_val_loss
    is_best = not has_val or score < best_so_far
    row = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
           "val_loss": val["loss"] if has_val else None, "val_acc": val["acc"] if has_val else None,
           "lr": run.optimizer.param_groups[0]["lr"], "epoch_time_s": seconds,
           "images_per_s": count / max(seconds, 1e-9)}
    if train_size is not None:  # progressive resizing: printed with the epoch, not a history.csv column
        row["train_size"] = list(train_size)
    if has_val and "mAP" in val:
        row["val_mAP"] = val["mAP"]
    state.history.append(row)
    state.epoch, state.batch_in_epoch, state.epoch_sums = epoch + 1, 0, {}
    if is_best:
        state.best_epoch, state.bad_epochs = epoch + 1, 0
        if has_val:
            state.best_val_loss = val["loss"]
            state.best_score = score
        if run.task.validates_on_probabilities:  # multi-label: thresholds fitted on this epoch's validation
            state.thresholds = fitted_thresholds(run, val)
    else:
        state.bad_epochs += 1
    if is_best:
        save_training_checkpoint(run, "best.pt", with_optimizer=False)
    save_training_checkpoint(run, "last.pt")
    run.callbacks.fire("on_epoch_end", run, {**row, "is_best": is_best})
    if cfg.early_stopping and state.bad_epochs >= cfg.early_stopping:
        run.stop(f"early stopping: no {run.task.selection} for {state.bad_epochs} epochs")
    if run.stop_reason and run.dist.is_main:
        print(run.stop_reason, flush=True)
    return run.stop_reason is not None


def fitted_thresholds(run: Run, val: dict) -> list[float] | None:
    """Per-class decision thresholds: ``--threshold`` for every class, else fitted on the validation
    probabilities (each class's best F1; the default for a class absent from validation)."""
    if run.cfg.threshold is not None:
        return [float(run.cfg.threshold)] * len(run.data.classes)
    if "probs" not in val:  # no validation images
        return [DEFAULT_THRESHOLD] * len(run.data.classes)
    return run.task.fit_thresholds(val["probs"], val["labels"])


def checkpoint_payload(run: Run, *, with_optimizer: bool = True) -> dict:
    """What best.pt and last.pt hold: ``model`` is the model to evaluate and deploy (the weight average under
    --ema); last.pt also holds what resuming needs (optimiser, RNG, and under --ema the trained weights)."""
    model = run.eval_model
    payload = {
        "model": _cpu_state(model),
        "model_name": run.cfg.model,
        "num_classes": model.num_classes,
        "in_chans": model.in_chans,
        "classes": list(run.data.classes),
        "given": run.given,
        "preprocessing": run.data.prep.to_dict(),
        "config": run.cfg.to_dict(),
        "dataset": run.cfg.dataset,
        "epoch": run.state.epoch,
        "step": run.state.step,
        "best_val_loss": run.state.best_val_loss,
        "state": dataclasses.asdict(run.state),
        "task": run.task.name,
    }
    if run.state.thresholds is not None:  # multi-label decision thresholds, in class order
        payload["thresholds"] = list(run.state.thresholds)
    if with_optimizer:
        if run.ema is not None:
            payload["trained_model"] = _cpu_state(run.raw_model)
        payload["optimizer"] = run.optimizer.state_dict()
        payload["rng"] = runtime.get_rng_state()
        if run.scaler is not None:
            payload["grad_scaler"] = run.scaler.state_dict()
    return payload


def _cpu_state(model) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_training_checkpoint(run: Run, name: str, *, with_optimizer: bool = True) -> None:
    """Save ``name`` in the run folder (rank 0); weights that became NaN or infinite stop training instead,
    so the previous checkpoint stays the last good one."""
    floats = {k: v for k, v in run.raw_model.state_dict().items() if v.is_floating_point()}
    finite = torch.isfinite(torch.stack([v.sum(dtype=torch.float32) for v in floats.values()]))  # NaN, inf propagate
    if not finite.all():
        bad = list(floats)[int(torch.nonzero(~finite)[0])]
        raise ClassifierError(f"weights became non-finite by step {run.state.step} ({bad}); training stopped, "
                              "the last good checkpoint is kept")
    if run.dist.is_main:
        save_checkpoint(checkpoint_payload(run, with_optimizer=with_optimizer), Path(run.dir) / name)


def finish(run: Run) -> dict:
    """After training: on_train_end (end-of-run evaluation, curves, loggers), then summary.json (rank 0)."""
    summary = {
        "model": run.cfg.model, "mode": run.cfg.mode, "dataset": run.cfg.dataset, "task": run.task.name,
        "params": sum(p.numel() for p in run.raw_model.parameters()),
        "trainable_params": sum(p.numel() for p in run.raw_model.parameters() if p.requires_grad),
        "epochs": run.state.epoch, "best_epoch": run.state.best_epoch,
        "val_loss": run.state.best_val_loss if math.isfinite(run.state.best_val_loss) else None,
        "train_time_s": run.state.train_time_s,
        "startup_s": run.startup_s,
        "amp": runtime.AMP_NAMES[run.amp_dtype],
    }
    if run.scaler is not None:
        summary["grad_scale"] = run.scaler.get_scale()
    if run.device.type == "cuda":
        summary["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(run.device) / 2**20, 1)
    best = Path(run.dir) / "best.pt"
    summary["size_bytes"] = best.stat().st_size if best.exists() else None
    run.callbacks.fire("on_train_end", run, summary)
    summary = {k: v for k, v in summary.items() if not k.startswith("_")}
    if run.dist.is_main:
        atomic_write_text(Path(run.dir) / "summary.json", json.dumps(summary, indent=2), "run summary")
        split = summary.get("evaluated_split", "test")
        acc = summary.get(f"{split}_accuracy")
        print(f"done: {run.state.epoch} epochs in {run.state.train_time_s / 60:.1f} min"
              + (f", {split} accuracy {acc:.2%}" if acc is not None else "") + f"; outputs in {run.dir}")
    run.summary = summary
    return summary

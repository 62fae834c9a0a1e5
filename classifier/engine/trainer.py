"""``fit(cfg)``: set up a run, train with checkpoints, resume, and write the run's reports.

A run folder ``runs/NAME/`` holds: config.yaml, model_summary.txt, split.json, history.csv,
tensorboard/, best.pt (lowest validation loss), last.pt (newest state, also mid-epoch), curves.png,
data_check.json (folder datasets: classes, modes, sizes, unreadable files, duplicates),
eval/ (test-split report), summary.json.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from classifier.checkpoint import load_checkpoint, save_checkpoint
from classifier.config import Config, make_config, save_yaml
from classifier.engine import runtime
from classifier.engine.callbacks import default_callbacks
from classifier.engine.loop import EpochSums, StepContext, evaluate, train_one_epoch
from classifier.engine.optim import build_optimizer, lr_factor, set_lr
from classifier.errors import ClassifierError


@dataclass
class TrainState:
    """Counters saved in every checkpoint; everything else is rebuilt from the config."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    batch_in_epoch: int = 0  # batches done in the unfinished epoch (mid-epoch checkpoints)
    epoch_sums: dict = field(default_factory=dict)
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    train_time_s: float = 0.0
    history: list = field(default_factory=list)


@dataclass
class Run:
    cfg: Config
    dir: Path
    dist: runtime.Dist
    device: torch.device
    amp_dtype: torch.dtype | None
    data: object  # classifier.engine.setup.RunData
    model: torch.nn.Module  # the model as trained (maybe DDP-wrapped / compiled)
    raw_model: torch.nn.Module  # the plain Classifier, whose state dict is saved
    optimizer: torch.optim.Optimizer
    state: TrainState
    callbacks: object = None


def fit(cfg: Config, *, resume: str | Path | None = None, callbacks: dict | None = None) -> Path:
    """Train as configured (or continue the run in ``resume``); returns the run folder.

    ``callbacks``: extra {event: [fn, ...]} added to the default loggers (see engine/callbacks.py).
    Under torchrun, workers restarted after a failure (--max-restarts) continue the first attempt's run
    folder from its last.pt (or start it afresh when no epoch was saved yet).
    """
    from classifier.engine import setup

    dist_info = runtime.init_distributed(cfg.device)
    ckpt = None
    restarts = 0 if resume else runtime.elastic_restart_count()
    if resume:
        ckpt, cfg = _resume_checkpoint(Path(resume), cfg)
        run_dir = Path(resume)
    else:
        run_dir = setup.make_run_dir(cfg, dist_info, latest=restarts > 0)
        if restarts and (run_dir / "last.pt").is_file():
            ckpt, cfg = _resume_checkpoint(run_dir, cfg)
            if dist_info.is_main:
                print(f"torchrun restart {restarts}: resuming {run_dir} from last.pt (epoch {ckpt['epoch']}, "
                      f"step {ckpt['step']})", flush=True)
    device = runtime.select_device(cfg.device)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    runtime.seed_everything(cfg.seed)

    data = setup.prepare_data(cfg, run_dir, dist_info, resumed=ckpt is not None)
    raw_model, load_note = setup.prepare_model(cfg, data, pretrained_ok=ckpt is None)
    optimizer = build_optimizer(setup.optimizer_groups(raw_model, cfg), cfg)
    state = TrainState()
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = TrainState(**ckpt["state"])
        runtime.set_rng_state(ckpt["rng"])
    raw_model.to(device)
    if cfg.channels_last:
        raw_model.to(memory_format=torch.channels_last)
    _move_optimizer_state(optimizer, device)
    model = setup.wrap_model(raw_model, cfg, dist_info, device)
    run = Run(cfg, run_dir, dist_info, device, runtime.amp_dtype(cfg.amp, device), data, model, raw_model,
              optimizer, state)
    run.callbacks = default_callbacks(run)
    for event, fns in (callbacks or {}).items():
        for fn in fns:
            run.callbacks.add(event, fn)

    if dist_info.is_main:
        setup.write_run_header(run, load_note, resumed=ckpt is not None)
    run.callbacks.fire("on_train_start", run)
    _train_epochs(run)
    summary = finish(run)
    run.callbacks.fire("on_train_end", run, summary)
    runtime.barrier()
    runtime.shutdown_distributed()
    return run_dir


def _resume_checkpoint(run_dir: Path, cli_cfg: Config) -> tuple[dict, Config]:
    path = run_dir / "last.pt"
    if not path.is_file():
        raise ClassifierError(f"cannot resume: {path} not found")
    ckpt = load_checkpoint(path)
    values = dict(ckpt["config"])
    # the run's own config wins, except for what may change on a resume: a longer run, the hardware
    for key in ("epochs", "device", "threads", "progress", "workers", "save_every", "early_stopping"):
        if getattr(cli_cfg, key) != getattr(Config(), key):
            values[key] = getattr(cli_cfg, key)
    return ckpt, make_config(values)


def _move_optimizer_state(optimizer, device) -> None:
    for per_param in optimizer.state.values():
        for k, v in per_param.items():
            if torch.is_tensor(v) and k != "step":
                per_param[k] = v.to(device)


def _train_epochs(run: Run) -> None:
    cfg, state, loaders = run.cfg, run.state, run.data.loaders
    steps_per_epoch = len(loaders["train"])
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    step_size = cfg.step_epochs * steps_per_epoch

    def lr_at(step):
        set_lr(run.optimizer, lr_factor(step, total, schedule=cfg.scheduler, warmup_steps=warmup,
                                         step_size=step_size))

    def on_step(step, batch_done, sums):
        if cfg.save_every and step % cfg.save_every == 0 and batch_done < steps_per_epoch:
            state.step, state.batch_in_epoch, state.epoch_sums = step, batch_done, dataclasses.asdict(sums)
            save_training_checkpoint(run, "last.pt")

    ctx = StepContext(run.optimizer, run.device, run.amp_dtype, cfg.label_smoothing, cfg.grad_clip,
                      cfg.channels_last, lr_at, on_step, show_progress=cfg.progress and run.dist.is_main,
                      class_weights=_class_weights(run))
    if state.epoch >= cfg.epochs:
        if run.dist.is_main:
            print(f"run already has {state.epoch} epochs (--epochs {cfg.epochs}); nothing to train")
        return
    for epoch in range(state.epoch, cfg.epochs):
        _set_finetune_phase(run, epoch)
        loaders["train"].set_epoch(epoch)
        ctx.desc = f"epoch {epoch + 1}/{cfg.epochs}"
        sums = EpochSums(**state.epoch_sums) if state.batch_in_epoch else None
        sums, state.step = train_one_epoch(run.model, loaders["train"], ctx, step=state.step,
                                           start_batch=state.batch_in_epoch, sums=sums)
        val = evaluate(run.model, loaders["val"], run.device, amp_dtype=run.amp_dtype,
                       channels_last=cfg.channels_last, tta_flip=cfg.tta_flip)
        if _end_epoch(run, epoch, sums, val):
            break


def _class_weights(run: Run) -> torch.Tensor | None:
    """``--class-weights auto``: loss weights from the inverse class frequencies of the training samples."""
    if run.cfg.class_weights != "auto":
        return None
    from classifier.data.loaders import inverse_class_frequency

    weights = inverse_class_frequency(run.data.loaders["train"].samples.labels, len(run.data.classes))
    return torch.tensor(weights, dtype=torch.float32, device=run.device)


def _set_finetune_phase(run: Run, epoch: int) -> None:
    """Fine-tuning with head warm-up: backbone frozen for the first epochs, then trained."""
    from classifier.models import freeze_backbone, unfreeze_backbone

    if run.cfg.mode != "finetune" or not run.cfg.head_warmup_epochs:
        return
    if epoch < run.cfg.head_warmup_epochs:
        freeze_backbone(run.raw_model)
    else:
        unfreeze_backbone(run.raw_model)


def _end_epoch(run: Run, epoch: int, sums: EpochSums, val: dict) -> bool:
    """Record the epoch, save checkpoints, fire callbacks; True when early stopping says stop."""
    state, cfg = run.state, run.cfg
    loss_sum, correct, count, seconds = runtime.all_reduce_sum(
        [sums.loss, sums.correct, sums.count, sums.seconds], run.device)
    train_loss, train_acc = loss_sum / max(count, 1), correct / max(count, 1)
    seconds /= run.dist.world_size
    state.train_time_s += seconds
    has_val = val["count"] > 0  # without a validation split (--val-fraction 0) the newest epoch is best.pt
    is_best = not has_val or val["loss"] < state.best_val_loss
    row = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
           "val_loss": val["loss"] if has_val else None, "val_acc": val["acc"] if has_val else None,
           "lr": run.optimizer.param_groups[0]["lr"], "epoch_time_s": seconds,
           "images_per_s": count / max(seconds, 1e-9)}
    state.history.append(row)
    state.epoch, state.batch_in_epoch, state.epoch_sums = epoch + 1, 0, {}
    if is_best:
        state.best_epoch, state.bad_epochs = epoch + 1, 0
        if has_val:
            state.best_val_loss = val["loss"]
    else:
        state.bad_epochs += 1
    if is_best:
        save_training_checkpoint(run, "best.pt", with_optimizer=False)
    save_training_checkpoint(run, "last.pt")
    run.callbacks.fire("on_epoch_end", run, {**row, "is_best": is_best})
    if cfg.early_stopping and state.bad_epochs >= cfg.early_stopping:
        if run.dist.is_main:
            print(f"early stopping: no lower validation loss for {state.bad_epochs} epochs")
        return True
    return False


def checkpoint_payload(run: Run, *, with_optimizer: bool = True) -> dict:
    model = run.raw_model
    payload = {
        "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "model_name": run.cfg.model,
        "num_classes": model.num_classes,
        "in_chans": model.in_chans,
        "classes": list(run.data.classes),
        "preprocessing": run.data.prep.to_dict(),
        "config": run.cfg.to_dict(),
        "dataset": run.cfg.dataset,
        "epoch": run.state.epoch,
        "step": run.state.step,
        "best_val_loss": run.state.best_val_loss,
        "state": dataclasses.asdict(run.state),
    }
    if with_optimizer:
        payload["optimizer"] = run.optimizer.state_dict()
        payload["rng"] = runtime.get_rng_state()
    return payload


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
    """After training: test-split evaluation of the best checkpoint, curves, summary.json (rank 0)."""
    from classifier.engine import setup

    summary = {
        "model": run.cfg.model, "mode": run.cfg.mode, "dataset": run.cfg.dataset,
        "params": sum(p.numel() for p in run.raw_model.parameters()),
        "trainable_params": sum(p.numel() for p in run.raw_model.parameters() if p.requires_grad),
        "epochs": run.state.epoch, "best_epoch": run.state.best_epoch,
        "val_loss": run.state.best_val_loss if math.isfinite(run.state.best_val_loss) else None,
        "train_time_s": run.state.train_time_s,
    }
    best = Path(run.dir) / "best.pt"
    summary["size_bytes"] = best.stat().st_size if best.exists() else None
    if run.dist.is_main:
        summary.update(setup.final_reports(run))
        (Path(run.dir) / "summary.json").write_text(json.dumps(
            {k: v for k, v in summary.items() if not k.startswith("_")}, indent=2))
        acc = summary.get("test_accuracy")
        print(f"done: {run.state.epoch} epochs in {run.state.train_time_s / 60:.1f} min"
              + (f", test accuracy {acc:.2%}" if acc is not None else "") + f"; outputs in {run.dir}")
    return summary

"""Optimiser construction and the learning-rate schedule as a pure function of the step."""
from __future__ import annotations

import math

import torch

from classifier.config import Config


def build_optimizer(param_groups: list[dict], cfg: Config) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.peak_lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=cfg.peak_lr)
    return torch.optim.AdamW(param_groups, lr=cfg.peak_lr)


def lr_factor(step: int, total_steps: int, *, schedule: str, warmup_steps: int = 0,
              step_size: int = 0) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based) of ``total_steps``."""
    if schedule == "onecycle":
        # rise over the first 30% (or the warm-up, if set), then cosine down to zero
        warmup_steps = warmup_steps or max(1, int(0.3 * total_steps))
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule in ("cosine", "onecycle"):
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":  # falls in equal steps to zero at the end (no slow start or tail)
        return 1.0 - progress
    if schedule == "step":
        if step_size:
            return 0.1 ** (step // step_size)
        return 0.1 ** ((step >= total_steps // 2) + (step >= 3 * total_steps // 4))
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Apply the factor to every group's own base rate (head and backbone may differ); return head lr."""
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * factor
    return optimizer.param_groups[0]["lr"]

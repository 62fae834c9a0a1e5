"""The learning-rate range test (Smith 2015; fastai's ``lr_find``): train a few steps while the learning rate
rises exponentially, watch the loss, suggest a rate, and put everything back as it was.

The test takes the run's own training step (``loop.training_step``: device, autocast, label smoothing,
class weights, gradient clipping), optimiser and parameter groups. The rate tested is the head's (the
first group's, the config's ``lr``); every other group keeps its ratio to it, so a fine-tune's backbone
runs at ``backbone_lr_mult`` times the tested rate throughout (``optim.set_lr``).

Suggestion rule: ``capped``, the steepest descent of the smoothed loss against log(lr), but at most a
third of the rate at the lowest smoothed loss. Chosen by measurement (bench/lr_finder.py, table in the
README): on three short SGD tasks (a small resnet and LeNet-5 from scratch on Fashion-MNIST, a 0-4 -> 5-9
fine-tune) runs at its picks came within 2.0 and 3.6 points of the best of a 5-value sweep (and 2.4 points
above it on LeNet-5). Plain ``steepest`` was as good on the two BatchNorm nets but picked the edge
of the explosion on LeNet-5 (lr 0.29: it stayed at chance); fastai's ``valley`` (the longest falling
stretch) picked 4-130x too low and lost 10-33 points; ``minimum`` (a tenth of the lowest loss's rate) lost 13 on
the BatchNorm nets. The cap was added after seeing that failure, on the same tasks (no held-out task).
Every rule only looks before the lowest smoothed loss and after the first tenth of the test (noise).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from classifier.engine.build import build_run
from classifier.engine.loop import StepContext, loss_class_weights, training_step
from classifier.tasks import get_task, resolve_task
from classifier.engine.optim import set_lr
from classifier.engine.runtime import amp_dtype, get_rng_state, select_device, set_rng_state, use_channels_last
from classifier.errors import ClassifierError
from classifier.report.plots import plot_lr_finder

SMOOTHING = 0.98  # exponential moving average of the loss, debiased (fastai's Recorder)
DIVERGE_FACTOR = 4.0  # diverged: the smoothed loss exceeds this many times its minimum (fastai, Lightning) ...
DIVERGE_FALL = 0.05  # ... or it fell this fraction below its start (after the start) and is now back above it
# (start: the highest smoothed loss of the first tenth of the test). Cross-entropy with BatchNorm rarely
# reaches 4x its minimum: on Fashion-MNIST it went from 2.4 down to 2.2 and back only to 2.7 while the raw
# loss exploded. Without the required fall, a flat start's noise was taken for divergence at lr 1e-6.
DEFAULT_RULE = "capped"


@dataclass
class LRFinderResult:
    lrs: list  # head learning rate of each step taken
    losses: list  # training loss of each step (the last one may be the diverging, non-finite one)
    smoothed: list  # debiased exponential moving average of ``losses``
    suggestion: float  # the chosen rule's learning rate
    rule: str
    divergence_lr: float | None  # rate at which the test stopped on divergence (None: reached end_lr)
    suggestions: dict = field(default_factory=dict)  # every rule's pick, for comparison
    plot_path: Path | None = None


def lr_schedule(start_lr: float, end_lr: float, num_steps: int) -> np.ndarray:
    """Exponentially spaced rates from ``start_lr`` to ``end_lr`` inclusive."""
    if not 0 < start_lr < end_lr:
        raise ClassifierError(f"the range test needs 0 < start_lr < end_lr, got {start_lr:g} and {end_lr:g}")
    if num_steps < 10:
        raise ClassifierError(f"the range test needs at least 10 steps, got {num_steps}")
    return np.geomspace(start_lr, end_lr, num_steps)


def smooth(losses, beta: float = SMOOTHING) -> list:
    """Debiased exponential moving average (the first values are not dragged towards zero)."""
    avg, out = 0.0, []
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def valley_index(smoothed: np.ndarray) -> int:
    """fastai's 'valley': the longest run of decreasing loss (longest decreasing subsequence), and a point
    halfway between its first third and its middle."""
    n = len(smoothed)
    run_length = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and run_length[i] < run_length[j] + 1:
                run_length[i] = run_length[j] + 1
        if run_length[i] > run_length[end]:
            end = i
            start = end - run_length[end]
    third = (end - start) / 3
    return max(0, start + int(third) + int(third / 2))


def steepest_index(lrs: np.ndarray, smoothed: np.ndarray) -> int:
    """Where the smoothed loss falls fastest against log learning rate."""
    return int(np.argmin(np.gradient(smoothed, np.log10(lrs))))


def minimum_index(lrs: np.ndarray, smoothed: np.ndarray) -> int:
    """The point closest to a tenth of the rate at the lowest smoothed loss."""
    target = np.log10(lrs[int(np.argmin(smoothed))]) - 1
    return int(np.argmin(np.abs(np.log10(lrs) - target)))


def capped_steepest_index(lrs: np.ndarray, smoothed: np.ndarray) -> int:
    """The steepest point, but at most a third of the rate at the lowest smoothed loss: the smoothed loss
    lags, so its lowest point is already where the raw loss explodes."""
    cap = np.log10(lrs[int(np.argmin(smoothed))] / 3)
    steepest = steepest_index(lrs, smoothed)
    if np.log10(lrs[steepest]) <= cap:
        return steepest
    return int(np.argmin(np.abs(np.log10(lrs) - cap)))


RULES = {
    "valley": lambda lrs, smoothed: valley_index(smoothed),
    "steepest": steepest_index,
    "minimum": minimum_index,
    "capped": capped_steepest_index,
}


def suggest(lrs, smoothed, diverged: bool) -> dict:
    """Each rule's rate, among the steps before divergence, without the first tenth of the range (fastai's
    trim: noise) and without what follows the lowest smoothed loss (where the loss has turned: a loss that
    exploded and is coming down again falls steeply, and the steepest rule would take that)."""
    lrs, smoothed = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    usable = len(lrs) - 1 if diverged else len(lrs)  # the diverging step is no candidate
    if usable < 1:
        raise ClassifierError(f"the loss diverged at the first step (lr {lrs[0]:g}): lower start_lr")
    first = len(lrs) // 10 if usable - len(lrs) // 10 >= 3 else 0
    last = first + int(np.argmin(smoothed[first:usable])) + 1
    if last - first < 3:  # the loss only rose: keep every usable step
        first, last = 0, usable
    lrs, smoothed = lrs[first:last], smoothed[first:last]
    return {name: float(lrs[rule(lrs, smoothed)]) for name, rule in RULES.items()}


def range_test(model, optimizer, loader, ctx: StepContext, lrs: np.ndarray) -> tuple[list, list, list, bool]:
    """Train one step per rate in ``lrs`` (cycling through ``loader``); stop once the smoothed loss
    diverges. Returns (rates, losses, smoothed losses, diverged). Changes model and optimiser state."""
    reference = optimizer.param_groups[0].get("base_lr", optimizer.param_groups[0]["lr"])
    tried, losses, smoothed = [], [], []
    model.train()
    batches = _cycle(loader)
    for lr in lrs:
        set_lr(optimizer, lr / reference)  # every group relative to its own base rate
        x, y = next(batches)
        loss, _, _ = training_step(model, x, y, ctx)
        tried.append(float(lr))
        losses.append(loss)
        if not math.isfinite(loss):
            return tried, losses, smoothed + [math.inf], True
        smoothed = smooth(losses)
        if has_diverged(smoothed, settle_steps=len(lrs) // 10):
            return tried, losses, smoothed, True
    return tried, losses, smoothed, False


def has_diverged(smoothed: list, settle_steps: int) -> bool:
    """The smoothed loss is over ``DIVERGE_FACTOR`` times its minimum, or, after ``settle_steps``, it fell
    ``DIVERGE_FALL`` below the highest value of its first ``settle_steps`` steps and is back above it."""
    if smoothed[-1] > DIVERGE_FACTOR * min(smoothed):
        return True
    if not 0 < settle_steps < len(smoothed):
        return False
    start = max(smoothed[:settle_steps])
    return min(smoothed[settle_steps:]) < (1 - DIVERGE_FALL) * start and smoothed[-1] > start


def _cycle(loader):
    """Batches of ``loader``, starting over (same order) when it runs out."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ClassifierError("the range test needs training data: the loader has no batches")


class preserved_state:
    """Context manager: model weights and buffers, optimiser state and hyperparameters, training flag and
    the torch / numpy / python random state are exactly as before on exit."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def __enter__(self):
        self.weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.optimizer_state = copy.deepcopy(self.optimizer.state_dict())
        self.training = self.model.training
        self.rng = get_rng_state()
        return self

    def __exit__(self, *exc):
        self.model.load_state_dict(self.weights)
        self.optimizer.load_state_dict(self.optimizer_state)  # also drops keys the test added (base_lr)
        self.model.train(self.training)
        set_rng_state(self.rng)
        return False


def find_lr(model, optimizer, loader, ctx_or_settings, *, start_lr: float = 1e-7, end_lr: float = 10.0,
            num_steps: int = 100, plot_path=None, rule: str = DEFAULT_RULE) -> LRFinderResult:
    """Run the range test on these pieces and return the result; model, optimiser and random state are
    restored afterwards. ``ctx_or_settings``: the ``StepContext`` training uses, or a ``Config`` (then the
    step is built from its device, precision, label smoothing, class weights and clipping, and the model
    is moved to its device). ``plot_path``: also write the loss-against-rate figure there."""
    if rule not in RULES:
        raise ClassifierError(f"unknown suggestion rule '{rule}' (choices: {', '.join(RULES)})")
    ctx = ctx_or_settings if isinstance(ctx_or_settings, StepContext) else \
        step_context(ctx_or_settings, model, optimizer, loader)
    ctx = copy.copy(ctx)
    ctx.optimizer = optimizer
    lrs = lr_schedule(start_lr, end_lr, num_steps)
    with preserved_state(model, optimizer):
        tried, losses, smoothed, diverged = range_test(model, optimizer, loader, ctx, lrs)
    picks = suggest(tried, smoothed, diverged)
    result = LRFinderResult(tried, losses, smoothed, picks[rule], rule, tried[-1] if diverged else None, picks)
    if plot_path:
        result.plot_path = plot_lr_finder(plot_path, result)
    return result


def step_context(cfg, model, optimizer, loader) -> StepContext:
    """The training step's settings from a config (what the trainer passes to ``train_one_epoch``)."""
    device = select_device(cfg.device)
    model.to(device)
    channels_last = use_channels_last(cfg.channels_last, model, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    task = get_task(resolve_task(getattr(cfg, "task", None), loader.samples.labels))  # BCE for multi-label
    weights = loss_class_weights(cfg.class_weights, loader.samples.labels, model.num_classes, device, task)
    return StepContext(optimizer, device, amp_dtype(cfg.amp, device), cfg.label_smoothing, cfg.grad_clip,
                       channels_last, class_weights=weights, task=task)


def find_lr_for_config(cfg, *, plot_path=None, **options) -> LRFinderResult:
    """The range test on what training ``cfg`` would train (data, model and weights, mode, optimiser and its
    groups), built by ``build_run`` in a temporary run folder that is deleted afterwards: nothing else is
    written. Like ``build_run`` it seeds the random generators and may set the thread count (the API
    restores them)."""
    with tempfile.TemporaryDirectory(prefix="lr_find-") as folder:
        run = build_run(dataclasses.replace(cfg, project=folder, name="lr_find", exist_ok=True))
        return find_lr(run.raw_model, run.optimizer, run.data.loaders["train"], run.cfg, plot_path=plot_path,
                       **options)

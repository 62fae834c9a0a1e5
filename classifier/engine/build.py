"""Building a run from its config, separate from training it: folder, data, model, optimiser.

``build_run(cfg)`` returns a ``Run`` holding everything training needs; ``engine.trainer.train(run)``
trains it. The API holds a built run (a learning-rate finder or a notebook can use its pieces without
training it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

from classifier.checkpoint import load_checkpoint
from classifier.config import Config
from classifier.data import build_loader, cap_per_class, default_augment, run_splits, save_split
from classifier.data.check import run_check
from classifier.data.duplicates import TRAINING_START_MAX
from classifier.data.statistics import default_resize_policy
from classifier.engine import runtime
from classifier.engine.callbacks import Callbacks
from classifier.engine.ema import WeightAverage
from classifier.engine.optim import build_optimizer
from classifier.errors import ClassifierError
from classifier.fileio import make_output_dir
from classifier.models import create_model, freeze_backbone, load_weights, model_entry, param_groups
from classifier.preprocess import Preprocessing
from classifier.tasks import Task, get_task


@dataclass
class TrainState:
    """Counters saved in every checkpoint; everything else is rebuilt from the config."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    batch_in_epoch: int = 0  # batches done in the unfinished epoch (mid-epoch checkpoints)
    epoch_sums: dict = field(default_factory=dict)
    best_val_loss: float = float("inf")
    best_score: float | None = None  # the task's selection score of best.pt (None: runs before tasks: the loss)
    thresholds: list | None = None  # multi-label: per-class decision thresholds fitted with best.pt
    best_epoch: int = 0
    bad_epochs: int = 0
    train_time_s: float = 0.0
    history: list = field(default_factory=list)


@dataclass
class RunData:
    info: object  # classifier.data.DatasetInfo (before any class selection)
    classes: list  # the run's classes, after any selection
    splits: dict  # split name -> Samples (train capped by max_per_class)
    record: dict  # which sample went where (split.json)
    prep: Preprocessing
    loaders: dict  # "train", "val" -> Loader


@dataclass
class Run:
    """A built run: its config, folder, data, model and optimiser, and the training state."""

    cfg: Config
    given: dict  # the settings the user gave (flags, YAML, recipe, API arguments), kept with the run
    dir: Path
    dist: runtime.Dist
    device: torch.device
    amp_dtype: torch.dtype | None
    data: RunData
    model: torch.nn.Module  # the model as trained (maybe DDP-wrapped / compiled)
    raw_model: torch.nn.Module  # the plain Classifier, whose state dict is saved
    optimizer: torch.optim.Optimizer
    state: TrainState
    callbacks: Callbacks
    channels_last: bool  # --channels-last as this model and device can take it (runtime.use_channels_last)
    resumed: bool = False
    load_note: str | None = None  # which weights were loaded (pretrained / a checkpoint)
    stop_reason: str | None = None  # set by ``stop()``: training ends after the current epoch
    interrupt: object = None  # Ctrl-C handling while training (engine/trainer.py)
    summary: dict | None = None  # summary.json's figures once trained
    startup_s: float | None = None  # this process's start to its first training step (summary.json)
    ema: WeightAverage | None = None  # --ema: the averaged weights, which are validated and saved
    scaler: object = None  # fp16: torch.amp.GradScaler (runtime.grad_scaler), saved in last.pt

    @property
    def task(self) -> Task:
        """multiclass or multilabel (classifier/tasks.py), as resolved from the data by build_data."""
        return get_task(self.cfg.task)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The model validation runs and checkpoints save: the weight average under --ema."""
        return self.ema.model if self.ema is not None else self.raw_model

    def stop(self, reason: str = "stopped by a callback") -> None:
        """Ask training to end after the current epoch (callbacks call this); the run finishes normally."""
        self.stop_reason = reason


def build_run(cfg: Config, *, given: dict | None = None, resume: str | Path | None = None,
              arrays=None, callbacks: dict | None = None) -> Run:
    """Everything a run needs, built from its finished config (``config.resolve``, which also applies the
    resume rules: ``cfg`` is then the resumed run's) and, with ``resume``, the state in that run folder's
    last.pt.

    ``arrays``: (DatasetInfo, official splits) of in-memory data (classifier.data.sources.arrays), for runs whose
    dataset is ``arrays:...``. ``callbacks``: {event: [fn, ...]} added after the default loggers.
    """
    given = dict(given or {})
    dist = runtime.init_distributed(cfg.device)
    ckpt = None
    restarts = 0 if resume else runtime.elastic_restart_count()
    if resume:
        run_dir = Path(resume)
        ckpt = load_checkpoint(run_dir / "last.pt")
    else:
        run_dir = make_run_dir(cfg, dist, latest=restarts > 0)
        if restarts and (run_dir / "last.pt").is_file():
            ckpt = load_checkpoint(run_dir / "last.pt")
            # the same command again: the first attempt's config as it saved it (with what the run filled in)
            cfg, given = Config(**ckpt["config"]), dict(ckpt.get("given") or given)
            if dist.is_main:
                print(f"torchrun restart {restarts}: resuming {run_dir} from last.pt (epoch {ckpt['epoch']}, "
                      f"step {ckpt['step']})", flush=True)
    device = runtime.configure_process(cfg.device, dist, threads=cfg.threads, deterministic=cfg.deterministic,
                                       seed=cfg.seed)

    data = build_data(cfg, run_dir, dist, resumed=ckpt is not None, arrays=arrays)
    if device.type == "cuda":
        place_data_on_gpu(data, device, fixed_shapes=not cfg.progressive_resize and not cfg.deterministic)
    raw_model, load_note = build_model(cfg, data, pretrained_ok=ckpt is None)
    optimizer = build_optimizer(optimizer_groups(raw_model, cfg), cfg)
    state = TrainState()
    if ckpt is not None:
        raw_model.load_state_dict(ckpt.get("trained_model", ckpt["model"]))  # --ema: "model" is the average
        optimizer.load_state_dict(ckpt["optimizer"])
        state = TrainState(**ckpt["state"])
        runtime.set_rng_state(ckpt["rng"])
    raw_model.to(device)
    channels_last = runtime.use_channels_last(cfg.channels_last, raw_model, device)
    if channels_last:
        raw_model.to(memory_format=torch.channels_last)
    elif cfg.channels_last and dist.is_main:
        print("channels_last off: the model has a 1x1 stride-2 convolution with under 8 input channels, whose "
              "CPU backward in this torch build corrupts memory", flush=True)
    _move_optimizer_state(optimizer, device)
    ema = WeightAverage(raw_model, cfg.ema) if cfg.ema else None
    if ema is not None and ckpt is not None:
        ema.model.load_state_dict(ckpt["model"])
    model = wrap_model(raw_model, cfg, dist, device)
    dtype = runtime.amp_dtype(cfg.amp, device)
    scaler = runtime.grad_scaler(dtype, device)
    if scaler is not None and ckpt is not None and ckpt.get("grad_scaler"):
        scaler.load_state_dict(ckpt["grad_scaler"])
    run = Run(cfg, given, run_dir, dist, device, dtype, data, model, raw_model,
              optimizer, state, Callbacks(), channels_last, resumed=ckpt is not None, load_note=load_note, ema=ema,
              scaler=scaler)
    for event, fns in (callbacks or {}).items():
        for fn in fns if isinstance(fns, (list, tuple)) else [fns]:
            run.callbacks.add(event, fn)
    return run


def place_data_on_gpu(data: RunData, device: torch.device, *, fixed_shapes: bool) -> None:
    """A CUDA run's input pipeline: in-memory images move to the GPU once when they take at most a quarter
    of its free memory (batches are then gathered and augmented there), streamed batches come in page-locked
    memory (copied asynchronously), and cuDNN picks its fastest kernels when every batch has one shape."""
    from classifier.data.loaders import InMemoryLoader, StreamingLoader

    for loader in data.loaders.values():
        if isinstance(loader, InMemoryLoader):
            loader.to(device)
        elif isinstance(loader, StreamingLoader):
            loader.pin_memory = True
    torch.backends.cudnn.benchmark = fixed_shapes


def make_run_dir(cfg: Config, dist: runtime.Dist, *, latest: bool = False) -> Path:
    """runs/NAME, numbered NAME2, NAME3... unless exist_ok; chosen by rank 0 and shared with the others.

    ``latest`` (a torchrun elastic restart): the folder the job's first attempt made instead of a new
    one, i.e. the empty folder where the numbering stops, else the last non-empty one.
    """
    base = Path(cfg.project) / (cfg.name or f"{cfg.model.replace('/', '_')}-{cfg.dataset.split(':')[0]}")
    path = base
    if dist.is_main:
        n, previous = 2, None
        while path.exists() and not cfg.exist_ok and any(path.iterdir()):
            previous, path, n = path, base.with_name(f"{base.name}{n}"), n + 1
        if latest and previous is not None and not path.exists():
            path = previous
        make_output_dir(path, "run folder")
    if dist.enabled:
        shared = [str(path)]
        tdist.broadcast_object_list(shared, src=0)
        path = Path(shared[0])
    return path


def resolve_preprocessing(info, entry, cfg: Config) -> Preprocessing:
    """ImageNet weights get 3-channel input with ImageNet statistics (gray is replicated to RGB);
    otherwise the dataset's own channels and statistics. Size: --img-size, else native, raised to the
    model's minimum."""
    imagenet = cfg.weights == "imagenet"
    channels = 3 if imagenet else info.channels
    mean, std = (entry.pretrained_mean, entry.pretrained_std) if imagenet else (info.mean, info.std)
    if cfg.img_size:
        size = (cfg.img_size, cfg.img_size)
    else:
        size = tuple(entry.fit_size(s) for s in info.size)
    return Preprocessing(size=size, channels=channels, mean=tuple(mean), std=tuple(std),
                         resize_policy=cfg.resize or "squash")


def build_data(cfg: Config, run_dir: Path, dist: runtime.Dist, *, resumed: bool = False, arrays=None) -> RunData:
    """The run's splits (recorded in split.json; a resume reloads that record), data check, loaders."""
    entry = model_entry(cfg.model)
    split_file = Path(run_dir) / "split.json"
    splits = run_splits(cfg.to_dict(), split_file=split_file if resumed else None, dataset=arrays,
                        download=cfg.download)
    if cfg.early_stopping and not len(splits.splits["val"]):  # before anything is written to the run folder
        raise ClassifierError("--early-stopping watches the validation loss, and this run has no validation "
                              "images (--val-fraction 0): drop one of the two")
    cfg.task = "multilabel" if splits.info.multilabel else "multiclass"  # --task auto resolved by the data
    if cfg.task == "multilabel" and cfg.sampler == "balanced":
        raise ClassifierError("--sampler balanced draws every class equally often, which multi-label images "
                              "(several classes each) do not allow: use --class-weights auto")
    if dist.is_main and not resumed and splits.info.name.startswith(("folder:", "csv:")):
        run_check(splits.info.classes, splits.splits, Path(run_dir) / "data_check.json", near_max=TRAINING_START_MAX)
    splits.splits["train"] = cap_per_class(splits.splits["train"], cfg.max_per_class, cfg.seed)
    if dist.is_main and not resumed:
        save_split(splits.record, split_file)
    if cfg.resize is None:  # default per case, saved in config.yaml; runs saved before policies existed: squash
        cfg.resize = "squash" if resumed else default_resize_policy(splits.splits["train"])
    prep = resolve_preprocessing(splits.info, entry, cfg)
    common = dict(prep=prep, batch_size=per_process_batch(cfg.batch_size, dist), seed=cfg.seed,
                  rank=dist.rank, world_size=dist.world_size, workers=cfg.workers,
                  cache=None if cfg.in_memory else False)
    augment = cfg.augment if cfg.augment is not None else default_augment(splits.info.name)
    loaders = {
        "train": build_loader(splits.splits["train"], train=True, sampler=cfg.sampler, augment=augment, **common),
        "val": build_loader(splits.splits["val"], train=False, **common),
    }
    return RunData(splits.info, splits.classes, splits.splits, splits.record, prep, loaders)


def per_process_batch(batch_size: int, dist: runtime.Dist) -> int:
    """``--batch-size`` is the global batch: each of N processes takes batch_size / N per step, so the
    optimisation (steps per epoch, learning rate, schedule) is the same for any N."""
    if batch_size % dist.world_size:
        lower = batch_size - batch_size % dist.world_size
        raise ClassifierError(f"--batch-size {batch_size} is the global batch and must divide evenly over "
                              f"{dist.world_size} processes (e.g. {lower or dist.world_size} or "
                              f"{lower + dist.world_size})")
    return batch_size // dist.world_size


def build_model(cfg: Config, data: RunData, *, pretrained_ok: bool = True):
    """Create the model for the run's classes and input; load weights; freeze for feature extraction.

    Returns (model, note about loaded weights or None). On resume no weights are fetched: the
    checkpoint's own weights are loaded afterwards.
    """
    imagenet = cfg.weights == "imagenet" and pretrained_ok
    model = create_model(cfg.model, num_classes=len(data.classes), in_chans=data.prep.channels,
                         img_size=data.prep.size, pretrained=imagenet, **(cfg.extra or {}))
    note = "ImageNet weights" if imagenet else None
    if cfg.weights and cfg.weights != "imagenet" and pretrained_ok:
        note = str(load_weights(model, cfg.weights))
        # finetune / feature-extract train a new head, even when the checkpoint's head has the same shape
        # (its classes are other classes: e.g. pretrained on Fashion-MNIST 0-4, transferred to 5-9)
        model.reset_classifier(model.num_classes)
        note += "; new head"
    if cfg.mode == "feature-extract":
        freeze_backbone(model)
    model.bn_stats_frozen = cfg.freeze_bn
    return model, note


def optimizer_groups(model, cfg: Config) -> list[dict]:
    mult = cfg.backbone_lr_mult if cfg.mode == "finetune" else 1.0
    return param_groups(model, lr=cfg.peak_lr, backbone_lr_mult=mult, weight_decay=cfg.weight_decay)


def wrap_model(model, cfg: Config, dist: runtime.Dist, device: torch.device):
    """DistributedDataParallel under torchrun, then torch.compile if asked."""
    if dist.enabled:
        if cfg.sync_bn:
            if device.type == "cpu":
                raise ClassifierError("--sync-bn needs GPUs: PyTorch's SyncBatchNorm does not run on CPU (without "
                                      "it each process normalises with its own shard's batch statistics)")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # feature-extract freezes the backbone before this line, so DDP never sees its parameters; a fine-tune's
        # head warm-up freezes it after, so DDP must be told that some parameters get no gradient for a while
        warmup = cfg.mode == "finetune" and bool(cfg.head_warmup_epochs)
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=warmup)
    if cfg.compile:
        model = torch.compile(model)
    return model


def _move_optimizer_state(optimizer, device) -> None:
    for per_param in optimizer.state.values():
        for k, v in per_param.items():
            if torch.is_tensor(v) and k != "step":
                per_param[k] = v.to(device)


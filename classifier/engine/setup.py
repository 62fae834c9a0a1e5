"""Building a run's pieces from the config: folder, data, preprocessing, model, optimiser groups."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from classifier.config import Config, save_yaml
from classifier.engine.runtime import Dist, barrier
from classifier.errors import ClassifierError
from classifier.preprocess import Preprocessing


@dataclass
class RunData:
    info: object  # classifier.data.DatasetInfo (after any class selection)
    classes: list
    splits: dict  # split name -> Samples
    record: dict  # which sample went where (split.json)
    prep: Preprocessing
    loaders: dict  # "train", "val" -> Loader


def make_run_dir(cfg: Config, dist: Dist, *, latest: bool = False) -> Path:
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
        path.mkdir(parents=True, exist_ok=True)
    if dist.enabled:
        import torch.distributed as tdist

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
        size = tuple(max(s, entry.min_size) for s in info.size)
    return Preprocessing(size=size, channels=channels, mean=tuple(mean), std=tuple(std))


def select_classes(info, splits: dict, wanted) -> tuple[list, dict]:
    """Keep only the ``wanted`` classes (names or indices), relabelled 0..k-1 in the given order."""
    if not wanted:
        return list(info.classes), splits
    index = []
    for w in wanted:
        if isinstance(w, int) or (isinstance(w, str) and w.isdigit()):
            i = int(w)
        elif w in info.classes:
            i = info.classes.index(w)
        else:
            raise ClassifierError(f"class '{w}' not in dataset {info.name} (classes: {', '.join(info.classes)})")
        if not 0 <= i < len(info.classes):
            raise ClassifierError(f"class index {i} out of range 0..{len(info.classes) - 1}")
        index.append(i)
    remap = {old: new for new, old in enumerate(index)}
    out = {}
    for name, samples in splits.items():
        labels = np.asarray(samples.labels)
        keep = np.flatnonzero(np.isin(labels, index))
        sub = samples.subset(keep)
        sub.labels = np.array([remap[int(l)] for l in np.asarray(sub.labels)], dtype=np.int64)
        out[name] = sub
    return [info.classes[i] for i in index], out


def cap_per_class(samples, max_per_class: int, seed: int):
    """At most ``max_per_class`` training samples per class, chosen by a seeded shuffle."""
    if not max_per_class:
        return samples
    labels = np.asarray(samples.labels)
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:max_per_class] for c in np.unique(labels)]
    return samples.subset(np.sort(np.concatenate(keep)))


def prepare_data(cfg: Config, run_dir: Path, dist: Dist, *, resumed: bool = False) -> RunData:
    from classifier.data import build_loader, default_augment, load_dataset, load_split, save_split, split_dataset
    from classifier.models import model_entry

    entry = model_entry(cfg.model)
    info, official = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download)
    splits, record = split_dataset(info, official, val_fraction=cfg.val_fraction,
                                   test_fraction=cfg.test_fraction, seed=cfg.seed)
    if cfg.early_stopping and not len(splits["val"]):  # before anything is written to the run folder
        raise ClassifierError("--early-stopping watches the validation loss, and this run has no validation "
                              "images (--val-fraction 0): drop one of the two")
    split_file = Path(run_dir) / "split.json"
    if resumed and split_file.exists() and load_split(split_file) != json.loads(json.dumps(record)):
        raise ClassifierError(f"the data changed since this run started: its split differs from {split_file}")
    if dist.is_main and not resumed and info.name.startswith("folder:"):
        from classifier.data.check import run_check

        run_check(info.classes, splits, Path(run_dir) / "data_check.json")
    classes, splits = select_classes(info, splits, cfg.classes)
    splits["train"] = cap_per_class(splits["train"], cfg.max_per_class, cfg.seed)
    if dist.is_main and not resumed:
        save_split(record, split_file)
    prep = resolve_preprocessing(info, entry, cfg)
    common = dict(prep=prep, batch_size=per_process_batch(cfg.batch_size, dist), seed=cfg.seed,
                  rank=dist.rank, world_size=dist.world_size, workers=cfg.workers,
                  cache=None if cfg.in_memory else False)
    loaders = {
        "train": build_loader(splits["train"], train=True, sampler=cfg.sampler, **common,
                              augment=cfg.augment if cfg.augment is not None else default_augment(info.name)),
        "val": build_loader(splits["val"], train=False, **common),
    }
    return RunData(info, classes, splits, record, prep, loaders)


def per_process_batch(batch_size: int, dist: Dist) -> int:
    """``--batch-size`` is the global batch: each of N processes takes batch_size / N per step, so the
    optimisation (steps per epoch, learning rate, schedule) is the same for any N."""
    if batch_size % dist.world_size:
        lower = batch_size - batch_size % dist.world_size
        raise ClassifierError(f"--batch-size {batch_size} is the global batch and must divide evenly over "
                              f"{dist.world_size} processes (e.g. {lower or dist.world_size} or "
                              f"{lower + dist.world_size})")
    return batch_size // dist.world_size


def prepare_model(cfg: Config, data: RunData, *, pretrained_ok: bool = True):
    """Create the model for the run's classes and input; load weights; freeze for feature extraction.

    Returns (model, note about loaded weights or None). On resume no weights are fetched: the
    checkpoint's own weights are loaded afterwards.
    """
    from classifier.models import create_model, freeze_backbone, load_weights

    imagenet = cfg.weights == "imagenet" and pretrained_ok
    model = create_model(cfg.model, num_classes=len(data.classes), in_chans=data.prep.channels,
                         pretrained=imagenet, **(cfg.extra or {}))
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
    from classifier.models import param_groups

    mult = cfg.backbone_lr_mult if cfg.mode == "finetune" else 1.0
    return param_groups(model, lr=cfg.peak_lr, backbone_lr_mult=mult, weight_decay=cfg.weight_decay)


def wrap_model(model, cfg: Config, dist: Dist, device: torch.device):
    """DistributedDataParallel under torchrun, then torch.compile if asked."""
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        if cfg.sync_bn:
            if device.type == "cpu":
                raise ClassifierError("--sync-bn needs GPUs: PyTorch's SyncBatchNorm does not run on CPU (without "
                                      "it each process normalises with its own shard's batch statistics)")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    return model


def write_run_header(run, load_note: str | None, *, resumed: bool) -> None:
    """Print and save what is about to be trained: config, data, model summary."""
    from classifier.models import model_summary

    cfg, data = run.cfg, run.data
    save_yaml(cfg, Path(run.dir) / "config.yaml")
    prep = data.prep
    summary = model_summary(run.raw_model, (prep.channels, *prep.size))
    (Path(run.dir) / "model_summary.txt").write_text(summary + "\n")
    sizes = ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
    print(("resuming" if resumed else "training") + f" {cfg.model} ({cfg.mode}) on {cfg.dataset}: "
          f"{len(data.classes)} classes, {sizes}; input {prep.channels}x{prep.size[0]}x{prep.size[1]}; "
          f"device {run.device}" + (f" bf16" if run.amp_dtype == torch.bfloat16 else ""))
    if run.dist.enabled:
        import torch.distributed as tdist

        n = run.dist.world_size
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in run.raw_model.modules())
        print(f"distributed: {n} processes ({tdist.get_backend()}); global batch {cfg.batch_size} = {n} x "
              f"{per_process_batch(cfg.batch_size, run.dist)} per process; learning rate {cfg.peak_lr:g} is for "
              f"the global batch, unchanged by the process count"
              + ("; SyncBatchNorm" if cfg.sync_bn else "; BatchNorm statistics per process" if has_bn else ""))
    if load_note:
        print(f"weights: {load_note}")
    if not resumed:
        print(summary)
    print(f"run folder: {run.dir}", flush=True)


def final_reports(run) -> dict:
    """Learning curves, and the best checkpoint evaluated on the test split (eval/ report)."""
    from classifier.report.plots import plot_learning_curves

    out = {}
    if run.state.history:
        plot_learning_curves(Path(run.dir) / "curves.png", run.state.history)
    if run.cfg.eval_test and "test" in run.data.splits and len(run.data.splits["test"]):
        from classifier.evaluation import evaluate_run_model

        out.update(evaluate_run_model(run))
    return out

"""Cached features for a frozen backbone (``--mode feature-extract``): the backbone runs once per image and
view, the head trains on what it computed.

A frozen backbone (weights and BatchNorm statistics fixed, see ``freeze_backbone``) maps the same pixels
to the same features every epoch, so computing them again is wasted work. ``cached_feature_loader``
computes ``views`` feature vectors per training image (view k: the training augmentation of epoch k,
exactly as the uncached run would draw it; without augmentation one view) and saves them under
``cache_dir("features")``, keyed by everything that changes them: the backbone's weights, the
preprocessing, the decoded training pixels themselves (a changed file changes them; the decoded-pixel
cache that provides them is keyed by file sizes and modification times), the augmentation, the number
of views and the seed. It returns a loader with the training loader's batch order and sharding, yielding
(features, labels): train ``model.head`` on it with the usual ``train_one_epoch``; each epoch draws one
of the views per image (seeded by seed, epoch and sample). The model saved is the whole model
(backbone + head), as without the cache.

Without augmentation the head sees exactly the features the uncached run computes (up to the float
rounding of another batch composition), so both give the same head weights for the same seed. With
augmentation the run draws from ``views`` augmented versions per image instead of a new one per epoch.
Requires the in-memory loader path (arrays, or folders decoded into memory); otherwise there is nothing
to index by view and the cache is off (``reason``).
"""
from __future__ import annotations

import copy
import hashlib
import os
import tempfile

import numpy as np
import torch

from classifier.cache import cache_dir, cache_root, enforce_limit, touch
from classifier.data.augment import sample_uniforms
from classifier.data.images import DRAFT_FACTOR
from classifier.data.loaders import InMemoryLoader, Loader
from classifier.engine.runtime import autocast

FEATURES_VERSION = "classifier-features/1"
_VIEW_STREAM = 0x5EED_F00D  # the view draw's own random stream, apart from the augmentation's
# Augmented views cached per image when the training loader augments (--feature-views). Measured on the transfer
# task (resnet18, validation accuracy over the last 5 epochs, seeds 0/1): 1 view 75.0/79.3%, 2 views 77.5/81.0%,
# 4 views 80.0/79.9%, uncached 79.6% (seed 0): fewer views cost accuracy, 4 match a new augmentation per epoch.
DEFAULT_VIEWS = 4
# The backbone's batch: at 224 px on 2 cores (AVX2, fp32, channels-last) 32 images ran resnet18 at 24.5 img/s
# against 21.9 at 256 (mobilenet_v2 31.2 against 26.0), and hold an eighth of the activations.
FEATURE_BATCH = 32


class FeatureLoader(Loader):
    """The training loader's order and sharding over cached features: yields (features float32, labels)."""

    def __init__(self, source: Loader, features: torch.Tensor):
        self.__dict__.update(copy.copy(source.__dict__))  # order, sharding, drop_last, epoch, skipped
        self.features = features  # (views, N, num_features), N = len(source.samples)
        self._labels = torch.from_numpy(np.asarray(source.samples.labels, dtype=np.int64))  # (N,) or (N, C)

    @property
    def views(self) -> int:
        return int(self.features.shape[0])

    def iter_from(self, batch_index: int):
        for idx in self.batch_indices()[batch_index:]:
            t = torch.from_numpy(idx)
            yield self.features[torch.from_numpy(self.view_of(idx)), t], self._labels[t]

    def view_of(self, indices: np.ndarray) -> np.ndarray:
        """The view each sample takes this epoch: drawn per (seed, epoch, sample), like an augmentation."""
        if self.views == 1:
            return np.zeros(len(indices), np.int64)
        u = sample_uniforms(self.seed ^ _VIEW_STREAM, self.epoch, indices, 1)[:, 0]
        return np.minimum((u * self.views).astype(np.int64), self.views - 1)


def cached_feature_loader(model, loader: Loader, *, views: int | None = None, device=torch.device("cpu"),
                          amp_dtype=None, channels_last: bool = False, batch_size: int = FEATURE_BATCH):
    """(FeatureLoader, note) for training ``model.head`` on ``loader``'s images, or (None, reason).

    ``views``: augmented views per image (default ``DEFAULT_VIEWS`` when the loader augments, else 1).
    The note says what the cache holds (for the run header).
    """
    if not getattr(model, "backbone_frozen", False):
        return None, "feature cache off: the backbone trains (only feature-extract freezes it)"
    if not isinstance(loader, InMemoryLoader):
        return None, "feature cache off: the training images stream (too large for the decoded-pixel cache)"
    augmented = not loader.augment.is_identity
    views = views or (DEFAULT_VIEWS if augmented else 1)
    views = views if augmented else 1
    key = feature_key(model, loader, views)
    path = cache_root() / "features" / f"{key}.pt"
    features = _read(path, views, len(loader.samples), model.num_features)
    hit = features is not None
    if not hit:
        features = compute_features(model, loader, views, device=device, amp_dtype=amp_dtype,
                                    channels_last=channels_last, batch_size=batch_size)
        _write(path, features)
    note = (f"feature cache: {'reused' if hit else 'computed'} {views} view(s) x {len(loader.samples)} images x "
            f"{model.num_features} features ({features.numel() * 4 / 2**20:.1f} MB, {path})")
    return FeatureLoader(loader, features), note


def head_training(run):
    """(module to train, its training loader, channels_last, note or None) for the trainer: the head on
    cached features for a feature-extract run (``--feature-cache auto``), else the run's model and loader."""
    cfg, loader = run.cfg, run.data.loaders["train"]
    plain = (run.model, loader, run.channels_last)
    if cfg.mode != "feature-extract":
        return (*plain, None)
    if cfg.feature_cache == "off":
        return (*plain, "feature cache off (--feature-cache off): the backbone runs on every image every epoch")
    if run.dist.enabled or cfg.compile:
        return (*plain, "feature cache off: not with torchrun or --compile")
    features, note = cached_feature_loader(run.raw_model, loader, views=cfg.feature_views, device=run.device,
                                           amp_dtype=run.amp_dtype, channels_last=run.channels_last)
    if features is None:
        return (*plain, note)
    return run.raw_model.head, features, False, note


def validation(run, *, on_features: bool):
    """(model, loader, channels_last) for each epoch's validation. The model is the weight average under --ema.
    ``on_features`` (the head trains on cached features): the head on the validation images' cached features
    (one view each: validation does not augment), so the frozen backbone runs once per validation image, not
    once per epoch; with --tta-flip, which needs the mirror images, the whole model on the images as before."""
    model = run.model if run.ema is None else run.ema.model
    loader = run.data.loaders["val"]
    if not on_features or run.cfg.tta_flip or not len(loader.samples):
        return model, loader, run.channels_last
    features, note = cached_feature_loader(run.raw_model, loader, views=1, device=run.device,
                                           amp_dtype=run.amp_dtype, channels_last=run.channels_last)
    if features is None:
        return model, loader, run.channels_last
    if run.dist.is_main:
        print(note.replace("feature cache:", "feature cache (validation):", 1), flush=True)
    return run.eval_model.head, features, False


def compute_features(model, loader: InMemoryLoader, views: int, *, device=torch.device("cpu"), amp_dtype=None,
                     channels_last: bool = False, batch_size: int = FEATURE_BATCH) -> torch.Tensor:
    """(views, N, num_features) float32: the frozen backbone on view k = the loader's augmentation at epoch k."""
    ordered = copy.copy(loader)  # every sample once, in index order, the training pixels and augmentation
    ordered.train, ordered.drop_last, ordered.rank, ordered.world_size = False, False, 0, 1
    ordered.num_samples, ordered.batch_size = len(loader.samples), batch_size
    out = torch.empty(views, len(loader.samples), model.num_features)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for view in range(views):
                ordered.set_epoch(view)
                start = 0
                for x, _ in ordered:
                    x = x.to(device)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with autocast(device, amp_dtype):
                        f = model.forward_features(x)
                    out[view, start:start + len(f)] = f.float().cpu()
                    start += len(f)
    finally:
        model.train(was_training)
    return out


def feature_key(model, loader: InMemoryLoader, views: int) -> str:
    """Everything the cached features depend on, hashed."""
    h = hashlib.sha256(f"{FEATURES_VERSION} draft={DRAFT_FACTOR} views={views} seed={loader.seed}\n".encode())
    h.update(repr(loader.prep.to_dict()).encode())
    h.update(repr(loader.augment).encode())
    for name, tensor in sorted(model.backbone.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    samples = loader.samples
    h.update(np.ascontiguousarray(samples.images).tobytes())  # the decoded pixels the backbone sees
    h.update(np.asarray(samples.index).tobytes())
    return h.hexdigest()[:32]


def _read(path, views: int, n: int, num_features: int):
    if not path.is_file():
        return None
    try:
        features = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError):
        return None
    if not torch.is_tensor(features) or tuple(features.shape) != (views, n, num_features):
        return None
    touch(path)
    return features.float()


def _write(path, features: torch.Tensor) -> None:
    folder = cache_dir("features")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        torch.save(features, tmp)
        os.replace(tmp, path)
        enforce_limit(keep=path)
    except OSError:  # a full or read-only disk: the next run computes again
        if os.path.exists(tmp):
            os.unlink(tmp)

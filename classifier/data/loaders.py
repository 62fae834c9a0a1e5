"""Batches for training and evaluation: ``build_loader`` picks one of two paths behind one interface.

* In memory (array Samples, preset augmentation): the whole uint8 dataset is one tensor; a batch is a
  slice of the epoch's permutation, augmented as a batch, then ``to_model_input``. No workers, no
  per-sample Python, which is what makes Fashion-MNIST/CIFAR-10 epochs fast on a CPU.
* Streaming (file Samples, or any Samples with a user albumentations pipeline): a torch DataLoader
  whose workers decode with ``load_image``, augment with albumentations and apply
  ``to_model_input`` per sample. An unreadable file is skipped and listed in ``loader.skipped``;
  it never stops training.

File samples with preset augmentation take the fast path too when they fit in ``MEMORY_CACHE_BYTES``:
they are decoded once, by threads, into an in-memory array, and a slow decode is saved on disk (under
``classifier.cache``) for later epochs' and runs' use (``decode_to_memory``). Training decodes each file
to the model size (the pixel pipeline of ``classifier.preprocess``: draft-mode JPEG decode, resize
policy, resize, round: ``fit_pixels``) and augments there, so images of any size fit; evaluation
decodes exactly as the deployed model does (full decode, no rounding) and takes the fast path only
when the files share one size. Larger folders stream, with the same per-file pipeline in the workers.

Order. A training epoch is a permutation seeded by (seed, epoch), padded by repeating its head to a
multiple of ``world_size`` (``sampler="balanced"``: n indices drawn with replacement, seeded the same
way, each class equally likely); rank r takes every world_size-th index starting at r, as
torch's DistributedSampler does, so all ranks have the same number of batches. With drop_last
(training) an epoch has floor(n / (batch_size x world_size)) batches: the ranks' batch b together hold
exactly batch b of one process with the whole batch, and no padded sample is trained on. Evaluation is not
shuffled and not padded: rank r takes samples r, r + world_size, ...; every sample is seen exactly
once, and ranks may differ by one sample (and so by one batch). Reduce metric *sums* across ranks once
after the loop (or gather predictions with ``loader.indices()``); do not run a collective per batch.

Resuming. ``iter_from(k)`` starts an epoch at batch k without touching the earlier batches; with
augmentation a function of (seed, epoch, sample index), it yields exactly the tail of a full epoch.
"""
from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from classifier.cache import decoded_key, read_decoded, write_decoded
from classifier.data.augment import (Preset, apply_pipeline, augment_batch, build_pipeline, preset_pipeline,
                                     resolve_augment)
from classifier.data.samples import Samples
from classifier.data.images import DRAFT_FACTOR, BadImageError, image_size, load_image
from classifier.errors import ClassifierError
from classifier.preprocess import Preprocessing, fit_pixels, fitted, to_model_input
from classifier.tasks import inverse_class_frequency  # noqa: F401 - also imported from here

log = logging.getLogger(__name__)


def build_loader(samples: Samples, prep: Preprocessing, *, train: bool, batch_size: int, augment="none",
                 seed: int = 0, rank: int = 0, world_size: int = 1, workers: int | None = None,
                 drop_last: bool | None = None, cache: bool | None = None, sampler: str = "shuffle") -> "Loader":
    """A loader yielding ``(x, y)``: x float32 NCHW ready for the model, y int64.

    ``augment``: a preset name (see ``classifier.data.augment.PRESETS``) or a list of albumentations
    transforms (forces the streaming path). ``drop_last`` defaults to ``train``, but a dataset smaller
    than one batch of all ranks (batch_size x world_size) keeps its partial batch. ``workers``
    (streaming only) defaults to ``default_workers()``. ``cache``: decode file samples once into memory and
    use the fast path (None: when they all have one size and fit in ``MEMORY_CACHE_BYTES``; False: always
    stream, in-memory samples too: config ``in_memory: false``). ``sampler`` (training): "shuffle" (a
    permutation) or "balanced" (every class equally likely, drawn with replacement).
    """
    aug = resolve_augment(augment)
    common = dict(train=train, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                  drop_last=drop_last, sampler=sampler)
    if samples.in_memory and isinstance(aug, Preset) and cache is not False:
        return InMemoryLoader(samples, prep, aug, **common)
    fit = prep if train and not samples.in_memory else None  # training pixels: fitted to the model size
    if not samples.in_memory and isinstance(aug, Preset) and cache is not False:
        decoded = decode_to_memory(samples, prep.channels, max_bytes=None if cache else MEMORY_CACHE_BYTES,
                                   fit=fit)
        if decoded is not None:
            loader = InMemoryLoader(decoded[0], fitted(prep) if fit else prep, aug, **common)
            loader.skipped = decoded[1]
            return loader
    if workers is None:
        workers = default_workers()
    return StreamingLoader(samples, prep, aug, workers=workers, fit=fit is not None, **common)


def default_workers() -> int:
    """Decoding processes for streamed folders: the CPUs this process may use (affinity), at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


class Loader:
    """Epoch order, rank sharding and batch bookkeeping shared by both paths."""

    def __init__(self, samples: Samples, prep: Preprocessing, *, train: bool, batch_size: int, seed: int,
                 rank: int, world_size: int, drop_last: bool | None, sampler: str = "shuffle"):
        if sampler not in ("shuffle", "balanced"):
            raise ClassifierError(f"unknown sampler '{sampler}' (choices: shuffle, balanced)")
        if batch_size < 1:
            raise ClassifierError(f"batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ClassifierError(f"rank {rank} is not in 0..{world_size - 1}")
        self.samples, self.prep, self.train = samples, prep, train
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, int(seed), rank, world_size
        self.epoch = 0
        self.sampler = sampler
        self.skipped: list[str] = []  # unreadable files met so far (streaming path)
        n = len(samples)
        self.num_samples = math.ceil(n / world_size) if train else len(range(rank, n, world_size))
        self.drop_last = (train if drop_last is None else drop_last) and n >= batch_size * world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """This rank's sample indices for the current epoch, in order (train: padded permutation)."""
        n = len(self.samples)
        if not self.train:
            return np.arange(self.rank, n, self.world_size, dtype=np.int64)
        rng = np.random.default_rng([self.seed % (1 << 64), self.epoch])
        if self.sampler == "balanced":  # p(sample) = 1 / (classes x its class count): classes equally likely
            p = inverse_class_frequency(self.samples.labels)[self.samples.labels]
            order = rng.choice(n, size=n, p=p / p.sum())
        else:
            order = rng.permutation(n)
        total = self.num_samples * self.world_size
        if total > n:
            order = np.concatenate([order, np.resize(order, total - n)])  # repeat the head, like DistributedSampler
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.samples) // (self.batch_size * self.world_size)
        return math.ceil(self.num_samples / self.batch_size)

    def batch_indices(self) -> list[np.ndarray]:
        idx = self.indices()
        return [idx[b * self.batch_size:(b + 1) * self.batch_size] for b in range(len(self))]

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, batch_index: int):
        """Iterate the current epoch from batch ``batch_index`` on; earlier batches are not loaded."""
        raise NotImplementedError


class InMemoryLoader(Loader):
    """Fast path: uint8 arrays in memory, batched augmentation, no workers."""

    def __init__(self, samples: Samples, prep: Preprocessing, augment: Preset, **kw):
        super().__init__(samples, prep, **kw)
        self.augment = augment
        self._images = torch.from_numpy(_writable(samples.images))  # N, H, W, C; no copy when possible
        self._labels = torch.from_numpy(samples.labels)

    def to(self, device: torch.device, *, share: float = 0.25) -> bool:
        """Keep the images on ``device`` (a GPU) when they take at most ``share`` of its free memory, so
        batches are gathered and augmented there and nothing crosses the bus per step; True if moved."""
        if device.type != "cuda" or self._images.device == device:
            return self._images.device == device
        free, _ = torch.cuda.mem_get_info(device)
        if self._images.numel() > share * free:
            return False
        self._images, self._labels = self._images.to(device), self._labels.to(device)
        return True

    def iter_from(self, batch_index: int):
        for idx in self.batch_indices()[batch_index:]:
            t = torch.from_numpy(idx).to(self._images.device)
            x = self._images[t].permute(0, 3, 1, 2).contiguous()
            x = augment_batch(x, self.augment, seed=self.seed, epoch=self.epoch, indices=idx)
            yield to_model_input(x, self.prep), self._labels[t]


class StreamingLoader(Loader):
    """Per-sample path: DataLoader workers decode, augment (albumentations) and normalise."""

    def __init__(self, samples: Samples, prep: Preprocessing, augment, *, workers: int, fit: bool = False, **kw):
        super().__init__(samples, prep, **kw)
        self.workers = max(0, int(workers))
        self.pin_memory = False  # set for a CUDA run (engine/build.py): page-locked batches copy asynchronously
        self.dataset = SampleDataset(samples, prep, augment, self.seed, fit=fit)
        self._seen: set[str] = set()
        if isinstance(augment, list) and len(samples):
            self.dataset.dry_run()

    def iter_from(self, batch_index: int):
        batches = [[(int(i), self.epoch) for i in b] for b in self.batch_indices()[batch_index:]]
        if not batches:
            return
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, collate_fn=_collate, num_workers=self.workers,
            worker_init_fn=_worker_init if self.workers else None, pin_memory=self.pin_memory,
        )
        for x, y, bad in loader:
            for path, reason in bad:
                if path not in self._seen:
                    self._seen.add(path)
                    self.skipped.append(path)
                    log.warning("skipping unreadable image: %s", reason)
            if x is not None:
                yield x, y


class SampleDataset(torch.utils.data.Dataset):
    """Item ``(index, epoch)`` -> ``(x float CHW, label, index, None)``, or ``(None, label, index,
    (path, reason))`` for an unreadable file."""

    def __init__(self, samples: Samples, prep: Preprocessing, augment, seed: int, *, fit: bool = False):
        self.samples, self.prep, self.augment, self.seed = samples, prep, augment, seed
        self.fit = fit  # training files: decoded to the model size first (fit_pixels), augmented there
        self._pipelines: dict = {}  # built lazily, in the worker that uses them

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self):  # workers build their own pipelines (spawn start method pickles us)
        return {**self.__dict__, "_pipelines": {}}

    def __getitem__(self, item):
        index, epoch = item
        label = self.samples.labels[index]
        label = int(label) if np.ndim(label) == 0 else label.astype(np.int64)  # a class index, or a 0/1 row
        try:
            image = self._image(index)
        except BadImageError as err:
            return None, label, index, (self.samples.paths[index], str(err))
        image = self._augment(image, index, epoch)
        x = torch.from_numpy(_writable(image)).permute(2, 0, 1)[None]
        return to_model_input(x, fitted(self.prep) if self.fit else self.prep)[0], label, index, None

    def _image(self, index: int) -> np.ndarray:
        if self.samples.in_memory:
            return self.samples.images[index]
        if self.fit:
            return decode_fitted(self.samples.paths[index], self.prep)
        return load_image(self.samples.paths[index], self.prep.channels)

    def _augment(self, image: np.ndarray, index: int, epoch: int) -> np.ndarray:
        if isinstance(self.augment, Preset):
            if self.augment.is_identity:
                return image
            key = image.shape[:2]
            if key not in self._pipelines:
                self._pipelines[key] = preset_pipeline(self.augment, *key)
            pipeline = self._pipelines[key]
        else:
            if "custom" not in self._pipelines:
                self._pipelines["custom"] = build_pipeline(self.augment)
            pipeline = self._pipelines["custom"]
        return apply_pipeline(pipeline, image, seed=self.seed, epoch=epoch, index=index)

    def dry_run(self) -> None:
        """Run sample 0 through a user pipeline now, so a broken one fails here in one line."""
        try:
            image = self._image(0)
        except BadImageError:
            return
        try:
            self._augment(image, 0, 0)
        except ClassifierError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure of a user pipeline is a config problem
            raise ClassifierError(f"augment pipeline fails on {self._describe(0)}: "
                                  f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None

    def _describe(self, index: int) -> str:
        if self.samples.in_memory:
            return f"sample {index} ({'x'.join(map(str, self.samples.images.shape[1:]))})"
        return self.samples.paths[index]


# --- decoding small file datasets once -----------------------------------------------------------
MEMORY_CACHE_BYTES = 1 << 30  # decoded uint8 pixels a file dataset may take to use the fast path
DISK_CACHE_AFTER_SECONDS = 5.0  # decoding slower than this is saved for the next run


def decode_to_memory(samples: Samples, channels: int, *, max_bytes: int | None = MEMORY_CACHE_BYTES,
                     fit: Preprocessing | None = None):
    """(in-memory Samples, skipped paths) for file samples, else None (they do not fit in ``max_bytes``,
    or without ``fit`` they do not all decode to one size).

    ``fit``: every file is decoded to ``fit.size`` by ``decode_fitted`` (training pixels); without it
    at its own size (exact pixels). Unreadable files are dropped (and returned as skipped). A decode that
    took longer than ``DISK_CACHE_AFTER_SECONDS`` is saved under ``cache_dir("decoded")``, keyed by the
    file list with sizes and modification times, the channel count and the fit, so an unchanged dataset
    decodes only once.
    """
    if not len(samples):
        return None
    if fit is not None:
        h, w = fit.size
    else:
        first = next((h for h in map(image_size, samples.paths[:16]) if h is not None), None)
        if first is None:
            return None
        (h, w), _ = first
    if max_bytes is not None and len(samples) * h * w * channels > max_bytes:
        return None
    fitted_to = f" fit={fit.size} {fit.resize_policy} draft={DRAFT_FACTOR}" if fit is not None else ""
    key = decoded_key(samples.paths, f"channels={channels}{fitted_to}")
    cached = read_decoded(key, len(samples), (h, w, channels))
    if cached is None:
        started = time.perf_counter()
        cached = _decode_all(samples.paths, channels, (h, w), fit)
        if cached is None:
            return None  # mixed sizes: stream
        if time.perf_counter() - started > DISK_CACHE_AFTER_SECONDS:
            write_decoded(key, *cached)
    images, ok = cached
    keep = np.flatnonzero(ok)
    skipped = [samples.paths[i] for i in np.flatnonzero(~ok)]
    for path in skipped:
        log.warning("skipping unreadable image: %s", path)
    if not len(keep):
        return None
    out = Samples(labels=samples.labels[keep], images=images[keep] if len(keep) < len(ok) else images,
                  root=samples.root, source=samples.source, index=samples.index[keep])
    return out, skipped


def decode_fitted(path: str, prep: Preprocessing, *, draft: bool = True) -> np.ndarray:
    """One file -> uint8 HWC at ``prep.size``: draft-mode decode (``draft=False``: full size, as evaluation
    decodes), then ``fit_pixels`` (policy, resize, round)."""
    image = load_image(path, prep.channels, draft=prep.size if draft else None)
    x = fit_pixels(torch.from_numpy(image).permute(2, 0, 1)[None], prep)
    return np.ascontiguousarray(x[0].permute(1, 2, 0).numpy())


def _decode_all(paths: list[str], channels: int, size: tuple[int, int], fit: Preprocessing | None = None):
    images = np.zeros((len(paths), *size, channels), np.uint8)
    ok = np.ones(len(paths), bool)

    def decode(i):
        try:
            return i, decode_fitted(paths[i], fit) if fit is not None else load_image(paths[i], channels)
        except BadImageError:
            return i, None

    # PIL decodes with the GIL released, so threads scale; a different size stops everything early
    with ThreadPoolExecutor(default_workers()) as pool:
        for i, image in pool.map(decode, range(len(paths)), chunksize=64):
            if image is None:
                ok[i] = False
            elif image.shape[:2] != size:
                pool.shutdown(wait=False, cancel_futures=True)
                return None
            else:
                images[i] = image
    return images, ok


def _writable(a: np.ndarray) -> np.ndarray:
    """torch.from_numpy warns on read-only arrays (e.g. np.frombuffer); copy only those."""
    a = np.ascontiguousarray(a)
    return a if a.flags.writeable else a.copy()


def _collate(items):
    good = [it for it in items if it[0] is not None]
    bad = [it[3] for it in items if it[0] is None]
    if not good:
        return None, None, bad
    x = torch.stack([it[0] for it in good])
    y = torch.tensor(np.array([it[1] for it in good]), dtype=torch.int64)
    return x, y, bad


def _worker_init(_worker_id: int) -> None:
    # Each worker handles one sample at a time: intra-op threads would only oversubscribe the CPUs.
    torch.set_num_threads(1)
    try:
        import cv2  # albumentations' dependency; only the streaming workers use it

        cv2.setNumThreads(0)
    except ImportError:
        pass

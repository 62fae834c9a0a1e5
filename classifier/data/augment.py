"""Training augmentation: named presets implemented twice with one meaning, plus user pipelines.

Presets (``none``, ``flip``, ``light``, ``strong``, ``flip-cutout``; ``-noflip`` variants for data
where a mirror image is a different thing, e.g. text or digits):

* ``flip``: a horizontal flip with probability 0.5 only (pixels stay where they are).
* ``light``: translate by up to 1/8 of each side in whole pixels (reflect padding, then a random
  crop back to the original size), then a horizontal flip with probability 0.5.
* ``strong``: ``light``, then cutout: one black square hole of half the side, placed fully inside.
* ``flip-cutout``: the flip, then one black square hole of a quarter of the side (random erasing's
  regulariser without the translation, for short schedules).

(a) :func:`augment_batch` applies a preset to a whole uint8 NCHW batch at once (the in-memory path).
(b) :func:`preset_pipeline` builds the same preset with albumentations for one HWC image at a time
    (the streaming path). The two draw different random numbers, from the same distributions.

User pipelines come from config as a list of albumentations transforms by name, e.g.
``[{"name": "HorizontalFlip", "p": 0.5}, {"name": "Affine", "translate_percent": 0.1}]``; composes
such as ``OneOf`` take a nested ``transforms`` list. They always run per sample.

Randomness is a pure function of (seed, epoch, sample index): a resumed or re-run epoch augments every
sample exactly as before, whatever the batch size, rank count or worker count.
"""
from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from classifier.errors import ClassifierError, unknown_choice


@dataclass(frozen=True)
class Preset:
    translate: float = 0.0  # max shift as a fraction of each side (whole pixels: floor(side * translate))
    flip: bool = False  # horizontal flip with probability 0.5
    cutout: float = 0.0  # side of one square hole as a fraction of each side (0 = off)

    @property
    def is_identity(self) -> bool:
        return not (self.translate or self.flip or self.cutout)


PRESETS = {
    "none": Preset(),
    "flip": Preset(flip=True),
    "light": Preset(translate=1 / 8, flip=True),
    "light-noflip": Preset(translate=1 / 8),
    "strong": Preset(translate=1 / 8, flip=True, cutout=1 / 2),
    "strong-noflip": Preset(translate=1 / 8, cutout=1 / 2),
    "flip-cutout": Preset(flip=True, cutout=1 / 4),
}
# The preset a run uses when it does not choose one is its dataset source's (classifier.data.sources).


def resolve_augment(augment) -> Preset | list:
    """A preset name (or None) -> Preset; a list of transform dicts is validated and returned as is."""
    if augment is None:
        return PRESETS["none"]
    if isinstance(augment, Preset):
        return augment
    if isinstance(augment, str):
        if augment not in PRESETS:
            raise unknown_choice("augment preset", augment, PRESETS)
        return PRESETS[augment]
    if isinstance(augment, (list, tuple)):
        build_pipeline(augment)  # fail now, in one line, rather than inside a worker
        return list(augment)
    raise ClassifierError(f"augment must be a preset name ({', '.join(PRESETS)}) or a list of transforms, "
                          f"got {type(augment).__name__}")


# --- randomness as a function of (seed, epoch, index) ------------------------------------------
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return x ^ (x >> np.uint64(31))


def sample_keys(seed: int, epoch: int, indices) -> np.ndarray:
    """One well-mixed uint64 per sample, from (seed, epoch, index) only."""
    idx = np.asarray(indices, dtype=np.int64).astype(np.uint64)
    h = _splitmix64(np.array([int(seed) % (1 << 64)], dtype=np.uint64))
    h = _splitmix64(h ^ np.uint64(int(epoch) % (1 << 64)))
    return _splitmix64(h ^ idx)


def sample_uniforms(seed: int, epoch: int, indices, count: int) -> np.ndarray:
    """(N, count) uniforms in [0, 1), one row per sample index."""
    keys = sample_keys(seed, epoch, indices)[:, None]
    k = np.arange(1, count + 1, dtype=np.uint64)[None, :]
    return (_splitmix64(keys ^ (k * np.uint64(0xD1B54A32D192ED03))) >> np.uint64(11)).astype(np.float64) * 2.0**-53


# --- (a) batched, for in-memory uint8 tensors --------------------------------------------------
def augment_batch(images: torch.Tensor, preset: Preset, *, seed: int, epoch: int, indices) -> torch.Tensor:
    """Apply ``preset`` to uint8 NCHW ``images``; ``indices`` are the samples' dataset indices."""
    if preset.is_identity or len(images) == 0:
        return images
    n, c, h, w = images.shape
    dev = images.device  # the batch may live on the GPU (InMemoryLoader.to): everything below follows it
    u = torch.from_numpy(sample_uniforms(seed, epoch, indices, 6)).to(dev)
    x = images
    ph, pw = int(h * preset.translate), int(w * preset.translate)
    if ph or pw or preset.flip:
        # Translate and flip as one gather from the reflect-padded batch: output pixel (i, j) of
        # sample s is padded[s, :, top + i, left + j], or left + (w - 1 - j) when s is flipped.
        padded = F.pad(x, (pw, pw, ph, ph), mode="reflect") if ph or pw else x
        top = (u[:, 0] * (2 * ph + 1)).long()[:, None, None]  # shift = top - ph
        left = (u[:, 1] * (2 * pw + 1)).long()[:, None, None]
        j = torch.arange(w, device=dev)[None, None, :]
        if preset.flip:
            j = torch.where((u[:, 2] < 0.5)[:, None, None], w - 1 - j, j)
        flat = (top + torch.arange(h, device=dev)[None, :, None]) * padded.shape[-1] + left + j  # N, h, w
        x = padded.reshape(n, c, -1).gather(2, flat.reshape(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)
    if preset.cutout:
        hh, hw = _hole(h, preset.cutout), _hole(w, preset.cutout)
        y0 = (u[:, 3] * (h - hh + 1)).long()[:, None]
        x0 = (u[:, 4] * (w - hw + 1)).long()[:, None]
        ys, xs = torch.arange(h, device=dev)[None, :], torch.arange(w, device=dev)[None, :]
        in_rows = (ys >= y0) & (ys < y0 + hh)
        in_cols = (xs >= x0) & (xs < x0 + hw)
        x = x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0)
    return x.contiguous()


def _hole(side: int, fraction: float) -> int:
    return max(1, min(side, round(side * fraction)))


# --- (b) albumentations, per sample ------------------------------------------------------------
def _albumentations():
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
    import albumentations  # imported on first use: ~1 s, and the in-memory path never needs it

    return albumentations


def preset_pipeline(preset: Preset, height: int, width: int):
    """The albumentations Compose that means the same as ``preset`` for an image of this size."""
    import cv2  # with albumentations, on first use

    A = _albumentations()
    transforms = []
    ph, pw = int(height * preset.translate), int(width * preset.translate)
    if ph or pw:
        transforms += [
            A.PadIfNeeded(min_height=height + 2 * ph, min_width=width + 2 * pw, position="center",
                          border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(height=height, width=width),
        ]
    if preset.flip:
        transforms.append(A.HorizontalFlip(p=0.5))
    if preset.cutout:
        hh, hw = _hole(height, preset.cutout), _hole(width, preset.cutout)
        transforms.append(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(hh, hh),
                                          hole_width_range=(hw, hw), fill=0, p=1.0))
    return A.Compose(transforms)


def build_pipeline(config) -> object:
    """A user pipeline (list of ``{"name": ..., **args}``) -> albumentations Compose.

    Unknown names and invalid arguments raise a one-line ClassifierError naming the entry.
    """
    A = _albumentations()
    if not isinstance(config, (list, tuple)):
        raise ClassifierError(f"augment pipeline must be a list of transforms, got {type(config).__name__}")
    return A.Compose([_build_transform(A, item, f"augment[{i}]") for i, item in enumerate(config)])


def _build_transform(A, item, where: str):
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ClassifierError(f"{where} must be a mapping with a 'name', e.g. {{name: HorizontalFlip, p: 0.5}}; "
                              f"got {item!r}")
    kwargs = {k: _tuples(v) for k, v in item.items() if k != "name"}
    name = item["name"]
    cls = getattr(A, name, None)
    composes = (A.BaseCompose,) if hasattr(A, "BaseCompose") else ()
    if not (isinstance(cls, type) and issubclass(cls, (A.BasicTransform, *composes))):
        raise unknown_choice(f"albumentations transform in {where}", name, _transform_names(A))
    if "transforms" in kwargs:
        children = item["transforms"]
        if not isinstance(children, (list, tuple)):
            raise ClassifierError(f"{where}: 'transforms' of {name} must be a list")
        kwargs["transforms"] = [_build_transform(A, t, f"{where}.transforms[{j}]") for j, t in enumerate(children)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            transform = cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise ClassifierError(f"{where}: invalid arguments for {name}: {_one_line(err)}") from None
    for w in caught:
        if "not valid for transform" in str(w.message):  # albumentations warns about unknown arguments
            raise ClassifierError(f"{where}: {name}: {w.message}")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return transform


def _tuples(v):
    """YAML/JSON lists -> tuples, the type albumentations' ranges are declared with."""
    if isinstance(v, list):
        return tuple(_tuples(x) for x in v)
    if isinstance(v, dict):
        return {k: _tuples(x) for k, x in v.items()}
    return v


def _one_line(err: Exception) -> str:
    # albumentations re-raises pydantic's ValidationError as ValueError: summarise it field by field
    source = err if callable(getattr(err, "errors", None)) else err.__cause__
    errors = getattr(source, "errors", None)
    if callable(errors):
        try:
            parts = []
            for e in errors():
                part = f"{e['loc'][0] if e.get('loc') else '?'}: {e['msg']}"
                if part not in parts:
                    parts.append(part)
            return "; ".join(parts)
        except Exception:  # noqa: BLE001 - fall back to the text
            pass
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _transform_names(A) -> list[str]:
    composes = (A.BaseCompose,) if hasattr(A, "BaseCompose") else ()
    return [n for n in dir(A) if not n.startswith("_") and isinstance(getattr(A, n), type)
            and issubclass(getattr(A, n), (A.BasicTransform, *composes))
            and getattr(A, n) not in (A.BasicTransform, *composes)]


def apply_pipeline(pipeline, image: np.ndarray, *, seed: int, epoch: int, index: int) -> np.ndarray:
    """Run an albumentations pipeline on one HWC uint8 image with randomness from (seed, epoch, index)."""
    key = int(sample_keys(seed, epoch, [index])[0])
    pipeline.set_random_state(np.random.default_rng(key), random.Random(key))
    out = pipeline(image=image)["image"]
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8:
        raise ClassifierError("augment pipeline must return uint8 images; drop Normalize/ToFloat/ToTensorV2 "
                              "(normalisation is applied after augmentation)")
    if out.ndim == 2:
        out = out[:, :, None]
    return out

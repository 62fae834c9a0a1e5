"""What a seeded sample of image files says about a dataset: channels, the common size, per-channel
mean/std (``image_stats``), and whether their sizes call for cropping (``default_resize_policy``).

Sources whose images are files (folders, EuroSAT, CSV lists) measure their statistics here; sources
with published figures register them instead.
"""
from __future__ import annotations

import os
from collections import Counter

import numpy as np

from classifier.data.images import BadImageError, image_size, load_image
from classifier.data.samples import Samples
from classifier.errors import ClassifierError

_GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_STATS_CACHE: dict = {}


def image_stats(paths: list[str], max_images: int = 256, seed: int = 0):
    """(channels, (H, W), mean, std) from a seeded sample of up to ``max_images`` training images.

    Channels is 1 only if every sampled image is stored as gray; the size is the most common one.
    Mean and std are per channel on the 0-1 scale over all sampled pixels (population std).
    """
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(paths), size=min(max_images, len(paths)), replace=False).tolist())
    chosen = [paths[i] for i in pick]
    key = tuple((p, *_stat(p)) for p in chosen)
    if key in _STATS_CACHE:
        return _STATS_CACHE[key]
    headers = [h for h in map(image_size, chosen) if h is not None]
    if not headers:
        raise ClassifierError(f"none of {len(chosen)} sampled images under '{os.path.dirname(chosen[0])}' is readable")
    channels = 1 if all(mode in _GRAY_MODES for _, mode in headers) else 3
    size = Counter(s for s, _ in headers).most_common(1)[0][0]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    count = 0
    for p in chosen:
        try:
            a = load_image(p, channels).reshape(-1, channels).astype(np.float64) / 255.0
        except BadImageError:
            continue
        total += a.sum(0)
        total_sq += (a * a).sum(0)
        count += len(a)
    if count == 0:
        raise ClassifierError(f"none of {len(chosen)} sampled images under '{os.path.dirname(chosen[0])}' decodes")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.where(std < 1e-3, 1.0, std)  # a constant channel: avoid dividing by ~0
    result = (channels, size, tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std))
    _STATS_CACHE[key] = result
    return result


def default_resize_policy(samples: Samples, max_images: int = 64, seed: int = 0) -> str:
    """``squash`` for in-memory datasets and folders whose sampled images all have one size (nothing to
    distort differently), ``crop`` (ImageNet's centre crop) for folders of mixed sizes, e.g. photos."""
    if samples.in_memory or not len(samples):
        return "squash"
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(samples), size=min(max_images, len(samples)), replace=False)
    sizes = {h[0] for h in (image_size(samples.paths[i]) for i in pick) if h is not None}
    return "squash" if len(sizes) <= 1 else "crop"


def _stat(path: str) -> tuple:
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size
    except OSError:
        return (None, None)

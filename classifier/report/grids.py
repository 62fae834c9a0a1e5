"""Image grids for people to look at: images resized for display (the report's and predictions' grids use
it too) and the first training images of every class (``show_dataset``, ``train.py --visualize``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from classifier.data import BadImageError, load_image
from classifier.report.plots import plot_dataset_grid

MAX_SIDE = 96  # tile side, in pixels


def images_to_uint8_batch(images: list, side: int) -> np.ndarray:
    """Resize uint8 HWC images to side x side for display."""
    out = []
    for im in images:
        t = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float()
        if t.shape[-2:] != (side, side):
            t = F.interpolate(t, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        out.append(t[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy())
    return np.stack(out) if out else np.zeros((0, side, side, 1), np.uint8)


def write_dataset_grid(path: Path, samples, classes: list[str], channels: int, per_class: int) -> Path:
    """The first ``per_class`` readable images of every class of ``samples``, one row per class."""
    picked = np.concatenate([np.flatnonzero(samples.labels == c)[:per_class] for c in range(len(classes))])
    images, labels = [], []
    for i in picked:
        try:
            images.append(samples.images[i] if samples.in_memory else load_image(samples.paths[i], channels))
            labels.append(samples.labels[i])
        except BadImageError:
            continue
    side = min(max(max(im.shape[:2]) for im in images), MAX_SIDE)
    return plot_dataset_grid(path, images_to_uint8_batch(images, side), np.array(labels), classes, per_class)

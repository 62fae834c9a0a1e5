"""A figure of images with a caption under each, in rows: the suspected label errors (label_issues.py) and
the near-duplicate pairs of the data check (data/duplicates.py) are shown this way."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from classifier.report.plots import _show, save_figure


def tiles_figure(images: list, captions: list[str], *, cols: int = 6, title: str = "", tile: float = 1.6,
                 colors: list | None = None) -> Figure:
    """uint8 images (H, W), (H, W, 1) or (H, W, 3) of any sizes, ``captions`` under them, ``cols`` per row."""
    n = max(len(images), 1)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    lines = max((c.count("\n") + 1 for c in captions), default=1)
    fig = Figure(figsize=(cols * tile, rows * (tile + 0.16 * lines) + (0.4 if title else 0.1)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, (image, caption) in enumerate(zip(images, captions)):
        ax = axes[i // cols, i % cols]
        image = np.asarray(image)
        _show(ax, image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
        ax.set_axis_on()
        ax.set_xlabel(caption, fontsize=7, color=(colors[i] if colors else "black"))
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_tiles(path: str | os.PathLike, images: list, captions: list[str], **options) -> Path:
    return save_figure(tiles_figure(images, captions, **options), path)

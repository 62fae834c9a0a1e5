"""Shared fixtures: tiny image folders written as real files, learnable by a small net in a few steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(2)

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def write_class_images(folder, per_class: int, size: int = 16, seed: int = 0, classes=COLOURS):
    """class sub-folders of noisy solid-colour PNGs (a class is recognisable from its colour)."""
    rng = np.random.default_rng(seed)
    for name, rgb in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-40, 40, size=(size, size, 3))
            pixels = np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{name}_{i}.png")
    return folder


@pytest.fixture
def tiny_folder(tmp_path):
    """A single folder of 3 classes x 20 images, 16x16 RGB."""
    return write_class_images(tmp_path / "colours", per_class=20)


@pytest.fixture
def tiny_split_folder(tmp_path):
    """PATH/train and PATH/test, 3 classes."""
    root = tmp_path / "colours_split"
    write_class_images(root / "train", per_class=16, seed=1)
    write_class_images(root / "test", per_class=6, seed=2)
    return root

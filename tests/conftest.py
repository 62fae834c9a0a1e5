"""Shared fixtures: tiny image folders written as real files, learnable by a small net in a few steps."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)  # see the Makefile's test target: one OpenMP thread avoids a oneDNN hang seen on CI



@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache root: nothing is read from or written to the user's ~/.cache."""
    monkeypatch.setenv("CLASSIFIER_CACHE", str(tmp_path_factory.mktemp("classifier-cache")))


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


def bomb_png(path, side: int):
    """A real, valid 1-bit PNG of side x side black pixels: tens of kB on disk, side**2 pixels decoded."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def stripes(n: int = 90, side: int = 16, seed: int = 0):
    """A learnable 3-class array dataset: the class decides which third of the image is bright."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, (n, side, side), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, :, c * side // 3:(c + 1) * side // 3] += 180
    return images, labels


UNREADABLE = ("truncated.jpg", "empty.png", "text.jpg", "bomb.png", "bomb2x.png")
UNUSUAL = ("cmyk.jpg", "deep16.png", "palette_alpha.png", "png_named.jpg")


def write_problem_files(folder, size: int = 16) -> dict:
    """Issue 7's bad and unusual files, as real files in ``folder`` (name -> path).

    Unreadable (UNREADABLE): a truncated JPEG, a 0-byte PNG, a text file named .jpg, PNGs over the
    decompression-bomb limit (bomb.png: over Image.MAX_IMAGE_PIXELS, bomb2x.png: over twice it, where PIL
    itself refuses). Readable (UNUSUAL): a CMYK JPEG, a 16-bit PNG, a palette PNG with transparency, a PNG
    named .jpg. Not samples at all: a hidden image file and a text file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (200, 30, 30)).save(folder / "whole.jpg", quality=95)
    data = (folder / "whole.jpg").read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    limit = Image.MAX_IMAGE_PIXELS
    bomb_png(folder / "bomb.png", int((1.5 * limit) ** 0.5))
    bomb_png(folder / "bomb2x.png", int((2.5 * limit) ** 0.5))
    Image.new("CMYK", (size, size), (0, 200, 200, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(np.full((size, size), 200 * 257, np.uint16)).save(folder / "deep16.png")
    palette = Image.new("P", (size, size), 1)
    palette.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    palette.paste(0, (0, 0, size, size // 2))  # top half: index 0, fully transparent
    palette.save(folder / "palette_alpha.png", transparency=0)
    Image.new("RGB", (size, size), (200, 30, 30)).save(folder / "png_named.jpg", format="PNG")
    (folder / ".hidden.png").write_bytes(b"junk")
    (folder / "notes.txt").write_text("not a sample\n")
    return {p.name: p for p in folder.iterdir()}


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

"""Writers for tiny datasets in the exact on-disk formats the loaders read (no tests here).

Imported by the other tests/test_data_*.py files.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def code_images(labels, size=(8, 8), channels=1) -> np.ndarray:
    """uint8 (N, H, W, C) constant images whose value encodes the label: 20 * label + 10."""
    labels = np.asarray(labels)
    images = np.zeros((len(labels), *size, channels), np.uint8)
    images[:] = (20 * labels + 10).astype(np.uint8)[:, None, None, None]
    return images


def index_images(n, size=(8, 8), channels=3, seed=0) -> np.ndarray:
    """Random uint8 images; pixel [0, 0, 0] holds the sample index (mod 256)."""
    images = np.random.default_rng(seed).integers(0, 256, (n, *size, channels), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    return images


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (uint8) gzipped: magic 0x00000800 | ndim, big-endian dims, data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_fashion(folder: Path, n_train=30, n_test=10, seed=0) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        out[prefix] = (images, labels)
    return out


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar(folder: Path, per_batch=6, n_test=8, protocol=2, seed=0) -> dict:
    """cifar-10-batches-py/ with data_batch_1..5, test_batch, batches.meta (bytes keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [f"img_{i}.png".encode() for i in range(n)]}, f, protocol=protocol)
        out[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CIFAR_NAMES],
                     b"num_vis": 3072}, f, protocol=protocol)
    return out


EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
           "Pasture", "PermanentCrop", "Residential", "River", "SeaLake"]


def write_eurosat(folder: Path, per_class=3, seed=0) -> None:
    """2750/<ClassName>/<ClassName>_<n>.jpg, 64x64 RGB JPEGs."""
    rng = np.random.default_rng(seed)
    for c in EUROSAT:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(1, per_class + 1):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / c / f"{c}_{i}.jpg", quality=90)


def write_image_folder(folder: Path, images: np.ndarray, labels, classes=None, ext=".png") -> list[Path]:
    """folder/<class>/<i>.png for each (image, label); returns the paths in sample order."""
    classes = classes or [f"class{c}" for c in range(int(max(labels)) + 1)]
    paths = []
    for i, (img, y) in enumerate(zip(images, labels)):
        d = folder / classes[int(y)]
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{i:04d}{ext}"
        Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(p)
        paths.append(p)
    return paths

"""Fashion-MNIST: 70,000 gray 28x28 clothing images in 10 classes, read from the official IDX files.

Looked for in ROOT/fashion_mnist, ROOT/FashionMNIST/raw (torchvision's layout, maybe unpacked) and the
Debian package's folder; downloaded to ROOT/fashion_mnist when missing. In memory (uint8 arrays).
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

import classifier.data.sources.downloads as downloads
from classifier.data.samples import DatasetInfo, Samples
from classifier.data.sources.registry import register_source
from classifier.errors import ClassifierError

URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {  # name -> MD5 of the official download
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN, STD = (0.2860,), (0.3530,)  # computed from the official train set (population std over all pixels)


@register_source("fashion_mnist", mean=MEAN, std=STD, augment="light")
def load(path, root: Path, download: bool):
    """Zalando's Fashion-MNIST (official train 60k / test 10k)."""
    files = fashion_mnist_files(root, download)
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(files[f"{prefix}-images-idx3-ubyte.gz"])
        labels = read_idx(files[f"{prefix}-labels-idx1-ubyte.gz"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ClassifierError(f"Fashion-MNIST {split} files disagree: images {images.shape}, labels {labels.shape}")
        downloads.check_labels(labels, len(CLASSES), f"Fashion-MNIST {split}")
        splits[split] = Samples(labels=labels, images=images[..., None], source=split)
    return DatasetInfo("fashion_mnist", list(CLASSES), 1, (28, 28), MEAN, STD), splits


def _dirs(root: Path) -> list[Path]:
    return [root / "fashion_mnist", root / "FashionMNIST" / "raw", Path(SYSTEM_DIR)]


def _idx_path(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / name[: -len(".gz")]):  # torchvision also keeps them unpacked
        if candidate.is_file():
            return candidate
    return None


def fashion_mnist_files(root: str | os.PathLike = "datasets", download: bool = True) -> dict[str, Path]:
    """Official file name -> where it is (maybe unpacked); downloaded to ROOT/fashion_mnist if missing."""
    root = Path(root)

    def find():
        for folder in _dirs(root):
            found = [_idx_path(folder, n) for n in FILES]
            if all(found):
                return dict(zip(FILES, found))
        return None

    files = find()
    if files is None:
        target = root / "fashion_mnist"

        def fetch():
            for name, md5 in FILES.items():
                if not (target / name).is_file():
                    downloads.download_file(URL + name, target, name, md5, extract=False)

        downloads.fetch_or_explain("Fashion-MNIST", target, list(FILES), download, fetch)
        files = find()
    return files


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0x0000TTDD, D big-endian uint32 dims, data."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise ClassifierError(f"{path}: cannot read ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ClassifierError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise ClassifierError(f"{path}: IDX header says {dims} but holds {len(data) - header} data bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))

"""The four dataset sources, read straight from their official on-disk formats.

``load_dataset(spec)`` -> (DatasetInfo, {"train": Samples, "test": Samples, ...}) with the official
splits that exist. Small datasets (Fashion-MNIST, CIFAR-10) come back as in-memory uint8 arrays;
EuroSAT and image folders come back as file lists and are streamed.

Specs: ``fashion_mnist``, ``cifar10``, ``eurosat``, ``folder:PATH``.
"""
from __future__ import annotations

import gzip
import importlib
import os
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classifier._compat import import_torchvision
from classifier.data.images import BadImageError, image_size, is_image_file, load_image
from classifier.errors import ClassifierError, unknown_choice
from classifier.preprocess import LUMA, Preprocessing

DATASETS = ("fashion_mnist", "cifar10", "eurosat")
SPEC_CHOICES = (*DATASETS, "folder:PATH")
ARRAYS_PREFIX = "arrays:"  # a run trained on in-memory arrays (classifier.data.arrays) records this spec

# --- official sources --------------------------------------------------------------------------
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_FILES = {  # name -> MD5 of the official download
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_FILES = [*CIFAR_TRAIN, "test_batch", "batches.meta"]

# The original host (madm.dfki.de/files/sentinel/EuroSAT.zip) is gone; this is the same zip (same MD5)
# as mirrored by torchgeo, the URL torchvision uses.
EUROSAT_URL = ("https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
               "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip")
EUROSAT_MD5 = "c8fa014336c82ac7804f0398fcb19387"
EUROSAT_DIRS = ("2750", "EuroSAT_RGB")  # folder inside the zip: old release, Zenodo release
EUROSAT_CLASSES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
                   "Pasture", "PermanentCrop", "Residential", "River", "SeaLake"]

# Per-channel mean/std on the 0-1 scale over the training pixels (population std, not the mean of
# per-image stds). Fashion-MNIST computed from the official train set; CIFAR-10 and EuroSAT are the
# commonly published figures (EuroSAT: whole RGB set).
STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "eurosat": ((0.3444, 0.3803, 0.4078), (0.2027, 0.1369, 0.1155)),
}
_GRAY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


@dataclass
class DatasetInfo:
    name: str  # the canonical spec: load_dataset(info.name) loads it again
    classes: list[str]
    channels: int  # native: 1 gray, 3 RGB
    size: tuple[int, int]  # native (height, width); for folders the most common size
    mean: tuple[float, ...]  # per channel, 0-1 scale
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def preprocessing(self, size=None, channels: int | None = None) -> Preprocessing:
        """The Preprocessing for a model fed this dataset, at ``size``/``channels`` (default: native)."""
        channels = channels or self.channels
        mean, std = self.mean, self.std
        if channels != self.channels:
            if channels == 3:  # gray replicated to RGB
                mean, std = mean * 3, std * 3
            else:  # RGB to luma: the luma of the means, std approximated the same way
                mean = (sum(w * m for w, m in zip(LUMA, mean)),)
                std = (sum(w * s for w, s in zip(LUMA, std)),)
        return Preprocessing(size=tuple(size or self.size), channels=channels, mean=mean, std=std)

    def to_dict(self) -> dict:
        return {"name": self.name, "classes": list(self.classes), "channels": self.channels,
                "size": list(self.size), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetInfo":
        return cls(d["name"], list(d["classes"]), int(d["channels"]), tuple(d["size"]),
                   tuple(d["mean"]), tuple(d["std"]))


@dataclass(eq=False)
class Samples:
    """Labelled samples: in-memory ``images`` (N, H, W, C uint8) or image files ``paths``.

    ``source`` and ``index`` say where each sample sits in the official split it came from (what a
    split record stores); ``root`` is the folder file paths are recorded relative to.
    """

    labels: np.ndarray
    images: np.ndarray | None = None
    paths: list[str] | None = None
    root: str | None = None
    source: str = ""
    index: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if (self.images is None) == (self.paths is None):
            raise ValueError("Samples needs exactly one of images or paths")
        n = len(self.images) if self.images is not None else len(self.paths)
        if n != len(self.labels):
            raise ValueError(f"{n} samples but {len(self.labels)} labels")
        if self.images is not None and (self.images.dtype != np.uint8 or self.images.ndim != 4):
            raise ValueError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        self.index = np.arange(n, dtype=np.int64) if self.index is None else np.asarray(self.index, np.int64)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "Samples":
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return Samples(
            labels=self.labels[idx],
            images=self.images[idx] if self.images is not None else None,
            paths=[self.paths[i] for i in idx] if self.paths is not None else None,
            root=self.root, source=self.source, index=self.index[idx],
        )

    def relative_paths(self) -> list[str]:
        """File paths relative to ``root`` with forward slashes (what split records store)."""
        prefix = os.path.join(self.root, "")  # the listing joins root and name: cut the prefix (relpath: 15x slower)
        return [p[len(prefix):].replace(os.sep, "/") if p.startswith(prefix) and ".." not in p
                else Path(os.path.relpath(p, self.root)).as_posix() for p in self.paths]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'fashion-mnist' -> ('fashion_mnist', None); 'folder:x' -> ('folder', 'x')."""
    spec = str(spec).strip()
    if spec.lower().startswith("folder:"):
        path = spec.split(":", 1)[1]
        if not path:
            raise ClassifierError("dataset 'folder:' needs a path, e.g. folder:data/flowers")
        return "folder", path
    if spec.startswith(ARRAYS_PREFIX):
        raise arrays_needed(spec)
    name = spec.lower().replace("-", "_")
    if name not in DATASETS:
        raise unknown_choice("dataset", spec, SPEC_CHOICES)
    return name, None


def arrays_needed(spec: str) -> ClassifierError:
    """The error for a command that needs the data of an array run it was not given."""
    return ClassifierError(f"this run was trained on in-memory arrays ({spec}), which a run folder cannot point "
                           "at: pass the same arrays again (dataset=(images, labels) in the Python API)")


def load_dataset(spec: str, root: str | os.PathLike = "datasets", *, download: bool = True):
    """(DatasetInfo, {split: Samples}) for the official splits present ('train', 'test', maybe 'val')."""
    kind, path = parse_spec(spec)
    if kind == "folder":
        return load_folder(path)
    return {"fashion_mnist": _fashion_mnist, "cifar10": _cifar10, "eurosat": _eurosat}[kind](Path(root), download)


# --- downloads ---------------------------------------------------------------------------------
def _download(url: str, folder: Path, filename: str, md5: str, extract: bool) -> None:
    """Fetch (and unpack) one official file; any failure propagates to the caller's message."""
    import_torchvision()  # torchvision is imported only to download: it takes seconds on a CPU-only torch
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    folder.mkdir(parents=True, exist_ok=True)
    if extract:
        download_and_extract_archive(url, str(folder), filename=filename, md5=md5, remove_finished=True)
    else:
        download_url(url, str(folder), filename=filename, md5=md5)


def _fetch_or_explain(what: str, target: Path, files: list[str], download: bool, fetch) -> None:
    reason = "download disabled"
    if download:
        try:
            fetch()
            return
        except Exception as err:  # noqa: BLE001 - offline, proxy, bad checksum: all explained below
            reason = f"download failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    raise ClassifierError(f"{what} not found; put {', '.join(files)} in {target}/ ({reason})")


# --- Fashion-MNIST -----------------------------------------------------------------------------
def _fashion_dirs(root: Path) -> list[Path]:
    return [root / "fashion_mnist", root / "FashionMNIST" / "raw", Path(FASHION_SYSTEM_DIR)]


def _idx_path(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / name[: -len(".gz")]):  # torchvision also keeps them unpacked
        if candidate.is_file():
            return candidate
    return None


def fashion_mnist_files(root: str | os.PathLike = "datasets", download: bool = True) -> dict[str, Path]:
    """Official file name -> where it is (maybe unpacked): ROOT/fashion_mnist, ROOT/FashionMNIST/raw
    (torchvision's layout) or the Debian package's folder; downloaded to ROOT/fashion_mnist if missing."""
    root = Path(root)

    def find():
        for folder in _fashion_dirs(root):
            found = [_idx_path(folder, n) for n in FASHION_FILES]
            if all(found):
                return dict(zip(FASHION_FILES, found))
        return None

    files = find()
    if files is None:
        target = root / "fashion_mnist"

        def fetch():
            for name, md5 in FASHION_FILES.items():
                if not (target / name).is_file():
                    _download(FASHION_URL + name, target, name, md5, extract=False)

        _fetch_or_explain("Fashion-MNIST", target, list(FASHION_FILES), download, fetch)
        files = find()
    return files


def _fashion_mnist(root: Path, download: bool):
    files = fashion_mnist_files(root, download)
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(files[f"{prefix}-images-idx3-ubyte.gz"])
        labels = read_idx(files[f"{prefix}-labels-idx1-ubyte.gz"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ClassifierError(f"Fashion-MNIST {split} files disagree: images {images.shape}, labels {labels.shape}")
        _check_labels(labels, len(FASHION_CLASSES), f"Fashion-MNIST {split}")
        splits[split] = Samples(labels=labels, images=images[..., None], source=split)
    mean, std = STATS["fashion_mnist"]
    return DatasetInfo("fashion_mnist", list(FASHION_CLASSES), 1, (28, 28), mean, std), splits


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


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ClassifierError(f"{what}: labels outside 0..{num_classes - 1}")


# --- CIFAR-10 ----------------------------------------------------------------------------------
def _cifar10(root: Path, download: bool):
    def find():
        for folder in (root / "cifar10" / CIFAR_DIR, root / CIFAR_DIR):
            if all((folder / n).is_file() for n in CIFAR_FILES):
                return folder
        return None

    folder = find()
    if folder is None:
        target = root / "cifar10"
        _fetch_or_explain("CIFAR-10", target / CIFAR_DIR, CIFAR_FILES, download,
                          lambda: _download(CIFAR_URL, target, "cifar-10-python.tar.gz", CIFAR_MD5, extract=True))
        folder = find()
        if folder is None:
            raise ClassifierError(f"CIFAR-10 archive did not contain {', '.join(CIFAR_FILES)}")
    meta = read_cifar_pickle(folder / "batches.meta")
    names = meta.get(b"label_names")
    if not isinstance(names, list) or not names:
        raise ClassifierError(f"{folder / 'batches.meta'}: no label_names")
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    splits = {}
    for split, batch_files in (("train", CIFAR_TRAIN), ("test", ["test_batch"])):
        parts = [_cifar_batch(folder / n, len(classes)) for n in batch_files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        splits[split] = Samples(labels=labels, images=images, source=split)
    mean, std = STATS["cifar10"]
    return DatasetInfo("cifar10", classes, 3, (32, 32), mean, std), splits


def _cifar_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = read_cifar_pickle(path)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ClassifierError(f"{path}: b'data' is not a uint8 (N, 3072) array")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),):
        raise ClassifierError(f"{path}: {len(data)} images but {labels.size} labels")
    _check_labels(labels, num_classes, str(path))
    # rows are the R, G, B planes of a 32x32 image, each row-major
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; any other global is refused.

    A pickle can name any importable callable; allowing only array reconstruction makes a crafted
    file unable to run code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"): ("multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"): ("multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
        ("numpy", "ndarray"): None,
        ("numpy", "dtype"): None,
        ("_codecs", "encode"): None,  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if module == "numpy":
            return getattr(np, name)
        sub, attr = self._ALLOWED[(module, name)]
        try:
            mod = importlib.import_module(f"numpy._core.{sub}")
        except ImportError:  # numpy < 2
            mod = importlib.import_module(f"numpy.core.{sub}")
        return getattr(mod, attr)


def _latin1_encode(text, encoding="latin1"):
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing codec {encoding!r}")
    return text.encode("latin1")


def read_cifar_pickle(path: str | os.PathLike) -> dict:
    """One CIFAR python batch (a dict with bytes keys), read without executing anything."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as err:
        raise ClassifierError(f"{path}: not a CIFAR batch file ({err})") from None
    if not isinstance(obj, dict):
        raise ClassifierError(f"{path}: not a CIFAR batch file (no dict inside)")
    return obj


# --- EuroSAT -----------------------------------------------------------------------------------
def _eurosat(root: Path, download: bool):
    base = root / "eurosat"

    def find():
        for name in EUROSAT_DIRS:
            if (base / name).is_dir():
                return base / name
        return None

    folder = find()
    if folder is None:
        _fetch_or_explain("EuroSAT", base / "2750", ["<ClassName>/<ClassName>_<n>.jpg"], download,
                          lambda: _download(EUROSAT_URL, base, "EuroSAT.zip", EUROSAT_MD5, extract=True))
        folder = find()
        if folder is None:
            raise ClassifierError(f"EuroSAT archive did not unpack to {base}/2750")
    classes, samples = scan_class_folders(folder)
    if classes != EUROSAT_CLASSES:
        raise ClassifierError(f"{folder}: expected the EuroSAT classes {', '.join(EUROSAT_CLASSES)}, "
                              f"found {', '.join(classes)}")
    samples.source = "train"
    mean, std = STATS["eurosat"]
    return DatasetInfo("eurosat", classes, 3, (64, 64), mean, std), {"train": samples}


# --- image folders -----------------------------------------------------------------------------
_SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def load_folder(path: str | os.PathLike):
    """``PATH/{train,val,test}/<class>/...`` (val/test optional) or ``PATH/<class>/...``."""
    base = Path(path).expanduser()
    if not base.is_dir():
        raise ClassifierError(f"dataset folder '{path}' does not exist")
    if (base / "train").is_dir():
        classes, train = scan_class_folders(base / "train", root=base)
        splits = {"train": train}
        for split in ("val", "test"):
            folder = next((base / d for d in _SPLIT_DIRS[split] if (base / d).is_dir()), None)
            if folder is not None:
                splits[split] = scan_class_folders(folder, classes=classes, root=base)[1]
    else:
        classes, train = scan_class_folders(base)
        splits = {"train": train}
    for split, samples in splits.items():
        samples.source = split
    channels, size, mean, std = folder_stats(splits["train"].paths)
    return DatasetInfo(f"folder:{path}", classes, channels, size, mean, std), splits


def labelled_folder(folder: str, model_classes: list[str]) -> Samples:
    """A new folder's images labelled by class *name* for a model's classes: unknown classes get -1
    (predicted and listed, not counted in accuracy) and are named on the console, as are missing ones."""
    base = Path(folder)
    if not base.is_dir():
        raise ClassifierError(f"evaluation folder '{folder}' does not exist")
    dirs = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for d in dirs:
        files = image_files_under(d)
        label = model_classes.index(d.name) if d.name in model_classes else -1
        paths += files
        labels += [label] * len(files)
    names = [d.name for d in dirs]
    unknown = [n for n in names if n not in model_classes]
    missing = [c for c in model_classes if c not in names]
    if not paths:
        raise ClassifierError(f"no images in class sub-folders of '{folder}'")
    if len(unknown) == len(names):
        raise ClassifierError(f"'{folder}' shares no class with the model (folder: {', '.join(names[:8])}; "
                              f"model: {', '.join(model_classes[:8])})")
    if unknown:
        n = sum(1 for label in labels if label < 0)
        print(f"classes the model does not know (their {n} images are predicted and listed in predictions.csv, "
              f"not counted in accuracy): {', '.join(unknown)}")
    if missing:
        print(f"model classes with no folder here: {', '.join(missing)}")
    return Samples(labels=np.array(labels), paths=paths, root=str(base))


def scan_class_folders(folder: Path, classes: list[str] | None = None, root: Path | None = None):
    """(classes, Samples) for ``folder/<class>/**/<image>``; hidden entries and non-images ignored.

    With ``classes`` given (a val/test folder) every class found must be one of them; otherwise the
    classes are the sorted sub-folder names and at least two are required.
    """
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise ClassifierError(f"no class sub-folders in '{folder}' (expected {folder}/<class>/<image>)")
    if classes is None:
        if len(found) < 2:
            raise ClassifierError(f"'{folder}' has only one class folder ('{found[0]}'); at least 2 are needed")
        classes = found
    else:
        extra = [c for c in found if c not in classes]
        if extra:
            raise ClassifierError(f"class folder(s) {', '.join(extra)} in '{folder}' are not training classes")
    paths, labels = [], []
    for name in found:
        files = image_files_under(folder / name)
        if not files:
            raise ClassifierError(f"class folder '{folder / name}' has no images "
                                  f"(extensions: {', '.join(sorted(e[1:] for e in _EXT_HINT))})")
        paths += files
        labels += [classes.index(name)] * len(files)
    return classes, Samples(labels=np.array(labels, np.int64), paths=paths, root=str(root or folder))


_EXT_HINT = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".webp")


def image_files_under(folder: Path) -> list[str]:
    """The image files below ``folder`` (followed links included, hidden folders such as .ipynb_checkpoints
    skipped), sorted by folder, then name."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f)]
    return out


_STATS_CACHE: dict = {}


def folder_stats(paths: list[str], max_images: int = 256, seed: int = 0):
    """(channels, (H, W), mean, std) from a seeded sample of up to ``max_images`` training images.

    Channels is 1 only if every sampled image is stored as gray; the size is the most common one.
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

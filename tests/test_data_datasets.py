"""load_dataset on tiny files written in the real on-disk formats."""
import os
import pickle
import sys
import urllib.error

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from test_data_helpers import (CIFAR_NAMES, EUROSAT, code_images, write_cifar, write_eurosat,  # noqa: E402
                               write_fashion, write_idx)

from classifier.data import load_dataset  # noqa: E402
from classifier.data.samples import DatasetInfo  # noqa: E402
from classifier.data.sources import downloads  # noqa: E402
from classifier.data.sources import fashion_mnist as fm  # noqa: E402
from classifier.errors import ClassifierError  # noqa: E402


@pytest.fixture(autouse=True)
def no_system_fashion(monkeypatch, tmp_path):
    """Keep /usr/share/datasets out of the way: every test sees only what it wrote."""
    monkeypatch.setattr(fm, "SYSTEM_DIR", str(tmp_path / "no-system-copy"))


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("no network")


# --- Fashion-MNIST -----------------------------------------------------------------------------
def test_fashion_mnist_idx(tmp_path):
    written = write_fashion(tmp_path / "fashion_mnist")
    info, splits = load_dataset("fashion_mnist", tmp_path, download=False)
    assert info.classes[0] == "T-shirt/top" and info.channels == 1 and info.size == (28, 28)
    assert set(splits) == {"train", "test"}
    train = splits["train"]
    assert train.images.shape == (30, 28, 28, 1) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.images[..., 0], written["train"][0])
    np.testing.assert_array_equal(train.labels, written["train"][1])
    assert train.labels.dtype == np.int64 and len(splits["test"]) == 10


def test_fashion_mnist_torchvision_layout_unpacked(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    write_fashion(raw)
    for gz in raw.glob("*.gz"):  # torchvision keeps the unpacked files
        import gzip
        gz.with_suffix("").write_bytes(gzip.open(gz).read())
        gz.unlink()
    info, splits = load_dataset("fashion-mnist", tmp_path, download=False)
    assert len(splits["train"]) == 30


def test_fashion_mnist_system_copy(tmp_path, monkeypatch):
    write_fashion(tmp_path / "system")
    monkeypatch.setattr(fm, "SYSTEM_DIR", str(tmp_path / "system"))
    _, splits = load_dataset("fashion_mnist", tmp_path / "empty-root", download=False)
    assert len(splits["test"]) == 10


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="no system Fashion-MNIST")
def test_real_fashion_mnist_labels(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "SYSTEM_DIR", "/usr/share/datasets/fashion-mnist")
    info, splits = load_dataset("fashion_mnist", tmp_path, download=False)
    assert len(splits["train"]) == 60000 and len(splits["test"]) == 10000
    assert splits["train"].labels[:5].tolist() == [9, 0, 0, 3, 0]


def test_idx_bad_magic(tmp_path):
    folder = tmp_path / "fashion_mnist"
    write_fashion(folder)
    import gzip
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(ClassifierError, match="bad magic"):
        load_dataset("fashion_mnist", tmp_path, download=False)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))  # 7 labels, 30 images
    with pytest.raises(ClassifierError, match="disagree"):
        load_dataset("fashion_mnist", tmp_path, download=False)


def test_fashion_missing_offline_names_path(tmp_path, monkeypatch):
    with pytest.raises(ClassifierError) as info:
        load_dataset("fashion_mnist", tmp_path, download=False)
    msg = str(info.value)
    assert str(tmp_path / "fashion_mnist") in msg and "train-images-idx3-ubyte.gz" in msg and "\n" not in msg
    monkeypatch.setattr(downloads, "download_file", _no_network)
    with pytest.raises(ClassifierError, match="download failed.*no network"):
        load_dataset("fashion_mnist", tmp_path, download=True)


def test_fashion_download_goes_to_root(tmp_path, monkeypatch):
    def fake_download(url, folder, filename, md5, extract):
        assert url.startswith(fm.URL) and md5 == fm.FILES[filename] and not extract
        source = tmp_path / "pretend-server"
        if not source.exists():
            write_fashion(source)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / filename).write_bytes((source / filename).read_bytes())

    monkeypatch.setattr(downloads, "download_file", fake_download)
    _, splits = load_dataset("fashion_mnist", tmp_path / "root")
    assert (tmp_path / "root" / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz").is_file()
    assert len(splits["train"]) == 30


# --- CIFAR-10 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_pickles(tmp_path, protocol):
    written = write_cifar(tmp_path / "cifar10" / "cifar-10-batches-py", protocol=protocol)
    info, splits = load_dataset("cifar10", tmp_path, download=False)
    assert info.classes == CIFAR_NAMES and info.channels == 3 and info.size == (32, 32)
    train, test = splits["train"], splits["test"]
    assert train.images.shape == (30, 32, 32, 3) and len(test) == 8
    data, labels = written["data_batch_2"]
    img = train.images[6 + 1]  # second sample of the second batch
    # a row holds the R plane, then G, then B, each 32x32 row-major
    assert img[3, 5, 0] == data[1, 3 * 32 + 5] and img[3, 5, 2] == data[1, 2048 + 3 * 32 + 5]
    assert train.labels[7] == labels[1]
    np.testing.assert_array_equal(test.labels, written["test_batch"][1])


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_cifar(folder)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ClassifierError, match="refusing"):
        load_dataset("cifar10", tmp_path, download=False)
    assert not marker.exists()


def test_cifar_missing_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "download_file", _no_network)
    with pytest.raises(ClassifierError) as info:
        load_dataset("cifar10", tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "cifar10" / "cifar-10-batches-py") in msg and "data_batch_1" in msg
    assert "download failed" in msg


# --- EuroSAT -----------------------------------------------------------------------------------
def test_eurosat_folder(tmp_path):
    write_eurosat(tmp_path / "eurosat" / "2750")
    info, splits = load_dataset("eurosat", tmp_path, download=False)
    assert info.classes == EUROSAT and info.size == (64, 64) and info.channels == 3
    assert set(splits) == {"train"}
    train = splits["train"]
    assert train.paths is not None and len(train) == 30 and not train.in_memory
    assert train.relative_paths()[3] == "Forest/Forest_1.jpg" and train.labels[3] == 1


def test_eurosat_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "download_file", _no_network)
    with pytest.raises(ClassifierError, match=str(tmp_path / "eurosat" / "2750")):
        load_dataset("eurosat", tmp_path)


# --- image folders -----------------------------------------------------------------------------
def _folder(path, classes, n=2, size=(10, 12), mode="RGB", value=100):
    for c in classes:
        (path / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new(mode, size[::-1], value if mode == "L" else (value,) * 3).save(path / c / f"{i}.png")


def test_folder_with_train_val_test(tmp_path):
    _folder(tmp_path / "train", ["cat", "dog"], n=3)
    _folder(tmp_path / "val", ["cat", "dog"], n=1)
    _folder(tmp_path / "test", ["dog"], n=2)
    info, splits = load_dataset(f"folder:{tmp_path}")
    assert info.classes == ["cat", "dog"] and info.name == f"folder:{tmp_path}"
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "val": 2, "test": 2}
    assert splits["test"].labels.tolist() == [1, 1]
    assert splits["test"].relative_paths()[0] == "test/dog/0.png"
    assert info.size == (10, 12) and info.channels == 3


def test_single_folder_ignores_hidden_and_non_images(tmp_path):
    _folder(tmp_path, ["a", "b", "c"], n=2, mode="L", value=51)
    (tmp_path / "a" / ".hidden.png").write_bytes(b"junk")
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "b" / "nested").mkdir()
    Image.new("L", (12, 10), 51).save(tmp_path / "b" / "nested" / "deep.png")
    info, splits = load_dataset(f"folder:{tmp_path}")
    assert info.classes == ["a", "b", "c"] and set(splits) == {"train"}
    assert len(splits["train"]) == 7
    assert info.channels == 1
    assert info.mean == pytest.approx((0.2,), abs=1e-4) and info.std == (1.0,)  # constant -> std 1


def test_folder_stats_values(tmp_path):
    images = code_images([0, 1, 2, 3], size=(6, 6), channels=3)
    for i, img in enumerate(images):
        (tmp_path / f"c{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(img).save(tmp_path / f"c{i % 2}" / f"{i}.png")
    info, _ = load_dataset(f"folder:{tmp_path}")
    values = np.array([10, 30, 50, 70]) / 255
    assert info.mean == pytest.approx((values.mean(),) * 3, abs=1e-4)
    assert info.std == pytest.approx((values.std(),) * 3, abs=1e-4)


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("empty", "no class sub-folders"),
    ("one_class", "only one class"),
    ("empty_class", "has no images"),
    ("unknown_test_class", "not training classes"),
])
def test_folder_errors(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "one_class":
        _folder(root, ["only"])
    if layout == "empty_class":
        _folder(root, ["a", "b"])
        (root / "c").mkdir()
        (root / "c" / "readme.txt").write_text("no images")
    if layout == "unknown_test_class":
        _folder(root / "train", ["a", "b"])
        _folder(root / "test", ["a", "zebra"])
    with pytest.raises(ClassifierError, match=message) as info:
        load_dataset(f"folder:{root}")
    assert "\n" not in str(info.value)


def test_unknown_spec():
    with pytest.raises(ClassifierError, match="did you mean cifar10"):
        load_dataset("cifar-11")
    with pytest.raises(ClassifierError, match="needs a path"):
        load_dataset("folder:")


def test_preprocessing_from_info():
    info = DatasetInfo("x", ["a", "b"], 1, (28, 28), (0.5,), (0.25,))
    prep = info.preprocessing(size=(32, 32), channels=3)
    assert prep.size == (32, 32) and prep.mean == (0.5,) * 3 and prep.std == (0.25,) * 3
    assert DatasetInfo.from_dict(info.to_dict()) == info

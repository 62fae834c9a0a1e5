"""build_loader: both paths agree, augmentation keeps labels aligned, order is seeded and resumable."""
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
from test_data_helpers import code_images, index_images, write_image_folder  # noqa: E402

from classifier.data import (PRESETS, InMemoryLoader, Samples, StreamingLoader, augment_batch,  # noqa: E402
                             build_loader, load_dataset)
from classifier.data import loaders  # noqa: E402
from classifier.errors import ClassifierError  # noqa: E402
from classifier.preprocess import Preprocessing  # noqa: E402

RAW3 = Preprocessing(size=(8, 8), channels=3, mean=(0.0,) * 3, std=(1 / 255,) * 3)  # x == pixel value
RAW1_16 = Preprocessing(size=(16, 16), channels=1, mean=(0.0,), std=(1 / 255,))
RAW3_16 = Preprocessing(size=(16, 16), channels=3, mean=(0.0,) * 3, std=(1 / 255,) * 3)


def _arrays(n=20, channels=3, size=(8, 8)):
    labels = np.arange(n) % 4
    return Samples(labels=labels, images=index_images(n, size=size, channels=channels))


def _collect(loader, start=0):
    xs, ys = zip(*loader.iter_from(start)) if len(loader) > start else ((), ())
    return [x.clone() for x in xs], [y.clone() for y in ys]


def _files_like(tmp_path, arrays: Samples) -> Samples:
    """The same images written as PNGs, as file Samples in the same order."""
    paths = write_image_folder(tmp_path / "imgs", arrays.images, arrays.labels)
    return Samples(labels=arrays.labels, paths=[str(p) for p in paths], root=str(tmp_path / "imgs"))


@pytest.mark.parametrize("size", [(8, 8), (12, 6)])
def test_fast_and_streaming_paths_agree(tmp_path, size):
    arrays = _arrays(13)
    files = _files_like(tmp_path, arrays)
    prep = Preprocessing(size=size, channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    fast = build_loader(arrays, prep, train=False, batch_size=4)
    slow = build_loader(files, prep, train=False, batch_size=4, workers=0, cache=False)
    assert isinstance(fast, InMemoryLoader) and isinstance(slow, StreamingLoader)
    assert len(fast) == len(slow) == 4
    for (xa, ya), (xb, yb) in zip(fast, slow):
        assert xa.dtype == torch.float32 and xa.shape[1:] == (3, *size) and ya.dtype == torch.int64
        torch.testing.assert_close(xa, xb, rtol=0, atol=1e-6)
        assert torch.equal(ya, yb)


def test_gray_dataset_for_rgb_model(tmp_path):
    arrays = _arrays(6, channels=1)
    files = _files_like(tmp_path, arrays)
    fast = list(build_loader(arrays, RAW3, train=False, batch_size=6))
    slow = list(build_loader(files, RAW3, train=False, batch_size=6, workers=0, cache=False))
    assert fast[0][0].shape == (6, 3, 8, 8)
    torch.testing.assert_close(fast[0][0], slow[0][0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("preset", ["light", "strong", "light-noflip", "flip-cutout"])
def test_batched_augmentation_keeps_labels_aligned(preset):
    labels = np.arange(64) % 10
    samples = Samples(labels=labels, images=code_images(labels, size=(16, 16)))
    loader = build_loader(samples, RAW1_16, train=True, batch_size=16, augment=preset, seed=1)
    for x, y in loader:
        code = (20 * y + 10).float()[:, None, None, None]
        assert torch.all((x == code) | (x == 0))  # reflect padding keeps the value; cutout is 0
        assert torch.equal(x.amax(dim=(1, 2, 3)), code.flatten())


def test_batched_augmentation_moves_pixels():
    images = np.zeros((400, 16, 16, 1), np.uint8)
    images[:, 4, 5] = 255  # one bright pixel at row 4, column 5
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    out = augment_batch(x, PRESETS["light"], seed=0, epoch=0, indices=np.arange(400))
    rows, cols = [], []
    for img in out[:, 0]:
        r, c = (img == 255).nonzero()[0].tolist()  # reflect padding can add a mirror copy; take the first
        rows.append(r)
        cols.append(c)
    rows, cols = np.array(rows), np.array(cols)
    assert set(rows) == set(range(4 - 2, 4 + 3))  # shifts of up to 16 // 8 = 2 pixels
    flipped = cols >= 8  # unflipped: 5 +- 2; flipped: 15 - (5 +- 2)
    assert 0.35 < flipped.mean() < 0.65
    assert set(cols[~flipped]) == set(range(3, 8)) and set(cols[flipped]) == set(range(15 - 7, 15 - 2))
    again = augment_batch(x, PRESETS["light"], seed=0, epoch=0, indices=np.arange(400))
    assert torch.equal(out, again)
    assert not torch.equal(out, augment_batch(x, PRESETS["light"], seed=0, epoch=1, indices=np.arange(400)))


def test_streaming_preset_keeps_labels_aligned(tmp_path):
    labels = np.arange(12) % 3
    samples = Samples(labels=labels, images=code_images(labels, size=(16, 16), channels=3))
    files = _files_like(tmp_path, samples)
    loader = build_loader(files, RAW3_16, train=True, batch_size=5, augment="strong", workers=0, seed=2, cache=False)
    seen = 0
    for x, y in loader:
        code = (20 * y + 10).float()[:, None, None, None]
        assert torch.all((x == code) | (x == 0)) and torch.equal(x.amax(dim=(1, 2, 3)), code.flatten())
        assert (x == 0).any(dim=(1, 2, 3)).all()  # cutout happened in every image
        seen += len(y)
    assert seen == 10  # drop_last for training: 12 samples -> 2 full batches of 5


@pytest.mark.parametrize("path", ["fast", "streaming"])
def test_deterministic_and_resumable(tmp_path, path):
    arrays = _arrays(23)
    samples = arrays if path == "fast" else _files_like(tmp_path, arrays)
    kw = dict(train=True, batch_size=4, augment="strong", seed=7, workers=0, cache=False)
    a, b = build_loader(samples, RAW3, **kw), build_loader(samples, RAW3, **kw)
    a.set_epoch(3)
    b.set_epoch(3)
    xa, ya = _collect(a)
    xb, yb = _collect(b)
    assert len(xa) == len(a) == 5  # 23 // 4, last partial batch dropped
    assert all(torch.equal(p, q) for p, q in zip(xa, xb)) and all(torch.equal(p, q) for p, q in zip(ya, yb))
    xt, yt = _collect(b, start=2)
    assert len(xt) == 3 and all(torch.equal(p, q) for p, q in zip(xa[2:], xt))
    assert all(torch.equal(p, q) for p, q in zip(ya[2:], yt))
    b.set_epoch(4)
    assert not torch.equal(torch.cat(_collect(b)[1]), torch.cat(ya))  # a new epoch, a new order


def test_streaming_workers_match_main_process(tmp_path):
    files = _files_like(tmp_path, _arrays(10))
    kw = dict(train=True, batch_size=3, augment="light", seed=0, cache=False)
    x0, y0 = _collect(build_loader(files, RAW3, workers=0, **kw))
    x2, y2 = _collect(build_loader(files, RAW3, workers=2, **kw))
    assert all(torch.equal(p, q) for p, q in zip(x0, x2)) and all(torch.equal(p, q) for p, q in zip(y0, y2))


@pytest.mark.parametrize("train, n", [(True, 20), (False, 21)])
def test_two_ranks_cover_every_sample_once(train, n):
    samples = _arrays(n)
    seen = []
    lengths = []
    for rank in range(2):
        loader = build_loader(samples, RAW3, train=train, batch_size=3, seed=4, rank=rank, world_size=2,
                              drop_last=False)
        loader.set_epoch(1)
        lengths.append(len(loader))
        for x, _ in loader:
            seen += x[:, 0, 0, 0].long().tolist()  # pixel [0, 0, 0] holds the sample index
    assert sorted(seen) == list(range(n))
    if train:
        assert lengths[0] == lengths[1]


def test_train_padding_like_distributed_sampler():
    loader0 = build_loader(_arrays(5), RAW3, train=True, batch_size=2, rank=0, world_size=2)
    loader1 = build_loader(_arrays(5), RAW3, train=True, batch_size=2, rank=1, world_size=2)
    both = np.concatenate([loader0.indices(), loader1.indices()])
    assert len(loader0.indices()) == len(loader1.indices()) == 3
    assert set(both) == set(range(5)) and len(both) == 6  # one sample repeated to even the ranks


def test_bad_files_are_skipped(tmp_path):
    files = _files_like(tmp_path, _arrays(6))
    bad = []
    (tmp_path / "imgs" / "class0" / "empty.png").write_bytes(b"")
    (tmp_path / "imgs" / "class1" / "text.jpg").write_text("not an image")
    Image.new("RGB", (8, 8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "imgs" / "class2" / "cut.jpg").write_bytes(data[: len(data) // 2])
    bad = [str(tmp_path / "imgs" / p) for p in ("class0/empty.png", "class1/text.jpg", "class2/cut.jpg")]
    samples = Samples(labels=np.concatenate([files.labels, [0, 1, 2]]), paths=files.paths + bad)
    for workers in (0, 2):
        loader = build_loader(samples, RAW3, train=False, batch_size=4, workers=workers, cache=False)
        got = torch.cat([y for _, y in loader])
        assert got.tolist() == files.labels.tolist()
        assert sorted(loader.skipped) == sorted(bad)


def test_small_file_dataset_decoded_once_into_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_CACHE", str(tmp_path / "cache"))
    arrays = _arrays(9)
    files = _files_like(tmp_path, arrays)
    (tmp_path / "imgs" / "class0" / "empty.png").write_bytes(b"")
    samples = Samples(labels=np.append(files.labels, 0), paths=files.paths + [str(tmp_path / "imgs/class0/empty.png")])
    fast = build_loader(samples, RAW3, train=False, batch_size=4)
    assert isinstance(fast, InMemoryLoader) and fast.skipped == [samples.paths[-1]]
    x, y = map(torch.cat, zip(*fast))
    assert torch.equal(x, torch.from_numpy(arrays.images).permute(0, 3, 1, 2).float())
    assert torch.equal(y, torch.from_numpy(arrays.labels))
    assert not list((tmp_path / "cache").rglob("*.npz"))  # a quick decode is not worth a file

    monkeypatch.setattr(loaders, "DISK_CACHE_AFTER_SECONDS", -1.0)
    build_loader(samples, RAW3, train=False, batch_size=4)
    assert len(list((tmp_path / "cache" / "decoded").glob("*.npz"))) == 1
    monkeypatch.setattr(loaders, "_decode_all", lambda *a: pytest.fail("decoded again despite the cache"))
    again = build_loader(samples, RAW3, train=False, batch_size=4)
    assert torch.equal(torch.cat([x for x, _ in again]), x)


def test_mixed_sizes_or_too_large_stream(tmp_path, monkeypatch):
    files = _files_like(tmp_path, _arrays(6))
    Image.new("RGB", (5, 7)).save(files.paths[3])
    assert isinstance(build_loader(files, RAW3, train=False, batch_size=4, workers=0), StreamingLoader)
    monkeypatch.setattr(loaders, "MEMORY_CACHE_BYTES", 100)
    files = _files_like(tmp_path / "other", _arrays(6))
    assert isinstance(build_loader(files, RAW3, train=False, batch_size=4, workers=0), StreamingLoader)


def test_folder_dataset_end_to_end(tmp_path):
    labels = np.arange(12) % 2
    write_image_folder(tmp_path / "data", index_images(12, size=(10, 10)), labels)
    info, splits = load_dataset(f"folder:{tmp_path / 'data'}")
    loader = build_loader(splits["train"], info.preprocessing(size=(8, 8)), train=True, batch_size=4, workers=0,
                          augment="light")
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 8, 8) and abs(float(x.mean())) < 1.5


def test_custom_pipeline_forces_streaming():
    arrays = _arrays(4)
    loader = build_loader(arrays, RAW3, train=False, batch_size=4, workers=0,
                          augment=[{"name": "HorizontalFlip", "p": 1.0}])
    assert isinstance(loader, StreamingLoader)
    x, _ = next(iter(loader))
    expected = torch.from_numpy(arrays.images).permute(0, 3, 1, 2).flip(-1).float()
    assert torch.equal(x, expected)


def test_invalid_augment_is_one_line_error():
    with pytest.raises(ClassifierError, match="unknown augment preset 'heavy'"):
        build_loader(_arrays(4), RAW3, train=True, batch_size=2, augment="heavy")
    with pytest.raises(ClassifierError, match=r"augment\[1\].*Affine"):
        build_loader(_arrays(4), RAW3, train=True, batch_size=2,
                     augment=[{"name": "HorizontalFlip"}, {"name": "Affine", "translate_percent": "far"}])
    with pytest.raises(ClassifierError, match="not valid"):
        build_loader(_arrays(4), RAW3, train=True, batch_size=2, augment=[{"name": "HorizontalFlip", "prob": 1}])
    with pytest.raises(ClassifierError, match="uint8"):
        build_loader(_arrays(4), RAW3, train=True, batch_size=2, augment=[{"name": "ToFloat"}])


def test_lengths_and_drop_last():
    s = _arrays(10)
    assert len(build_loader(s, RAW3, train=True, batch_size=4)) == 2
    assert len(build_loader(s, RAW3, train=False, batch_size=4)) == 3
    assert len(build_loader(s, RAW3, train=True, batch_size=32)) == 1  # too few for one batch: keep it
    with pytest.raises(ClassifierError, match="rank"):
        build_loader(s, RAW3, train=True, batch_size=4, rank=2, world_size=2)

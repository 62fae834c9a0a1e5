"""Near-duplicates and outliers in the data check (classifier/data/duplicates.py, data/check.py)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

import classifier
from classifier.data.duplicates import near_duplicate_pairs, thumbnail, thumbnails

KINDS = {"across": lambda y, x: x, "down": lambda y, x: y, "diagonal": lambda y, x: (x + y) / 2}


def gradient(kind: str, rng, side: int = 32) -> np.ndarray:
    """A class-like picture: a gradient of one direction with its own offset, contrast and noise."""
    y, x = np.mgrid[0:side, 0:side] / (side - 1)
    ramp = KINDS[kind](y, x)
    ramp = (ramp + rng.uniform(-0.3, 0.3)) * rng.uniform(120, 220) + rng.uniform(0, 40)
    rgb = ramp[..., None] + rng.normal(0, 25, (side, side, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def write_split(root, split: str, per_class: int, rng) -> dict:
    written = {}
    for kind in KINDS:
        (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            name = f"{split}/{kind}/{kind}{i}.png"
            written[name] = gradient(kind, rng)
            Image.fromarray(written[name]).save(root / name)
    return written


def test_planted_near_duplicates_and_outliers_are_found_and_distinct_images_not_paired(tmp_path, capsys):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    write_split(root, "train", 30, rng)
    test = write_split(root, "test", 8, rng)
    # a resized JPEG copy of a test image and a slightly cropped, resized one, planted in train
    Image.fromarray(test["test/down/down3.png"]).resize((64, 64), Image.BICUBIC).save(
        root / "train/down/copy.jpg", quality=85)
    Image.fromarray(test["test/across/across5.png"]).crop((1, 1, 31, 31)).resize((48, 48), Image.BICUBIC).save(
        root / "train/across/cropped.jpg", quality=90)
    Image.fromarray(test["test/diagonal/diagonal0.png"]).save(root / "train/diagonal/exact.png")  # exact copy
    board = (np.indices((32, 32)).sum(0) // 4 % 2 * 255).astype(np.uint8)  # nothing like the classes
    Image.fromarray(board).save(root / "train/across/checkerboard.png")
    before = sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*"))

    report = classifier.check_data(f"folder:{root}", output=tmp_path / "check.json", test_fraction=0, val_fraction=0)
    pairs = {frozenset((p["a"]["file"], p["b"]["file"])) for p in report["near_duplicates"]}
    assert pairs == {frozenset(("train/down/copy.jpg", "test/down/down3.png")),
                     frozenset(("train/across/cropped.jpg", "test/across/across5.png"))}
    assert report["near_duplicates_across_splits"] == 2
    assert [g for g in report["duplicates"] if len(g) > 1]  # the exact copy keeps its own report
    assert [o["file"] for o in report["outliers"]] == ["train/across/checkerboard.png"]
    saved = json.loads((tmp_path / "check.json").read_text())
    assert saved["near_duplicates"] == report["near_duplicates"]
    assert (tmp_path / "check_near_duplicates.png").is_file()
    out = capsys.readouterr().out
    assert "near-duplicate images in two splits (2)" in out and "train/down/copy.jpg" in out
    assert "checkerboard.png" in out
    assert sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*")) == before  # nothing changed


def test_in_memory_thumbnails_match_file_thumbnails_and_flat_images_are_not_paired():
    rng = np.random.default_rng(1)
    images = np.stack([gradient(k, rng) for k in ("across", "down", "diagonal")])
    assert np.abs(thumbnails(images).astype(int) - np.stack([thumbnail(im) for im in images])).max() <= 2
    flat = np.full((2, 32, 32), 128, np.uint8)  # two blank images of different sizes say nothing alike
    assert near_duplicate_pairs(flat, np.array(["a", "b"])) == []
    many = thumbnails(np.stack([gradient("across", rng) for _ in range(40)]))
    assert near_duplicate_pairs(many, np.array([str(i) for i in range(40)])) == []


def smooth(rng, side: int = 32) -> np.ndarray:
    """A random picture with detail at every scale down to a few pixels (uint8, side x side)."""
    coarse = rng.uniform(0, 255, (8, 8)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((side, side), Image.BICUBIC).convert("L"), dtype=np.uint8)


def test_a_copy_further_than_a_crowd_of_look_alikes_is_paired_and_the_crowd_is_not():
    from classifier.data import duplicates as dup

    rng = np.random.default_rng(3)
    base = smooth(rng).astype(np.float32)
    # a crowd of different photos of one plain object: each the base with its own faint pattern
    crowd = [np.clip(base + 0.05 * (smooth(rng).astype(np.float32) - 128), 0, 255).astype(np.uint8) for _ in range(8)]
    others = [smooth(rng) for _ in range(30)]
    original = smooth(rng)
    copy = np.asarray(Image.fromarray(original).crop((2, 2, 30, 30)).resize((32, 32), Image.BICUBIC))
    copy = np.clip(copy.astype(np.float32) + rng.normal(0, 12, copy.shape), 0, 255).astype(np.uint8)
    thumbs = np.stack([thumbnail(im) for im in crowd + others + [original, copy]])
    pairs = near_duplicate_pairs(thumbs, np.array([str(i) for i in range(len(thumbs))]))
    n = len(thumbs)
    plain = dup.descriptors(thumbs, 0.0)
    crowd_distance = float((1 - plain[:8] @ plain[:8].T)[np.triu_indices(8, 1)].min())
    copy_distance = {(a, b): d for a, b, d in pairs}.get((n - 2, n - 1))
    assert copy_distance is not None and copy_distance > dup.SURE  # the copy is found ...
    assert dup.SURE < crowd_distance < copy_distance  # ... though look-alikes in the crowd are closer
    assert [(a, b) for a, b, _ in pairs] == [(n - 2, n - 1)]  # and no crowd pair is reported


FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="no system Fashion-MNIST")
def test_the_coarse_first_pass_for_large_sets_finds_what_comparing_every_pair_finds(monkeypatch):
    import gzip
    import io

    from classifier.data import duplicates as dup

    with gzip.open(f"{FASHION}/train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:3000]
    rng = np.random.default_rng(0)
    originals = rng.choice(len(images), 40, replace=False)
    copies = []
    for k in originals:  # resized x1.5-3, half of them cropped by 1-2 pixels first, saved as JPEG
        im = Image.fromarray(images[k])
        if rng.random() < 0.5:
            c = int(rng.integers(1, 3))
            im = im.crop((c, c, 28 - c, 28 - c))
        buf = io.BytesIO()
        side = int(28 * rng.uniform(1.5, 3))
        im.resize((side, side), Image.BICUBIC).save(buf, "JPEG", quality=int(rng.integers(75, 96)))
        copies.append(thumbnail(np.asarray(Image.open(buf))))
    thumbs = np.concatenate([thumbnails(images[..., None].copy()), np.stack(copies)])
    digests = np.array([str(i) for i in range(len(thumbs))])
    every_pair = near_duplicate_pairs(thumbs, digests)
    monkeypatch.setattr(dup, "EXACT_MAX", 100)  # the large-set search on the same images
    coarse_first = near_duplicate_pairs(thumbs, digests)
    assert [(a, b) for a, b, _ in coarse_first] == [(a, b) for a, b, _ in every_pair]
    assert np.allclose([d for *_, d in coarse_first], [d for *_, d in every_pair], atol=1e-5)
    found = {(a, b) for a, b, _ in coarse_first}
    assert all((k, 3000 + i) in found for i, k in enumerate(originals))  # every planted copy


def test_a_training_run_searches_near_duplicates_up_to_its_own_limit(tmp_path, monkeypatch, capsys):
    from classifier.engine import build

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    write_split(root, "train", 8, rng)
    monkeypatch.setattr(build, "TRAINING_START_MAX", 10)
    run = classifier.train(dataset=f"folder:{root}", model="lenet5", epochs=1, batch_size=8, progress=False,
                           plots=False, tensorboard=False, workers=0, amp="off", eval_test=False,
                           project=str(tmp_path / "runs"))
    note = json.loads((run.dir / "data_check.json").read_text())["near_duplicates_note"]
    assert note.startswith("not searched: 24 images, more than 10 at a training run's start")
    assert "train.py --check-data searches up to 200,000" in capsys.readouterr().out
    report = classifier.check_data(dataset=f"folder:{root}")  # asked for: searched
    assert "near_duplicates_note" not in report and "near_duplicates" in report

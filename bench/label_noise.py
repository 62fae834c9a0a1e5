#!/usr/bin/env python
"""How well are mislabelled images and planted near-duplicates found, on real Fashion-MNIST images?

    python bench/label_noise.py                       # both parts, 2,000 images, 10% noise
    python bench/label_noise.py --part labels --model lenet5 --epochs 15
    python bench/label_noise.py --part duplicates
    python bench/label_noise.py --part methods        # how the near-duplicate descriptor was chosen
    python bench/label_noise.py --part multilabel     # wrong label sets in a multi-label CSV

labels: 2,000 training images of Fashion-MNIST (200 per class, seeded) written as PNGs into class folders
of a temporary folder, 10% of them (uniformly chosen) written into a wrong class folder instead (a wrong
class drawn uniformly). ``classifier.find_label_issues`` (5 folds, every image in train+val) flags files;
precision and recall against the planted ones, and the wall time. Next to it, the plain reference of the
issue: logistic regression on the pixels, 5-fold out-of-fold probabilities, the same cleanlab call.

duplicates: the same 2,000 images as train, 500 other images as test; 20 test images planted in train as
resized (x1.5-x3) JPEG copies (quality 75-95), half of them also cropped by 1-2 pixels. The data check's
near-duplicate finder (classifier/data/duplicates.py) on it: planted copies found, and the other pairs it
reports (false pairs: Fashion-MNIST holds some real near-duplicates too, which are listed by name).

methods: 2,500 training images and 200 copies of them made as above; for a 64-bit perceptual hash (DCT of a
32x32 thumbnail, Hamming distance), the thumbnail descriptor without zooms, and the one the check uses
(data/duplicates.py), how many copies fall within a distance and how many distinct pairs do.

multilabel: 2,000 56x56 grids of real Fashion-MNIST items (bench/multilabel.py's: 2x2 cells, each filled with
probability 0.6, labelled with the classes shown), written as PNGs with a CSV label file; on 10% of them
(uniformly chosen) one class drawn uniformly is toggled: added when absent (most often), dropped when
present. ``classifier.find_label_issues`` (5 folds) flags files; precision and recall, the time, and
cleanlab's own multi-label rule on the same out-of-fold probabilities. Reference: one-vs-rest logistic
regression on the pixels (5-fold out-of-fold), then the same rules.

Every file is written in a temporary folder; nothing else is touched. Times depend on the machine's load:
say whether it was busy.
"""
from __future__ import annotations

import argparse
import gzip
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # multilabel.py's grids

import classifier  # noqa: E402
from classifier.label_issues import FILTERS, multilabel_background_count, rank_label_issues  # noqa: E402
from classifier.tasks import TASKS  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]


def read_idx(name: str) -> np.ndarray:
    with gzip.open(FMNIST / name) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion(n_per_class: int, seed: int, exclude=()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, positions in the official train split): n_per_class per class, seeded."""
    images, labels = read_idx("train-images-idx3-ubyte.gz"), read_idx("train-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    taken = set(exclude)
    pick = np.concatenate([rng.permutation([i for i in np.flatnonzero(labels == c) if i not in taken])[:n_per_class]
                           for c in range(10)])
    return images[pick], labels[pick].astype(np.int64), pick


def write_noisy_folder(folder: Path, images, labels, noise: float, seed: int) -> set[str]:
    """Class folders of PNGs, ``noise`` of them in a wrong class folder; returns the planted files."""
    rng = np.random.default_rng(seed + 1)
    wrong = set(rng.choice(len(labels), int(round(noise * len(labels))), replace=False).tolist())
    planted = set()
    for i, (image, label) in enumerate(zip(images, labels)):
        given = label
        if i in wrong:
            given = (label + rng.integers(1, 10)) % 10  # uniformly one of the other classes
        (folder / CLASSES[given]).mkdir(parents=True, exist_ok=True)
        name = f"{CLASSES[given]}/img{i:05d}.png"
        Image.fromarray(image).save(folder / name)
        if i in wrong:
            planted.add(name)
    return planted


def scores(flagged: set, planted: set) -> tuple[float, float]:
    hits = len(flagged & planted)
    return hits / max(len(flagged), 1), hits / max(len(planted), 1)


def labels_part(args, work: Path) -> None:
    images, labels, _ = fashion(args.images // 10, args.seed)
    data = work / "noisy"
    planted = write_noisy_folder(data, images, labels, args.noise, args.seed)
    print(f"{len(labels)} Fashion-MNIST images, {len(planted)} in a wrong class folder ({data})")

    given = np.array([CLASSES.index(f.split("/")[0]) for f in sorted(_files(data))])
    settings = {"batch_size": args.batch_size, "lr": args.lr, **({"augment": args.augment} if args.augment else {})}
    find_issues(args, work, f"folder:{data}", settings, planted)

    start = time.perf_counter()
    pixels = np.stack([np.asarray(Image.open(data / f)) for f in sorted(_files(data))]).reshape(len(given), -1) / 255.0
    probs = _logistic_oof(pixels, given, args.seed)
    seconds = time.perf_counter() - start
    files = sorted(_files(data))
    for rule in ("prune_by_noise_rate", args.filter_by or FILTERS[0]):
        flagged_idx, _ = rank_label_issues(given, probs, rule)
        p_ref, r_ref = scores({files[i] for i in flagged_idx}, planted)
        print(f"reference (logistic regression on pixels + cleanlab, 5 folds, rule {rule}): flagged "
              f"{len(flagged_idx)}, precision {p_ref:.2f}, recall {r_ref:.2f}, {seconds:.0f} s")


def write_noisy_grids(folder: Path, n: int, noise: float, seed: int) -> tuple[Path, set[str], np.ndarray]:
    """``n`` grids of real Fashion-MNIST items (bench/multilabel.py's ``grid_set``) as PNGs and labels.csv,
    ``noise`` of them with one class toggled; returns (the CSV, the planted files, the given label matrix)."""
    from multilabel import grid_set  # bench/multilabel.py

    images, given = grid_set(read_idx("train-images-idx3-ubyte.gz"), read_idx("train-labels-idx1-ubyte.gz"), n, seed)
    rng = np.random.default_rng(seed + 1)
    wrong = rng.choice(n, int(round(noise * n)), replace=False)
    given[wrong, rng.integers(0, 10, len(wrong))] ^= 1  # added when absent, dropped when present
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, image in enumerate(images):
        Image.fromarray(image[..., 0]).save(folder / f"img/{i:05d}.png")
        rows.append(f"img/{i:05d}.png,{' '.join(CLASSES[c] for c in np.flatnonzero(given[i]))}")
    (folder / "labels.csv").write_text("filename,labels\n" + "\n".join(rows) + "\n")
    return folder / "labels.csv", {f"img/{i:05d}.png" for i in wrong}, given


def multilabel_part(args, work: Path) -> None:
    labels_csv, planted, given = write_noisy_grids(work / "grids", args.images, args.noise, args.seed)
    files = [f"img/{i:05d}.png" for i in range(len(given))]
    print(f"{len(given)} grids of Fashion-MNIST items, {given.sum(1).mean():.2f} labels per image, "
          f"{len(planted)} with one class toggled ({labels_csv})")
    settings = yaml.safe_load(args.multilabel_set) or {}
    cv = find_issues(args, work, f"csv:{labels_csv}", settings, planted).cv
    for rule in ("low_self_confidence", "prune_by_noise_rate", "low_self_confidence cut at the background count"):
        flagged_idx, _ = rank_label_issues(cv.labels, cv.probs, rule.split()[0])
        if rule.endswith("count"):
            flagged_idx = flagged_idx[:multilabel_background_count(cv.labels, cv.probs)]
        p, r = scores({cv.files[i] for i in flagged_idx}, planted)
        print(f"  same out-of-fold probabilities, {rule}: flagged {len(flagged_idx)}, precision {p:.2f}, "
              f"recall {r:.2f}")

    start = time.perf_counter()
    pixels = np.stack([np.asarray(Image.open(labels_csv.parent / f)) for f in files]).reshape(len(files), -1) / 255.0
    probs = _logistic_oof_multilabel(pixels, given, args.seed)
    seconds = time.perf_counter() - start
    for rule in ("prune_by_noise_rate", args.filter_by or FILTERS[0]):
        flagged_idx, _ = rank_label_issues(given, probs, rule)
        p_ref, r_ref = scores({files[i] for i in flagged_idx}, planted)
        print(f"reference (one-vs-rest logistic regression on pixels + cleanlab, 5 folds, rule {rule}): flagged "
              f"{len(flagged_idx)}, precision {p_ref:.2f}, recall {r_ref:.2f}, {seconds:.0f} s")


def _logistic_oof_multilabel(x, y, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold

    probs = np.zeros(y.shape)
    for train, val in KFold(5, shuffle=True, random_state=seed).split(x):
        for c in range(y.shape[1]):
            model = LogisticRegression(max_iter=300).fit(x[train], y[train, c])
            probs[val, c] = model.predict_proba(x[val])[:, 1]
    return probs


def find_issues(args, work: Path, dataset: str, settings: dict, planted: set):
    """``classifier.find_label_issues`` (5 folds over every image), timed; prints precision and recall."""
    start = time.perf_counter()
    issues = classifier.find_label_issues(model=args.model, dataset=dataset, folds=5, epochs=args.epochs,
                                          test_fraction=0, threads=args.threads, progress=False, tensorboard=False,
                                          plots=False, project=str(work / "runs"), filter_by=args.filter_by,
                                          **({"extra": {"width": args.width}} if args.width else {}), **settings)
    seconds = time.perf_counter() - start
    p, r = scores(set(issues.files), planted)
    name = TASKS[issues.cv.task].headline
    print(f"classifier.find_label_issues ({args.model}{f' width {args.width}' if args.width else ''}, {args.epochs} "
          f"epochs, {settings}, 5 folds, {args.threads} threads): flagged {len(issues.files)}, precision {p:.2f}, "
          f"recall {r:.2f}, {seconds / 60:.1f} min (out-of-fold {name} on the noisy labels "
          f"{issues.cv.summary[f'cv_val_{name}_mean']:.3f})")
    return issues


def _files(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*.png")]


def _logistic_oof(x, y, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    return cross_val_predict(LogisticRegression(max_iter=300), x, y, cv=folds, method="predict_proba")


def planted_copy(image: np.ndarray, rng) -> Image.Image:
    """A resized (x1.5-x3) copy, half of them cropped by 1-2 pixels first, as a JPEG (quality 75-95)."""
    im = Image.fromarray(image)
    if rng.random() < 0.5:
        c = int(rng.integers(1, 3))
        im = im.crop((c, c, im.width - c, im.height - c))
    side = int(round(28 * rng.uniform(1.5, 3.0)))
    return im.resize((side, side), Image.BICUBIC), int(rng.integers(75, 96))


SAME_PHOTO = 4  # mean absolute pixel difference (of 255) under which two Fashion-MNIST images are one photo


def one_photo(a: np.ndarray, b: np.ndarray) -> bool:
    """Two Fashion-MNIST images that are one photo: a duplicate in the data set itself, not a false pair."""
    return float(np.abs(a.astype(int) - b.astype(int)).mean()) < SAME_PHOTO


def duplicates_part(args, work: Path) -> None:
    train, train_labels, taken = fashion(args.images // 10, args.seed)
    test, test_labels, _ = fashion(50, args.seed + 7, exclude=taken)
    data = work / "leaky"
    for split, images, labels in (("train", train, train_labels), ("test", test, test_labels)):
        for i, (image, label) in enumerate(zip(images, labels)):
            (data / split / CLASSES[label]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(data / split / CLASSES[label] / f"{split}{i:05d}.png")
    rng = np.random.default_rng(args.seed + 2)
    planted = {}
    for i in rng.choice(len(test), args.copies, replace=False).tolist():
        im, quality = planted_copy(test[i], rng)
        name = f"train/{CLASSES[test_labels[i]]}/copy_of_test{i:05d}.jpg"
        im.save(data / name, quality=quality)
        planted[name] = f"test/{CLASSES[test_labels[i]]}/test{i:05d}.png"
    start = time.perf_counter()
    report = classifier.check_data(f"folder:{data}", output=str(work / "data_check.json"))
    seconds = time.perf_counter() - start
    pairs = {(a["file"], b["file"]) for a, b in ((p["a"], p["b"]) for p in report["near_duplicates"])}
    pairs |= {(b, a) for a, b in pairs}
    found = sum((copy, original) in pairs for copy, original in planted.items())
    false = [p for p in report["near_duplicates"]
             if planted.get(p["a"]["file"]) != p["b"]["file"] and planted.get(p["b"]["file"]) != p["a"]["file"]]
    arrays = {"train": train, "test": test}

    def pixels(name: str):  # an original Fashion-MNIST image (None for a planted copy)
        match = re.fullmatch(r"(train|test)/[^/]+/(?:train|test)(\d+)\.png", name)
        return arrays[match.group(1)][int(match.group(2))] if match else None

    def same_photo(pair) -> bool:  # two Fashion-MNIST images that are one photo (a duplicate in the data set)
        a, b = pixels(pair["a"]["file"]), pixels(pair["b"]["file"])
        return a is not None and b is not None and one_photo(a, b)

    real = [p for p in false if same_photo(p)]
    print(f"near-duplicates: planted copies found {found} of {len(planted)}; other pairs reported {len(false)} "
          f"among {len(train) + len(test) + len(planted)} images, {len(real)} of them one photo twice in "
          f"Fashion-MNIST itself (mean pixel difference under {SAME_PHOTO}/255), so false pairs "
          f"{len(false) - len(real)}; data check {seconds:.1f} s")
    for p in false[:10]:
        print(f"  other pair: {p['a']['file']} ~ {p['b']['file']} (distance {p['distance']})"
              + (": one photo in Fashion-MNIST" if same_photo(p) else ""))


def methods_part(args, work: Path) -> None:
    import io

    import torch
    from scipy.fft import dctn

    from classifier.data import duplicates as dup

    train, _, _ = fashion(250, args.seed)
    rng = np.random.default_rng(5 + args.seed)
    originals = rng.choice(len(train), 200, replace=False)
    copies = []
    for i in originals:
        im, quality = planted_copy(train[i], rng)
        buffer = io.BytesIO()
        im.save(buffer, format="JPEG", quality=quality)
        copies.append(dup.thumbnail(np.asarray(Image.open(buffer).convert("L"))))
    thumbs, copies = np.stack([dup.thumbnail(a) for a in train]), np.stack(copies)

    def phash(t):
        d = dctn(t.astype(np.float32), norm="ortho")[:8, :8].ravel()[1:]
        return torch.from_numpy(d > np.median(d)).float()

    def hamming(a, b):
        return (a[:, None, :] != b[None, :, :]).sum(-1).float()

    def zoomed(a, b, zooms):
        pa, pb = dup.descriptors(a, 0.0), dup.descriptors(b, 0.0)
        d = torch.stack([1 - pa @ dup.descriptors(b, z).T for z in zooms]
                        + [1 - dup.descriptors(a, z) @ pb.T for z in zooms]).amin(0)
        return d

    rows = [("perceptual hash (64 bits, Hamming)", lambda a, b: hamming(torch.stack([phash(t) for t in a]),
                                                                          torch.stack([phash(t) for t in b])),
             (4, 8, 12)),
            (f"thumbnail {dup.SIDE}x{dup.SIDE}, no zooms", lambda a, b: zoomed(a, b, (0.0,)), (0.002, 0.01, 0.05)),
            (f"thumbnail {dup.SIDE}x{dup.SIDE}, {len(dup.ZOOMS)} zooms, a fixed threshold",
             lambda a, b: zoomed(a, b, dup.ZOOMS), (0.0015, 0.002, 0.003))]
    for name, distance, thresholds in rows:
        pair = distance(copies, thumbs)[torch.arange(len(copies)), torch.from_numpy(originals)]
        within = distance(thumbs, thumbs)
        distinct = within[torch.triu(torch.ones_like(within, dtype=torch.bool), 1)]
        for t in thresholds:
            print(f"{name}: distance <= {t:g}: copies found {(pair <= t).sum().item()} of {len(copies)}, "
                  f"distinct pairs {(distinct <= t).sum().item()} (of {len(distinct):,})")
    every = np.concatenate([thumbs, copies])
    pairs = dup.near_duplicate_pairs(every, np.array([str(i) for i in range(len(every))]))
    planted = {(int(o), len(thumbs) + k) for k, o in enumerate(originals)}
    same = [(a, b) for a, b, _ in pairs if (a, b) not in planted and b < len(train)
            and one_photo(train[a], train[b])]
    print(f"the check's rule (distance <= {dup.SURE:g}, or <= {dup.LOOSE:g} and <= {dup.RATIO:g} x the distances to "
          f"the {dup.RANK}th nearest images): copies found {sum(p[:2] in planted for p in pairs)} of {len(copies)}, "
          f"other pairs {sum(p[:2] not in planted for p in pairs)}, of them one photo twice in Fashion-MNIST "
          f"{len(same)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("labels", "duplicates", "methods", "multilabel", "both"), default="both")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=0.10)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--augment", default=None)
    parser.add_argument("--width", type=int, default=None, help="the model's width (vggnet, resnet: extra={width: N})")
    parser.add_argument("--filter-by", default=None,
                        help="the rule (default: find_label_issues' own, background; older rows of docs/data-quality.md "
                             "name the rule they used)")
    parser.add_argument("--multilabel-set", default="{optimizer: adam, batch_size: 32, augment: none}",
                        help="--part multilabel's training settings, a YAML mapping (replacing --batch-size, --lr and "
                             "--augment; the default: what bench/multilabel.py chose on validation mAP)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", metavar="DIR", help="work in DIR (kept) instead of a temporary folder")
    args = parser.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="label_noise-"))
    try:
        if args.part in ("labels", "both"):
            labels_part(args, work)
        if args.part in ("duplicates", "both"):
            duplicates_part(args, work)
        if args.part == "methods":
            methods_part(args, work)
        if args.part == "multilabel":
            multilabel_part(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Trust benchmark (issue 31): calibration, "unknown" detection and heat-map localisation, on real
Fashion-MNIST (``--data``, default /usr/share/datasets/fashion-mnist; the four .gz files).

    python bench/trust.py [--part calibration|unknown|localisation|all] [--epochs 12] [--model vggnet]

(a) calibration: a small-data run that over-fits (100 images per class, all 10 classes, no augmentation):
    test ECE before and after the temperature fitted on its validation split.
(b) unknown: trained on 300 images per class of classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat);
    test images of classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot) are the unknown set; AUROC and
    FPR at 95% TPR for each score, and the share rejected at the threshold kept on validation (95%).
(c) localisation: a net trained on images of classes 0-4 pasted at random places on a 2x larger black canvas;
    on test canvases, the share of each heat map's mass inside the pasted box (mean, and the share of maps
    with most of their mass there), for Grad-CAM, CAM and a uniform map (the floor).
Prints one line per figure. Times, where printed, are from a busy shared machine.
"""
from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import classifier  # noqa: E402
from classifier.checkpoint import load_checkpoint  # noqa: E402
from classifier.metrics import expected_calibration_error  # noqa: E402
from classifier.models import model_from_checkpoint  # noqa: E402
from classifier.preprocess import Preprocessing  # noqa: E402
from classifier.trust.calibrate import fit_temperature, softmax_nll  # noqa: E402
from classifier.trust.explain import grad_cam, plain_cam, normalise, to_image  # noqa: E402
from classifier.trust.fitting import DEFAULT_OOD_SCORE, model_outputs, sample_outputs  # noqa: E402
from classifier.trust.ood import SCORES, fit_feature_stats, ood_scores, separation, threshold_keeping  # noqa: E402

FMNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fmnist(root: Path):
    return {split: (read_idx(root / f"{p}-images-idx3-ubyte.gz"), read_idx(root / f"{p}-labels-idx1-ubyte.gz"))
            for split, p in (("train", "train"), ("test", "t10k"))}


def per_class_subset(images, labels, classes, per_class, seed=0):
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes])
    remap = {c: i for i, c in enumerate(classes)}
    return images[idx], np.array([remap[c] for c in labels[idx]])


def train_run(images, labels, names, args, out: Path, **extra):
    started = time.time()
    run = classifier.train(model=args.model, dataset=(images, labels), class_names=names, epochs=args.epochs,
                           augment="none", eval_test=False, plots=False, tensorboard=False, progress=False,
                           project=str(out.parent), name=out.name, exist_ok=True, seed=args.seed,
                           extra={"width": args.width} if args.model == "vggnet" else {}, **extra)
    ckpt = load_checkpoint(run.dir / "best.pt")
    model = model_from_checkpoint(ckpt)
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    print(f"  trained {args.model} {args.epochs} epochs on {len(images)} images in {time.time() - started:.0f} s "
          "(busy machine)", flush=True)
    return run, model, prep, ckpt


def part_calibration(data, args, out):
    print("(a) calibration: 100 images per class, 10 classes, no augmentation", flush=True)
    x, y = per_class_subset(*data["train"], range(10), 100, seed=args.seed)
    run, model, prep, _ = train_run(x, y, FMNIST, args, out / "calibration", val_fraction=0.2)
    val = run.engine_run.data.splits["val"]
    val_logits, _, val_labels = sample_outputs(model, val, prep)
    t = fit_temperature(val_logits, val_labels)
    test_logits, _ = batched_outputs(model, data["test"][0], prep)
    y_test = data["test"][1]
    acc = (test_logits.argmax(1) == y_test).mean()
    before = ece_of(test_logits, y_test, 1.0)
    after = ece_of(test_logits, y_test, t)
    print(f"  test accuracy {acc:.1%}; temperature {t:.3f}; val NLL {softmax_nll(val_logits, val_labels):.3f} -> "
          f"{softmax_nll(val_logits, val_labels, t):.3f}; test ECE {before:.3f} -> {after:.3f}")
    return {"accuracy": acc, "temperature": t, "ece_before": before, "ece_after": after}


def batched_outputs(model, images, prep, batch=500):
    """(logits, features) of N x H x W gray images, batch by batch."""
    parts = [model_outputs(model, images[i:i + batch, ..., None], prep) for i in range(0, len(images), batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def ece_of(logits, labels, t):
    z = logits / t
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return expected_calibration_error(p.max(1), p.argmax(1) == labels)


def part_unknown(data, args, out):
    known = [0, 1, 2, 3, 4]
    print(f"(b) unknown: trained on {', '.join(FMNIST[c] for c in known)} (300 per class); "
          "the other 5 classes are the unknown set", flush=True)
    x, y = per_class_subset(*data["train"], known, 300, seed=args.seed)
    run, model, prep, ckpt = train_run(x, y, [FMNIST[c] for c in known], args, out / "unknown")
    splits = run.engine_run.data.splits
    val_logits, val_feats, val_labels = sample_outputs(model, splits["val"], prep)
    t = fit_temperature(val_logits, val_labels)
    _, train_feats, train_labels = sample_outputs(model, splits["train"], prep)
    test_x, test_y = data["test"]
    is_known = np.isin(test_y, known)
    logits, feats = batched_outputs(model, test_x, prep)
    acc = (logits[is_known].argmax(1) == np.searchsorted(known, test_y[is_known])).mean()
    print(f"  known-class test accuracy {acc:.1%}; ECE {ece_of(logits[is_known], np.searchsorted(known, test_y[is_known]), 1.0):.3f} "
          f"-> {ece_of(logits[is_known], np.searchsorted(known, test_y[is_known]), t):.3f} (T {t:.2f})")
    results = {}
    for name in SCORES:
        stats = fit_feature_stats(name, train_feats, train_labels, len(known))
        val_s = ood_scores(name, val_logits, val_feats, temperature=t, stats=stats)
        s = ood_scores(name, logits, feats, temperature=t, stats=stats)
        r = separation(s[is_known], s[~is_known], threshold=threshold_keeping(val_s, 0.95))
        results[name] = r
        print(f"  {name:<12} AUROC {r['auroc']:.3f}  FPR95 {r['fpr95']:.3f}  unknown rejected {r['rejected']:.1%}  "
              f"known kept {r['known_kept']:.1%}")
    stats = fit_feature_stats(DEFAULT_OOD_SCORE, train_feats, train_labels, len(known))
    s_known = ood_scores(DEFAULT_OOD_SCORE, logits[is_known], feats[is_known], stats=stats)
    for c in range(5, 10):  # the default score against each unknown class
        sel = test_y == c
        s_c = ood_scores(DEFAULT_OOD_SCORE, logits[sel], feats[sel], stats=stats)
        print(f"    {DEFAULT_OOD_SCORE} AUROC vs {FMNIST[c]}: {separation(s_known, s_c)['auroc']:.3f}")
    return results, model, prep


def paste(images, rng, side):
    """Each 28x28 image pasted at a random place on a side x side black canvas; (canvases N x side x side, boxes)."""
    canvases = np.zeros((len(images), side, side), np.uint8)
    boxes = rng.integers(0, side - 28 + 1, (len(images), 2))
    for k, (image, (top, left)) in enumerate(zip(images, boxes)):
        canvases[k, top:top + 28, left:left + 28] = image
    return canvases, boxes


def part_localisation(data, args, out, side=56, per_class=200, count=300):
    """A net trained on objects pasted anywhere on a larger black canvas: where do its heat maps fall?"""
    known = [0, 1, 2, 3, 4]
    print(f"(c) localisation: classes 0-4 pasted at random places on a {side}x{side} black canvas "
          f"({per_class} per class to train; {count} test canvases)", flush=True)
    rng = np.random.default_rng(args.seed)
    x, y = per_class_subset(*data["train"], known, per_class, seed=args.seed)
    canvases, _ = paste(x, rng, side)
    _, model, prep, _ = train_run(canvases, y, [FMNIST[c] for c in known], args, out / "localisation")
    test_x, test_y = data["test"]
    pick = rng.permutation(np.flatnonzero(np.isin(test_y, known)))[:count]
    test_canvases, boxes = paste(test_x[pick], rng, side)
    logits, _ = batched_outputs(model, test_canvases, prep)
    acc = (logits.argmax(1) == np.searchsorted(known, test_y[pick])).mean()
    print(f"  test accuracy on canvases {acc:.1%}")
    from classifier.inference import model_input
    x_in = model_input(test_canvases[..., None], prep)
    maps = {"grad-cam": np.concatenate([grad_cam(model, x_in[i:i + 50]) for i in range(0, len(x_in), 50)])}
    try:
        maps["cam"] = normalise(np.maximum(plain_cam(model, x_in)[1].numpy(), 0))
    except classifier.ClassifierError as err:
        print(f"  CAM: {err}")
    maps["uniform"] = np.ones((len(x_in), side, side), np.float32)
    results = {}
    for name, m in maps.items():
        mass = []
        for k, (top, left) in enumerate(boxes):
            h = to_image(m[k], side, side, prep)
            total = h.sum()
            mass.append(h[top:top + 28, left:left + 28].sum() / total if total > 0 else 0.0)
        mass = np.array(mass)
        results[name] = (float(mass.mean()), float((mass > 0.5).mean()))
        print(f"  {name:<9} heat-map mass on the object: mean {mass.mean():.1%}; maps with most of their mass on it: "
              f"{(mass > 0.5).mean():.1%}  (object = {28 * 28 / side ** 2:.0%} of the canvas)")
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--part", default="all", choices=["calibration", "unknown", "localisation", "all"])
    p.add_argument("--model", default="vggnet")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=16, help="vggnet width (16: a small CNN)")
    p.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(2)
    data = load_fmnist(Path(args.data))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        if args.part in ("calibration", "all"):
            part_calibration(data, args, out)
        if args.part in ("unknown", "all"):
            part_unknown(data, args, out)
        if args.part in ("localisation", "all"):
            part_localisation(data, args, out)


if __name__ == "__main__":
    main()

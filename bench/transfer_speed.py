#!/usr/bin/env python
"""Transfer learning at real image sizes: the plain torchvision loop against the toolkit (issue 17).

    python bench/transfer_speed.py                       # the issue's settings: 1,200 photos, 10 epochs, 224 px
    python bench/transfer_speed.py --images 60 --epochs 1 --img-size 64 --models resnet18 \\
        --startup-images 300 --startup-small 100         # a quick check that everything runs

1. A photo-like folder made from real Fashion-MNIST training images: ``--images`` RGB JPEGs over 5
   classes, each side drawn from 160-320 px (or ``--folder PATH``, any folder of class sub-folders).
2. For each model (resnet18, mobilenet_v2) and mode (finetune, feature-extract), one after the other:
   (a) plain: ImageFolder, per-sample RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize,
       DataLoader with 2 workers, fp32; feature-extract freezes the backbone (eval mode) and still runs
       it on every image of every epoch. Timed over ``--epochs`` epochs.
   (b) the toolkit: ``train.py`` in a fresh process with an empty cache (``CLASSIFIER_CACHE`` in a new
       folder), defaults otherwise; its time is ``startup_s + train_time_s`` from summary.json.
   Weights: ImageNet weights from the torch.hub cache when they are there; otherwise random weights of
   the same architecture (said in the output: the figures are then for speed only).
3. Start-up: ``train.py`` on a folder of ``--startup-images`` Fashion-MNIST PNGs (70,000 by default), a
   first and a second run (the second finds the data check and decoded pixels cached), against a folder
   of ``--startup-small`` PNGs; ``startup_s`` of each, and the largest resident memory of each process.

Prints figures only; nothing is asserted. Figures depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = (0, 1, 5, 7, 9)  # T-shirt/top, Trouser, Sandal, Sneaker, Ankle boot
TARGET_FEATURE_EXTRACT = 10.0  # toolkit 10 epochs at least 10x faster than the plain loop
TARGET_FINETUNE = 3.0  # toolkit images/s at least 3x the plain loop's
TARGET_STARTUP_EXTRA_S = 3.0  # second start-up on the big folder at most 3 s more than on the small one
# Runs train.py in this process and prints its peak resident memory afterwards: VmHWM, the high-water mark of
# this process's own memory. Not ru_maxrss: Linux carries the parent's peak into a child started by
# (v)fork + exec, so every run would report at least this bench's own peak (it did: 3,297 MB four times).
_RUN_TRAIN = ("import runpy, sys; sys.argv = ['train.py'] + sys.argv[1:]\n"
              "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
              "finally:\n    print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')), file=sys.stderr)")


def fashion_images(data_dir: str, classes=CLASSES, split="train"):
    """(uint8 images N x 28 x 28, labels) of the chosen Fashion-MNIST classes, labels 0..len(classes)-1."""
    from classifier.data import load_dataset

    _, official = load_dataset("fashion_mnist", data_dir)
    samples = official[split]
    keep = np.flatnonzero(np.isin(samples.labels, classes))
    remap = {c: i for i, c in enumerate(classes)}
    return samples.images[keep, :, :, 0], np.array([remap[int(c)] for c in samples.labels[keep]])


def make_photo_folder(out: Path, n: int, data_dir: str, seed: int = 0, sides=(160, 320)) -> Path:
    """``n`` RGB JPEGs (random sides in ``sides`` px, lightly tinted) from real Fashion-MNIST, in class folders."""
    from PIL import Image

    images, labels = fashion_images(data_dir)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), size=n, replace=False)
    for k, i in enumerate(pick):
        folder = out / f"class{labels[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = rng.integers(sides[0], sides[1] + 1, size=2)
        tint = rng.uniform(0.7, 1.0, size=3)
        gray = np.asarray(Image.fromarray(images[i]).resize((int(w), int(h)), Image.BICUBIC), np.float32)
        rgb = np.clip(gray[:, :, None] * tint, 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"{k:05d}.jpg", quality=90)
    return out


def make_png_folder(out: Path, n: int, data_dir: str) -> Path:
    """``n`` 28x28 gray PNGs of Fashion-MNIST (train, then test images), in class folders."""
    from PIL import Image

    from classifier.data.sources.fashion_mnist import CLASSES as FASHION_CLASSES

    done = 0
    for split in ("train", "test"):
        images, labels = fashion_images(data_dir, classes=tuple(range(10)), split=split)
        for image, label in zip(images[: n - done], labels[: n - done]):
            folder = out / FASHION_CLASSES[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{done:05d}.png")
            done += 1
    return out


def imagenet_weights(model: str, folder: Path) -> tuple[str, str]:
    """(--weights value, description): ImageNet from the torch.hub cache, else a file of random weights."""
    import torch

    from classifier.models import create_model
    from classifier.models.pretrained import torchvision_weights_file

    _, cached = torchvision_weights_file(model)
    if cached.is_file():
        return "imagenet", f"ImageNet weights ({cached})"
    path = folder / f"random-{model}.pt"
    torch.manual_seed(0)
    torch.save(create_model(model, num_classes=1000).state_dict(), path)
    return str(path), "RANDOM weights (no ImageNet file in the torch.hub cache): speed figures only"


def gflop_per_trained_image(model: str, img_size: int) -> float:
    """GFLOP (2 per multiply-add) one fine-tuned image costs: the forward pass and the backward pass, counted as
    twice the forward (input and weight gradients)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from classifier._compat import import_torchvision

    net = import_torchvision().models.get_model(model, weights=None).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, img_size, img_size))
    return counter.get_total_flops() / 1e9 * 3


def compute_rate() -> tuple[str, float]:
    """(dtype name, GFLOP/s) of this CPU's 2048 matmul in the dtype ``--amp auto`` trains in here."""
    import torch

    from classifier.engine.runtime import amp_dtype
    from train_speed import matmul_gflops

    dtype = amp_dtype("auto", torch.device("cpu")) or torch.float32
    return str(dtype).removeprefix("torch."), matmul_gflops(dtype)


def plain_loop(model: str, mode: str, folder: Path, args) -> dict:
    """(a) The loop the tutorials write; returns images/s and seconds for ``args.epochs`` epochs."""
    import torch
    from torch.utils.data import DataLoader

    from classifier._compat import import_torchvision
    from classifier.preprocess import IMAGENET_MEAN, IMAGENET_STD

    tv = import_torchvision()
    T = tv.transforms
    transform = T.Compose([T.RandomResizedCrop(args.img_size), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = tv.datasets.ImageFolder(str(folder), transform=transform)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=2)
    torch.manual_seed(0)
    net = tv.models.get_model(model, weights=None)
    in_features = net.fc.in_features if model == "resnet18" else net.classifier[-1].in_features
    head = torch.nn.Linear(in_features, len(dataset.classes))
    if model == "resnet18":
        net.fc = head
    else:
        net.classifier[-1] = head
    if mode == "feature-extract":
        for p in net.parameters():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    net.to(device)
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    images, start = 0, time.perf_counter()
    for _ in range(args.epochs):
        net.train()
        if mode == "feature-extract":
            net.eval()  # frozen BatchNorm statistics
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            criterion(net(x), y).backward()
            optimizer.step()
            images += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"images_per_s": images / seconds, "seconds": seconds}


def run_train(train_args: list[str], cache: Path) -> dict:
    """``train.py`` in a fresh process with ``cache`` as its cache root: its summary.json and peak memory."""
    env = {**os.environ, "CLASSIFIER_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-c", _RUN_TRAIN, *train_args, "--progress", "false"], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"train.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    peak_kb = next((int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("VmHWM:")), 0)
    run_dir = next(line.rsplit(" ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("run folder: "))
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    header = [line for line in proc.stdout.splitlines() if line.startswith(("feature cache", "resize policy",
                                                                             "cache:", "train/val layout"))]
    return {**summary, "max_rss_mb": peak_kb / 1024, "header": header}


def toolkit_run(model: str, mode: str, folder: Path, weights: str, work: Path, args) -> dict:
    name = f"{model}-{mode}"
    summary = run_train(["--dataset", f"folder:{folder}", "--model", model, "--mode", mode, "--weights", weights,
                         "--img-size", str(args.img_size), "--epochs", str(args.epochs), "--batch-size",
                         str(args.batch_size), "--project", str(work / "runs"), "--name", name, "--exist-ok",
                         "--eval-test", "false", "--device", args.device], cache=work / f"cache-{name}")
    split = json.loads((work / "runs" / name / "split.json").read_text())
    trained = split["splits"]["train"]["size"] * args.epochs
    total = summary["startup_s"] + summary["train_time_s"]
    return {**summary, "images_per_s": trained / max(summary["train_time_s"], 1e-9), "seconds": total}


def startup(args, work: Path) -> list[str]:
    """Start-up on a big and a small PNG folder: first and second run (cache kept between them)."""
    lines = []
    for n in (args.startup_images, args.startup_small):
        folder = make_png_folder(work / f"pngs-{n}", n, args.data_dir)
        cache = work / f"cache-startup-{n}"
        for attempt in ("first", "second"):
            s = run_train(["--dataset", f"folder:{folder}", "--model", "lenet5", "--epochs", "1", "--max-per-class",
                           "10", "--val-fraction", "0.01", "--test-fraction", "0.01", "--eval-test", "false",
                           "--project", str(work / "runs"), "--name", f"startup-{n}-{attempt}"], cache=cache)
            lines.append(f"   {n:>6} PNGs, {attempt} run: startup_s {s['startup_s']:.1f} s, "
                         f"peak memory {s['max_rss_mb']:.0f} MB")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", help="a folder of class sub-folders (default: made from Fashion-MNIST)")
    parser.add_argument("--images", type=int, default=1200, help="photos in the folder made from Fashion-MNIST")
    parser.add_argument("--models", nargs="*", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--modes", nargs="*", default=["finetune", "feature-extract"])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--startup-images", type=int, default=70000)
    parser.add_argument("--startup-small", type=int, default=200)
    parser.add_argument("--skip-startup", action="store_true")
    parser.add_argument("--data-dir", default="datasets")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (both sides)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="transfer-speed-"))
    folder = Path(args.folder) if args.folder else make_photo_folder(work / "photos", args.images, args.data_dir)
    print(f"folder {folder}; {args.epochs} epochs at {args.img_size} px, batch {args.batch_size}; work in {work}")
    results = []
    dtype, rate = compute_rate() if args.models else ("", 0.0)
    if args.models:
        print(f"this CPU's 2048 matmul in {dtype} (what --amp auto trains in here): {rate:.0f} GFLOP/s")
    for model in args.models:
        weights, described = imagenet_weights(model, work)
        print(f"\n== {model}: {described}")
        for mode in args.modes:
            plain = plain_loop(model, mode, folder, args)
            toolkit = toolkit_run(model, mode, folder, weights, work, args)
            speed, time_ratio = toolkit["images_per_s"] / plain["images_per_s"], plain["seconds"] / toolkit["seconds"]
            target = (f"10 epochs >= {TARGET_FEATURE_EXTRACT:g}x less time: "
                      f"{'met' if time_ratio >= TARGET_FEATURE_EXTRACT else 'MISSED'}" if mode == "feature-extract"
                      else f">= {TARGET_FINETUNE:g}x images/s: {'met' if speed >= TARGET_FINETUNE else 'MISSED'}")
            print(f"   {mode}: plain {plain['images_per_s']:.1f} img/s, {plain['seconds']:.1f} s for {args.epochs} "
                  f"epochs | toolkit {toolkit['images_per_s']:.1f} img/s, {toolkit['seconds']:.1f} s "
                  f"(startup_s {toolkit['startup_s']:.1f} + training {toolkit['train_time_s']:.1f}), peak memory "
                  f"{toolkit['max_rss_mb']:.0f} MB | {speed:.2f}x img/s, {time_ratio:.2f}x less time ({target})")
            if mode == "finetune":  # the target's ceiling (feature-extract's pass count is in its header line)
                flop, done = gflop_per_trained_image(model, args.img_size), toolkit["images_per_s"]
                print(f"      ceiling: {flop:.2f} GFLOP per trained image at {done:.1f} img/s = {flop * done:.0f} "
                      f"GFLOP/s, {flop * done / rate:.0%} of the {dtype} matmul rate")
            for line in toolkit["header"]:
                print(f"      {line}")
            results.append({"model": model, "mode": mode, "weights": described, "plain": plain,
                            "toolkit": {k: v for k, v in toolkit.items() if k != "header"}})
    if not args.skip_startup:
        print(f"\n== start-up (target: second run on {args.startup_images} at most {TARGET_STARTUP_EXTRA_S:g} s "
              f"more than on {args.startup_small})")
        lines = startup(args, work)
        print("\n".join(lines))
        results.append({"startup": lines})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

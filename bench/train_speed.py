#!/usr/bin/env python
"""Training throughput: the plain tutorial loop against this toolkit, same model, batch size and data.

    python bench/train_speed.py                          # resnet18 at 32x32 and vggnet at 28x28, ~3-4 min
    python bench/train_speed.py --models vggnet --seconds 60 --threads 2

In one process, one after the other, for each model:
(a) plain: torchvision.datasets.FashionMNIST decoding one PIL image per sample, per-sample transforms
    (resnet18: Resize(32) and Grayscale(3), then ToTensor, Normalize), a shuffling DataLoader with two
    workers as in the PyTorch tutorial, fp32 eager: ``zero_grad; criterion(model(x), y).backward(); step``.
(b) toolkit: build_loader over the same images (one in-memory uint8 tensor, batched preprocessing), the
    model from prepare_model with the config defaults (bf16 autocast on CPUs with native bf16,
    channels-last; --compile adds torch.compile), trained by engine.loop.train_one_epoch.
Both use the 60,000 official Fashion-MNIST training images, the same architecture (create_model),
batch size and SGD, and no augmentation unless ``--augment light`` (torchvision RandomCrop with reflect
padding + RandomHorizontalFlip against the batched preset of the same meaning). After ``--warmup``
untimed steps, a side is timed over ``--steps`` steps or ``--seconds`` seconds, whichever ends first,
data loading included. Figures depend on the machine and on what else runs on it; nothing here is
asserted by the tests.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_RATIO = 3.0  # the toolkit should train at least 3x as many images per second as the plain loop
CASES = {"resnet18": (32, 3), "vggnet": (28, 1)}  # model -> input side, channels
PLAIN_LR = 0.05


def machine_info() -> str:
    """CPU model, core count, torch threads and version, and whether bf16 autocast is used."""
    from classifier.engine.runtime import amp_dtype

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    bf16 = amp_dtype("auto", torch.device("cpu")) == torch.bfloat16
    return (f"{cpu}; {os.cpu_count()} logical CPUs; torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads; native bf16 autocast: {'yes' if bf16 else 'no'}")


def matmul_gflops(dtype: torch.dtype, *, size: int = 2048, seconds: float = 3.0) -> float:
    """GFLOP/s of a size x size matmul in ``dtype`` with the current torch thread count (best of the timed calls).

    Issue 18's budgets are for a machine whose 2-thread bf16 rate at 2048 is REFERENCE_BF16_GFLOPS."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)  # warm-up: picks and loads the kernel
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        begun = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - begun)
    return 2 * size ** 3 / best / 1e9


REFERENCE_BF16_GFLOPS = 823.0  # the machine the budgets were set on: 2 threads, bf16, 2048 x 2048


class Timed:
    """Iterate ``batches``: ``warmup`` untimed steps, then time until ``steps`` steps or ``seconds`` passed.

    A step's time runs from asking for its batch to asking for the next one, so loading is counted.
    """

    def __init__(self, batches, *, warmup: int, steps: int, seconds: float):
        self.batches, self.warmup, self.steps, self.seconds = batches, warmup, steps, seconds
        self.images, self.timed_steps, self.elapsed = 0, 0, 0.0

    def __len__(self) -> int:  # the step budget (train_one_epoch's progress bar asks)
        return self.warmup + self.steps

    def __iter__(self):
        batches = iter(self.batches)
        for _, batch in zip(range(self.warmup), batches):
            yield batch
        start = time.perf_counter()
        for x, y in batches:
            yield x, y
            self.images += len(y)
            self.timed_steps += 1
            self.elapsed = time.perf_counter() - start
            if self.timed_steps >= self.steps or self.elapsed >= self.seconds:
                return

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.elapsed, 1e-9)


def torchvision_root(data_dir: str, folder: Path) -> Path:
    """A torchvision dataset root (``folder/FashionMNIST/raw``, unpacked IDX files) made from the files
    the toolkit finds (its data dir, torchvision's layout or the Debian package) or downloads."""
    from classifier.data.sources.fashion_mnist import fashion_mnist_files

    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, path in fashion_mnist_files(data_dir).items():
        data = path.read_bytes()
        (raw / name.removesuffix(".gz")).write_bytes(gzip.decompress(data) if path.suffix == ".gz" else data)
    return folder


def plain_loop(model_name: str, prep, root: Path, args, device: torch.device) -> Timed:
    """(a) The tutorial loop, written as the tutorials write it."""
    from torch.utils.data import DataLoader

    from classifier._compat import import_torchvision
    from classifier.models import create_model

    tv = import_torchvision()
    T = tv.transforms
    steps = [T.Resize(prep.size)] if prep.size != (28, 28) else []
    steps += [T.Grayscale(3)] if prep.channels == 3 else []
    if args.augment == "light":
        steps += [T.RandomCrop(prep.size, padding=prep.size[0] // 8, padding_mode="reflect"), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(prep.mean, prep.std)]
    dataset = tv.datasets.FashionMNIST(str(root), train=True, transform=T.Compose(steps))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.plain_workers)
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, in_chans=prep.channels).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=PLAIN_LR, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    timed = Timed(loader, warmup=args.warmup, steps=args.steps, seconds=args.seconds)
    for x, y in timed:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    return timed


def toolkit_loop(model_name: str, prep, info, samples, args, device: torch.device) -> tuple[Timed, str]:
    """(b) The toolkit's own pieces, as ``fit`` puts them together; returns the timing and a description."""
    from classifier.config import make_config
    from classifier.data import build_loader
    from classifier.engine.loop import StepContext, train_one_epoch
    from classifier.engine.optim import build_optimizer
    from classifier.engine.runtime import Dist, amp_dtype
    from classifier.engine.build import RunData, build_model, optimizer_groups, wrap_model

    cfg = make_config({"model": model_name, "batch_size": args.batch_size, "lr": PLAIN_LR, "compile": args.compile,
                       "device": device.type, "progress": False})
    torch.manual_seed(0)
    model, _ = build_model(cfg, RunData(info, list(info.classes), {"train": samples}, {}, prep, {}))
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(optimizer_groups(model, cfg), cfg)
    model = wrap_model(model, cfg, Dist(), device)
    loader = build_loader(samples, prep, train=True, batch_size=cfg.batch_size, augment=args.augment, seed=cfg.seed)
    dtype = amp_dtype(cfg.amp, device)
    ctx = StepContext(optimizer, device, dtype, channels_last=cfg.channels_last)
    timed = Timed(loader, warmup=args.warmup, steps=args.steps, seconds=args.seconds)
    train_one_epoch(model, timed, ctx, step=0)
    parts = [type(loader).__name__, str(dtype).replace("torch.", "") if dtype else "fp32"]
    parts += ["channels-last"] * cfg.channels_last + ["torch.compile"] * cfg.compile
    return timed, ", ".join(parts)


def bench_model(model_name: str, info, samples, root: Path, args, device) -> dict:
    side, channels = CASES[model_name]
    prep = info.preprocessing(size=(side, side), channels=channels)
    plain = plain_loop(model_name, prep, root, args, device)
    toolkit, how = toolkit_loop(model_name, prep, info, samples, args, device)
    return {"model": model_name, "input": f"{channels}x{side}x{side}", "batch_size": args.batch_size,
            "augment": args.augment, "toolkit": how,
            "plain": {"images_per_s": plain.images_per_s, "steps": plain.timed_steps, "seconds": plain.elapsed},
            "toolkit_speed": {"images_per_s": toolkit.images_per_s, "steps": toolkit.timed_steps,
                              "seconds": toolkit.elapsed},
            "ratio": toolkit.images_per_s / max(plain.images_per_s, 1e-9)}


def report(r: dict, plain_workers: int) -> str:
    p, t = r["plain"], r["toolkit_speed"]
    met = "met" if r["ratio"] >= TARGET_RATIO else "MISSED"
    return "\n".join([
        f"\n== {r['model']} ({r['input']}, batch {r['batch_size']}, augment {r['augment']})",
        f"   plain   {p['images_per_s']:7.0f} img/s  ({p['steps']:>3} steps in {p['seconds']:4.1f} s)  "
        f"torchvision dataset, PIL per sample, DataLoader(num_workers={plain_workers}), fp32 eager",
        f"   toolkit {t['images_per_s']:7.0f} img/s  ({t['steps']:>3} steps in {t['seconds']:4.1f} s)  {r['toolkit']}",
        f"   speed-up {r['ratio']:.2f}x  (target >= {TARGET_RATIO:g}x: {met})",
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per side (at most)")
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds per side (at most)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (worker start-up, compile)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--plain-workers", type=int, default=2, help="DataLoader workers of the plain loop")
    parser.add_argument("--augment", choices=("none", "light"), default="none")
    parser.add_argument("--compile", action="store_true", help="toolkit side: torch.compile the model")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (both sides)")
    parser.add_argument("--data-dir", default="datasets")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    from classifier.data import load_dataset
    from classifier.engine.runtime import select_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    print(f"machine: {machine_info()}; device {device}", flush=True)
    info, official = load_dataset("fashion_mnist", args.data_dir)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = torchvision_root(args.data_dir, Path(tmp))
        for name in args.models:
            results.append(bench_model(name, info, official["train"], root, args, device))
            print(report(results[-1], args.plain_workers), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine_info(), "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The inference server under load: throughput, p50 / p99 latency and errors at 1, 8 and 32 concurrent
clients over loopback, dynamic batching on (serve.py's defaults) against off (--max-batch 1).

    python bench/serve_load.py                          # both models, 3 s per level
    python bench/serve_load.py --seconds 20 --models vggnet28
    python bench/serve_load.py --model runs/demo/model.onnx --image shoe.png

Models (random weights, stated so: nothing is downloaded; speed does not depend on the weights):
``vggnet28`` (the Fashion-MNIST recipe's net, 1 x 28 x 28) and ``resnet18_224`` (3 x 224 x 224), exported
once with the toolkit's exporter to runs/serve_bench/. Each client is a thread that keeps one
keep-alive connection and posts the same PNG to /predict as soon as its previous answer arrives, for
``--warmup + --seconds``; the figures count the requests that end in the last ``--seconds``. Mean
batch is the images per model call, read from the server's /metrics. The load generator runs on the same machine as the server and takes CPU from it: figures
are a lower bound, and on a busy machine (other jobs) they vary from run to run.
"""
from __future__ import annotations

import argparse
import http.client
import io
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = {  # name -> (registry model, channels, side)
    "vggnet28": ("vggnet", 1, 28),
    "resnet18_224": ("resnet18", 3, 224),
}
MODES = {"on": [], "off": ["--max-batch", "1"]}  # on: serve.py's default --max-batch / --max-delay-ms


def export_model(name: str, folder: Path) -> Path:
    """A random-weight model of ``name`` exported to ONNX (cached)."""
    path = folder / f"{name}.onnx"
    if path.is_file():
        return path
    from classifier._compat import import_torchvision
    import_torchvision()
    import torch

    from classifier.export import export_onnx
    from classifier.models import create_model
    from classifier.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

    arch, channels, side = MODELS[name]
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_chans=channels).eval()
    mean, std = ((0.2860,), (0.3530,)) if channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    prep = Preprocessing(size=(side, side), channels=channels, mean=mean, std=std)
    print(f"exporting {name} (random weights) to {path} ...", flush=True)
    return export_onnx(model, prep, {"model_name": arch, "classes": [f"class{i}" for i in range(10)],
                                     "num_classes": 10, "dataset": "random weights"}, path)


def fixed_image(channels: int, side: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (side, side, channels), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(buf, format="PNG")
    return buf.getvalue()


class ServerProcess:
    def __init__(self, model: Path, extra: list[str], log: Path):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, str(REPO / "serve.py"), "--model", str(model), "--port", "0",
                                      *extra], cwd=REPO, stderr=log.open("w"), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        self.port = None
        while self.port is None:
            found = re.search(r"on http://127\.0\.0\.1:(\d+)", log.read_text())
            self.port = int(found.group(1)) if found else None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.2)
        while get(self.port, "/v2/health/ready")[0] != 200:
            time.sleep(0.2)

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def batch_counts(port: int) -> tuple[float, float]:
    text = get(port, "/metrics")[1].decode()
    value = {name: float(re.search(rf"^classifier_batch_size_{name} (\S+)$", text, re.M).group(1))
             for name in ("count", "sum")}
    return value["count"], value["sum"]


def run_load(port: int, body: bytes, clients: int, seconds: float, warmup: float) -> dict:
    """``clients`` threads posting ``body`` from now until ``warmup + seconds``; the figures count the
    requests that end inside the measured ``seconds`` (after the warm-up)."""
    start = time.monotonic() + warmup
    stop = start + seconds
    done, lock = [], threading.Lock()  # (end time, latency, ok)

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while (begin := time.monotonic()) < stop:
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            end = time.monotonic()
            with lock:
                done.append((end, end - begin, ok))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, start - time.monotonic()))
    calls0, items0 = batch_counts(port)
    time.sleep(max(0.0, stop - time.monotonic()))
    calls1, items1 = batch_counts(port)
    for t in threads:
        t.join()
    measured = [(latency, ok) for end, latency, ok in done if start <= end < stop]
    ms = np.array([latency for latency, ok in measured if ok]) * 1000
    return {"clients": clients, "requests": len(ms), "errors": sum(not ok for _, ok in measured),
            "rps": len(ms) / seconds, "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
            "batch": (items1 - items0) / max(calls1 - calls0, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--model", help="serve this .onnx/.ort/.pt instead (with --image)")
    parser.add_argument("--image", help="the image file to post (default: a random PNG at the model size)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring, per level")
    parser.add_argument("--folder", default=str(REPO / "runs" / "serve_bench"), help="exported models and logs")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(Path(args.model).name, Path(args.model), Path(args.image).read_bytes())] if args.model else \
        [(name, export_model(name, folder), fixed_image(*MODELS[name][1:])) for name in args.models]
    print(f"\n{args.seconds:g} s per level after {args.warmup:g} s of warm-up, loopback, client threads on the "
          "same machine\n")
    print("| model | batching | clients | requests/s | p50 ms | p99 ms | errors | mean batch |")
    print("|---|---|---|---|---|---|---|---|")
    for name, model, body in jobs:
        # both servers up at once, levels interleaved (on, off, on, off...): a busy machine's load drifts
        # over minutes, and this way both modes see the same stretch of it
        servers = {mode: ServerProcess(model, extra, folder / f"{name}-{mode}.log") for mode, extra in MODES.items()}
        try:
            for clients in args.clients:
                for mode, server in servers.items():
                    r = run_load(server.port, body, clients, args.seconds, args.warmup)
                    print(f"| {name} | {mode} | {clients} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                          f"{r['errors']} | {r['batch']:.1f} |", flush=True)
        finally:
            for mode, server in servers.items():
                code = server.stop()
                if code != 0:
                    print(f"  ({mode}: the server exited with {code} on SIGTERM; log: {server.log})")


if __name__ == "__main__":
    main()

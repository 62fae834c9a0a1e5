"""CPU speed of a model as PyTorch eager and as ONNX Runtime sessions, at a stated thread count.

Latency: median and 90th percentile of single-image calls (batch 1). Throughput: images per second
at a larger batch. Inputs are random tensors of the model's input shape and dtype: speed does not
depend on pixel values for these networks. Figures are printed by ``export.py --benchmark`` and
``bench/export_speed.py``; tests never assert on them.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from classifier.artifact import open_session
from classifier.preprocess import Preprocessing


@dataclass
class BenchResult:
    name: str
    threads: int
    median_ms: float  # batch-1 latency
    p90_ms: float
    throughput: float | None  # images/s at ``batch``
    batch: int | None

    def row(self) -> str:
        speed = f"{self.throughput:9.0f} img/s @ batch {self.batch}" if self.throughput else ""
        return f"{self.name:<14} {self.median_ms:8.3f} ms {self.p90_ms:8.3f} ms   {speed}"


# Between two engines' turns: ONNX Runtime's and PyTorch's thread pools keep spinning for a moment
# after a call, and on 2 cores that stole time from the next engine (measured: int8 mobilenet_v2
# throughput fell to 0.8x fp32 when the engines alternated without a pause, from 1.7x).
PAUSE_S = 0.2


def time_calls(fn, *, warmup: int = 3, runs: int = 50, budget_s: float = 2.0) -> np.ndarray:
    """Seconds per call of ``fn()``: ``warmup`` untimed calls, then up to ``runs`` (at least 5) within ``budget_s``."""
    for _ in range(warmup):
        fn()
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < runs and (len(times) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.asarray(times)


@contextlib.contextmanager
def torch_threads(threads: int):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def benchmark(prep: Preprocessing, *, model: nn.Module | None = None, onnx_models: dict | None = None,
              threads: int | None = None, batch: int | None = 32, runs: int = 50,
              budget_s: float = 2.0, rounds: int = 3) -> list[BenchResult]:
    """Time PyTorch eager ``model`` (if given) and each ONNX Runtime model in ``onnx_models`` (name -> path).

    ``threads``: intra-op threads for both engines (default: PyTorch's current setting, stated in
    every result). ``batch``: throughput batch size (None skips throughput). The engines are timed in
    ``rounds`` interleaved rounds (each gets ``runs / rounds`` batch-1 calls per round), so a slow spell
    of a shared machine falls on all of them alike instead of on whichever ran at the time.
    """

    threads = threads or torch.get_num_threads()
    shape = (prep.channels, *prep.size)
    makers = {}
    if model is not None:
        model.eval()

        def eager_call(n):
            x = torch.randn(n, *shape)

            def call():
                with torch.inference_mode():
                    model(x)
            return call

        makers["PyTorch eager"] = eager_call
    for name, path in (onnx_models or {}).items():
        session = open_session(Path(path), threads=threads)
        graph_input = session.get_inputs()[0]
        uint8 = graph_input.type == "tensor(uint8)"

        def ort_call(n, session=session, input_name=graph_input.name, uint8=uint8):
            rng = np.random.default_rng(0)
            x = (rng.integers(0, 256, (n, *shape), dtype=np.uint8) if uint8
                 else rng.standard_normal((n, *shape), dtype=np.float32))
            return lambda: session.run(None, {input_name: x})

        makers[name] = ort_call
    calls = {name: (make(1), make(batch) if batch else None) for name, make in makers.items()}
    single = {name: [] for name in calls}
    batched = {name: [] for name in calls}
    with torch_threads(threads):
        for _ in range(rounds):
            for name, (one, many) in calls.items():
                time.sleep(PAUSE_S)  # the previous engine's worker threads stop spinning and yield the cores
                single[name].extend(time_calls(one, warmup=3, runs=max(5, runs // rounds),
                                               budget_s=budget_s / rounds))
                if many is not None:
                    batched[name].extend(time_calls(many, warmup=1, runs=max(1, runs // (5 * rounds)),
                                                    budget_s=budget_s / rounds))
    results = []
    for name in calls:
        ms = np.asarray(single[name]) * 1000
        throughput = batch / float(np.median(batched[name])) if batch else None
        results.append(BenchResult(name, threads, float(np.median(ms)), float(np.percentile(ms, 90)), throughput,
                                   batch))
    return results


def format_results(results: list[BenchResult]) -> str:
    threads = sorted({r.threads for r in results})
    head = f"CPU, {'/'.join(map(str, threads))} thread(s)\n{'engine':<14} {'median':>11} {'p90':>11}   throughput"
    return "\n".join([head] + [r.row() for r in results])

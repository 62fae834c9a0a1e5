"""Where and how we run: device, precision, seeds and random state, distributed process group."""
from __future__ import annotations

import os
import random
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from classifier.errors import ClassifierError


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ClassifierError("--device cuda asked for, but no CUDA device is available (use auto or cpu)")
    return torch.device(name)


def configure_process(device_name: str, dist: "Dist", *, threads: int | None, deterministic: bool,
                      seed: int) -> torch.device:
    """The device this process trains on; thread count, deterministic mode and seeds set for the run
    (process-wide: the Python API puts them back afterwards)."""
    device = select_device(device_name)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(seed)
    return device


AMP_CHOICES = ("auto", "bf16", "fp16", "off")
AMP_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32.

    auto (alias: on): bf16 on CPUs with native bf16 instructions (AVX512-BF16/AMX), where it is measured
    faster, fp32 on other CPUs; on CUDA bf16 where the card has it (Ampere and newer), else fp16 (T4, V100,
    GTX 16xx), which trains with a gradient scaler (``grad_scaler``). bf16 / fp16: that dtype on any device
    (on a CPU without native support they run, slowly: for tests and for checking a GPU recipe here).
    """
    if amp == "off":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if native else None


def grad_scaler(dtype: torch.dtype | None, device: torch.device):
    """A ``torch.amp.GradScaler`` for fp16 training, else None: fp16 gradients below 6e-8 flush to zero, so
    the loss is scaled up before backward and the gradients down before the step (bf16 has fp32's range
    and needs none). The scale lives in last.pt, so a resume continues with it exactly."""
    if dtype != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def use_channels_last(wanted: bool, model: torch.nn.Module, device: torch.device) -> bool:
    """Whether to train ``model`` in the channels_last memory format (``--channels-last``, on by default).

    Not on a CPU when the model has a 1x1 stride-2 convolution with 2-7 input channels: there the oneDNN
    backward of torch 2.13's CPU build (jit_avx2_1x1_convolution_bwd_weights) writes outside its buffers,
    which aborts the process ("corrupted size vs. prev_size", "free(): invalid pointer") or hangs it. Found
    with the custom resnet at width 4; such narrow layers are too small for the memory format to matter.
    """
    if not wanted or device.type != "cpu":
        return wanted
    return not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
                   and 1 < m.in_channels < 8 for m in model.modules())


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """Random state as plain data (loads under weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # torchrun keeps one key-value store for all attempts of a job: without a per-attempt prefix,
        # restarted workers read the dead workers' addresses and wait for them until the timeout
        store, _, _ = next(dist.rendezvous("env://"))
        store = dist.PrefixStore(f"attempt{elastic_restart_count()}", store)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", store=store, rank=rank,
                                world_size=world_size)
    return Dist(rank, world_size, local_rank)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def elastic_restart_count() -> int:
    """How often torchrun (--max-restarts) has restarted this job's workers; 0 on the first attempt."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum numbers over processes (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextmanager
def global_state_restored():
    """Put back the process-wide settings a run changes (``configure_process``): threads, deterministic
    mode, random generators. The Python API wraps training in it, so a notebook's state survives a run."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        # only when the run changed it: the call imports torch._dynamo and torch._inductor (~3 s)
        if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) \
                != (deterministic, warn_only):
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)

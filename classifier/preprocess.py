"""What a model expects as input, and the one function that turns uint8 pixels into it.

Training (both data paths), evaluation, ``test.py``, the ``.pt`` predictor and the ONNX export all use
this, so a deployed model sees exactly the input it was trained on.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

# ITU-R 601-2 luma, the weights PIL uses for convert("L"), so both conversions agree.
LUMA = (0.299, 0.587, 0.114)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    size: tuple[int, int]  # model input (height, width)
    channels: int  # 1 (grayscale) or 3 (RGB)
    mean: tuple[float, ...]  # per channel, on the 0-1 scale
    std: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.channels not in (1, 3) or len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"inconsistent preprocessing: {self}")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(size=tuple(d["size"]), channels=int(d["channels"]), mean=tuple(d["mean"]), std=tuple(d["std"]))


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """NCHW float: 1->3 replicates gray, 3->1 takes luma, same count is untouched."""
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if have == 3 and channels == 1:
        w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def to_model_input(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 (or 0-255 float) NCHW images -> normalised float32 NCHW at ``prep.size``/``prep.channels``."""
    x = images.float()
    x = convert_channels(x, prep.channels)
    if tuple(x.shape[-2:]) != prep.size:
        x = resize(x, prep.size)
    return normalize(x, prep)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The toolkit's one resize (float NCHW): bilinear with antialias. Exact identity at the same size."""
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def normalize(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """0-255 float NCHW -> (x/255 - mean) / std."""
    mean = torch.tensor(prep.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(prep.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) * 255.0
    return (x - mean) / std


class InputNormalizer(nn.Module):
    """``to_model_input`` after the channel conversion, as a module to fold into an exported graph.

    Input: 0-255 pixels, NCHW, in the model's channels. ``resize``: any height and width is resized
    to ``prep.size`` as ``to_model_input`` does (at that size the resize is an exact identity);
    without it the input must already be at the size the model runs at.
    """

    def __init__(self, prep: Preprocessing, *, resize: bool = False):
        super().__init__()
        self.prep, self.resizes = prep, resize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.resizes:
            x = resize(x, self.prep.size)
        return normalize(x, self.prep)

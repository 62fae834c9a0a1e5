"""What a model expects as input, and the one pixel pipeline that turns uint8 pixels into it.

The pipeline, written down once here: decode (``classifier.data.images``), apply the resize policy
(``apply_policy``), resize to the model size (``resize``: bilinear with antialias), then either
normalise (``to_model_input``: evaluation, the predictor, the exported graph) or round to uint8
(``fit_pixels``: training's decoded-pixel cache, before augmentation). Training pixels therefore
differ from the deployed model's by the rounding alone, at most 0.5 of a pixel level (1/510 on the
0-1 scale), for images decoded at full size.

Resize policies (``Preprocessing.resize_policy``; checkpoints and ONNX files without one mean squash):

* ``squash``: resize the whole image to the model size; the aspect ratio is not kept.
* ``crop``: the centre of the image at the model's aspect ratio, ``CROP_RATIO`` (7/8) of the largest
  such box, resized to the model size: ImageNet's evaluation transform (resize the short side to 256,
  centre-crop 224) for a square model input.
* ``pad``: letterbox: the image is padded with ``PAD_FILL`` (grey 114 in every channel, as in Ultralytics'
  letterbox) equally on both sides to the model's aspect ratio, then resized; nothing is cut off.

Both are integer boxes on the decoded image (``policy_window``), computed with the same integer
arithmetic in PyTorch, in the exported ONNX graph (for any input size) and in examples/onnx_client.py.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

# ITU-R 601-2 luma, the weights PIL uses for convert("L"), so both conversions agree.
LUMA = (0.299, 0.587, 0.114)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_POLICIES = ("squash", "crop", "pad")
CROP_RATIO = (7, 8)  # numerator, denominator: 224 of 256, ImageNet's evaluation crop
PAD_FILL = 114.0  # letterbox grey, 0-255 scale, every channel


@dataclass(frozen=True)
class Preprocessing:
    size: tuple[int, int]  # model input (height, width)
    channels: int  # 1 (grayscale) or 3 (RGB)
    mean: tuple[float, ...]  # per channel, on the 0-1 scale
    std: tuple[float, ...]
    resize_policy: str = "squash"  # squash | crop | pad (module docstring)

    def __post_init__(self):
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.channels not in (1, 3) or len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"inconsistent preprocessing: {self}")
        if self.resize_policy not in RESIZE_POLICIES:
            raise ValueError(f"unknown resize policy {self.resize_policy!r} (choices: {', '.join(RESIZE_POLICIES)})")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(size=tuple(d["size"]), channels=int(d["channels"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   resize_policy=d.get("resize_policy") or "squash")  # saved before policies existed: squash


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
    return normalize(fit_to_size(x, prep), prep)


def fit_to_size(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """0-255 float NCHW of any size -> the policy's box resized to ``prep.size`` (not rounded)."""
    x = apply_policy(x, prep.size, prep.resize_policy)
    if tuple(x.shape[-2:]) != prep.size:
        x = resize(x, prep.size)
    return x


def fit_pixels(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 NCHW (model channels) of any size -> uint8 NCHW at ``prep.size``: policy, resize, round.

    Training decodes files to this once (decoded-pixel cache, streaming workers) and augments at the
    model size; the images then need no further resize (``fitted(prep)``)."""
    if tuple(images.shape[-2:]) == prep.size and prep.resize_policy == "squash":
        return images
    return fit_to_size(images.float(), prep).round().clamp(0, 255).to(torch.uint8)


def fitted(prep: Preprocessing) -> Preprocessing:
    """The preprocessing of pixels already fitted to ``prep.size`` by ``fit_pixels`` (no second crop/pad)."""
    return replace(prep, resize_policy="squash")


def policy_window(height, width, size: tuple[int, int], policy: str):
    """(top, left, box height, box width) of the policy's box on a ``height`` x ``width`` image.

    ``crop``: inside the image (top, left >= 0); ``pad``: around it (top, left <= 0: the padding before
    the image). Integer arithmetic with non-negative operands only, so PyTorch, the ONNX graph (where
    height and width are symbolic) and a client in any language compute the same box.
    """
    th, tw = size
    if policy == "crop":
        num, den = CROP_RATIO
        box_h = torch.sym_max(1, torch.sym_min(height, width * th // tw) * num // den)
        box_w = torch.sym_max(1, torch.sym_min(width, height * tw // th) * num // den)
        return (height - box_h) // 2, (width - box_w) // 2, box_h, box_w
    if policy == "pad":
        box_h = torch.sym_max(height, (width * th + tw - 1) // tw)
        box_w = torch.sym_max(width, (height * tw + th - 1) // th)
        return -((box_h - height) // 2), -((box_w - width) // 2), box_h, box_w
    return 0, 0, height, width


def policy_description(policy: str) -> str:
    """The policy in words, with its constants (for exported metadata and run headers)."""
    num, den = CROP_RATIO
    return {
        "squash": "squash: the whole image resized to the input size (aspect ratio not kept)",
        "crop": f"crop: the centre box at the input's aspect ratio, {num}/{den} of the largest such box "
                "(ImageNet's resize 256 + centre crop 224), resized to the input size",
        "pad": f"pad: letterboxed to the input's aspect ratio with grey {PAD_FILL:g} on both sides, then resized",
    }[policy]


def apply_policy(x: torch.Tensor, size: tuple[int, int], policy: str) -> torch.Tensor:
    """0-255 float NCHW -> the policy's box (``policy_window``): cropped, or padded with ``PAD_FILL``."""
    if policy == "squash":
        return x
    height, width = x.shape[-2], x.shape[-1]
    top, left, box_h, box_w = policy_window(height, width, size, policy)
    if policy == "crop":
        x = x[:, :, top:top + box_h, left:left + box_w]
        torch._check(x.shape[2] > 0)  # the exporter cannot prove a symbolic slice non-empty (resize needs it)
        torch._check(x.shape[3] > 0)
        return x
    return F.pad(x, (-left, box_w - width + left, -top, box_h - height + top), value=PAD_FILL)


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

    Input: 0-255 pixels, NCHW, in the model's channels. ``resize``: any height and width goes through
    the resize policy and is resized to ``prep.size`` as ``to_model_input`` does (at that size the resize is an
    exact identity);
    without it the input must already be at the size the model runs at.
    """

    def __init__(self, prep: Preprocessing, *, resize: bool = False):
        super().__init__()
        self.prep, self.resizes = prep, resize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.resizes:  # always resized (an exact identity at the same size): no branch on the input shape
            x = resize(apply_policy(x, self.prep.size, self.prep.resize_policy), self.prep.size)
        return normalize(x, self.prep)

"""The model contract (``Classifier``), the one registry of model builders, and the factory.

Every model the toolkit trains is a ``Classifier``: a ``backbone`` mapping NCHW images to pooled features
(N, num_features) and a ``head`` mapping features to logits. Custom nets, torchvision nets and timm nets
are all wrapped this way, so freezing, per-group learning rates, checkpoint loading, export and one
parametrized test work the same for all of them.
"""
from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torchinfo import summary

from classifier.errors import ClassifierError, unknown_choice
from classifier.preprocess import IMAGENET_MEAN, IMAGENET_STD

TIMM_PREFIX = "timm/"


class Classifier(nn.Module):
    """backbone (images -> pooled features) + head (features -> logits).

    ``first_conv``: name, inside ``backbone``, of the conv that reads the image (for in_chans adaptation).
    ``raw_head``: state-dict prefix of the classifier layer in the wrapped library model (e.g. ``fc`` for
    torchvision's resnet), so raw torchvision/timm state dicts can be mapped onto this wrapper.
    """

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, *, in_chans: int,
                 name: str = "", drop_rate: float = 0.0, first_conv: str | None = None,
                 raw_head: str | None = None):
        super().__init__()
        self.backbone = backbone
        self.num_features = int(num_features)
        self.in_chans = int(in_chans)
        self.name = name
        self.drop_rate = float(drop_rate)
        self.first_conv = first_conv if first_conv is not None else _first_conv_name(backbone)
        self.raw_head = raw_head
        self.backbone_frozen = False
        self.bn_stats_frozen = False  # fine-tuning with the pretrained BatchNorm statistics (--freeze-bn)
        self.reset_classifier(num_classes)
        # checkpoints saved with and without head dropout differ only in the Linear's key ("head.weight"
        # vs "head.1.weight"); accept either
        self.register_load_state_dict_pre_hook(_remap_head_keys)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one with ``num_classes`` outputs."""
        self.num_classes = int(num_classes)
        linear = nn.Linear(self.num_features, self.num_classes)
        self.head = nn.Sequential(nn.Dropout(self.drop_rate), linear) if self.drop_rate > 0 else linear

    def get_classifier(self) -> nn.Module:
        return self.head

    @property
    def head_linear_prefix(self) -> str:
        """State-dict prefix of the head's Linear: ``head`` or ``head.1``."""
        return "head" if isinstance(self.head, nn.Linear) else "head.1"

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and (self.backbone_frozen or self.bn_stats_frozen):
            # a frozen feature extractor must not drift: keep its normalisation statistics fixed (and so
            # does fine-tuning with --freeze-bn, where the BatchNorm scale and shift still learn)
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._NormBase):
                    m.eval()
        return self


def _first_conv_name(module: nn.Module) -> str | None:
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            return name
    return None


def _remap_head_keys(module: Classifier, state_dict, prefix, *args):
    want = prefix + module.head_linear_prefix + "."
    for other in (prefix + "head.", prefix + "head.1."):
        if other == want:
            continue
        for suffix in ("weight", "bias"):
            if other + suffix in state_dict and want + suffix not in state_dict:
                state_dict[want + suffix] = state_dict.pop(other + suffix)


# ---------------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class CamTarget:
    """Where heat maps read a model (classifier/trust/explain.py): ``layer``, the submodule (of the
    Classifier) whose output is the last spatial feature map (N, C, h, w), or for vision transformers the
    token sequence (N, prefix_tokens + h*w, C); ``pooled``: that map goes through global average pooling
    straight into the linear head, so plain CAM (no gradients) applies."""

    layer: str
    pooled: bool = False
    prefix_tokens: int | None = None  # tokens: drop this many (class/register tokens), reshape the rest to h x w
    grid: tuple[int, int] | None = None  # tokens: the patch grid (h, w) at the trained size; None: square


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str  # 'custom' | 'torchvision' | 'timm'
    has_pretrained: bool
    pretrained_mean: tuple[float, ...] | None  # normalisation the pretrained weights expect; None if none
    pretrained_std: tuple[float, ...] | None
    min_size: int  # smallest input side the net accepts
    default_size: int  # input side it is designed for
    builder: Callable[..., Classifier] = field(repr=False, compare=False, default=None)
    description: str = ""
    sized: bool = False  # the builder takes ``img_size``: the net is built for its input size (position embeddings)
    # why an input side does not run (None if it does), for nets whose accepted sizes are found by trying them
    size_problem: Callable[[int], str | None] | None = field(repr=False, compare=False, default=None)
    # the model -> where heat maps read it (CamTarget); None: no known target layer
    cam_target: Callable[[nn.Module], CamTarget] | None = field(repr=False, compare=False, default=None)

    def accepted_sizes(self) -> str:
        """The input sides this model accepts, in words: "28 up", or the sides that ran of those tried."""
        if self.size_problem is None:
            return f"{self.min_size} up"
        tried = sorted({*PROBE_SIZES, self.default_size})
        ok = [s for s in tried if self.size_problem(s) is None]
        return f"{', '.join(map(str, ok)) or 'none'} (tried: {', '.join(map(str, tried))})"

    def fit_size(self, side: int) -> int:
        """The side to use for data of native side ``side``: raised to the model's minimum."""
        return max(side, self.min_size)

    def check_size(self, size: int) -> None:
        """One-line ClassifierError when the model cannot run on ``size`` x ``size`` input."""
        if self.size_problem is not None:
            problem = self.size_problem(size)
            if problem:
                raise ClassifierError(f"img_size={size} does not fit model '{self.name}': it runs at input sides "
                                      f"{self.accepted_sizes()}")
        elif size < self.min_size:
            raise ClassifierError(f"img_size={size} does not fit model '{self.name}': it accepts input sides of "
                                  f"{self.accepted_sizes()}")


PROBE_SIZES = (16, 32, 64, 128, 224, 256, 384)  # sides tried to tell a user which ones a model runs at


_REGISTRY: dict[str, ModelEntry] = {}
SOURCES = ("custom", "torchvision", "timm")


def register_model(name: str, *, source: str, pretrained: bool = False, min_size: int = 32,
                   default_size: int | None = None, mean=None, std=None, description: str = "",
                   cam_layer: str | Callable[[nn.Module], str] | None = None, cam_pooled: bool = False):
    """Decorator: register ``builder(*, num_classes, in_chans, pretrained, drop_rate, **kwargs)``.

    Pretrained models default to ImageNet mean/std and 224 px input; others to 32 px and no mean/std.
    ``cam_layer``: the heat maps' target layer (a submodule name, or model -> name when it depends on the
    builder's options); ``cam_pooled``: its output is global-average-pooled into the linear head.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")

    def decorate(builder):
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered")
        _REGISTRY[name] = ModelEntry(
            name=name, source=source, has_pretrained=pretrained,
            pretrained_mean=tuple(mean or IMAGENET_MEAN) if pretrained else None,
            pretrained_std=tuple(std or IMAGENET_STD) if pretrained else None,
            min_size=int(min_size), default_size=int(default_size or (224 if pretrained else 32)),
            builder=builder, description=description or (builder.__doc__ or "").strip().split("\n")[0],
            cam_target=None if cam_layer is None else functools.partial(_fixed_cam_target, cam_layer, cam_pooled),
        )
        return builder

    return decorate


def _fixed_cam_target(layer, pooled: bool, model: nn.Module) -> CamTarget:
    return CamTarget(layer(model) if callable(layer) else layer, pooled)


def cam_target(model: Classifier) -> CamTarget:
    """Where heat maps read ``model`` (its registry entry's choice), or a one-line error if it has none."""
    entry = model_entry(model.name)
    if entry.cam_target is None:
        raise ClassifierError(f"model '{model.name}' has no heat-map target layer in the model registry")
    return entry.cam_target(model)


# Families too large to register name by name (timm's catalogue): prefix -> (entry_for(name), names(pattern)).
# Builders register themselves when ``classifier.models`` imports them; this module imports no builder.
_FAMILIES: dict[str, tuple[Callable[[str], ModelEntry], Callable[[str], list[str]]]] = {}


def register_family(prefix: str, entry_for: Callable[[str], ModelEntry], names: Callable[[str], list[str]]):
    """Models named ``prefix + anything``: ``entry_for(full name)`` builds the entry on demand."""
    _FAMILIES[prefix] = (entry_for, names)


def model_entry(name: str) -> ModelEntry:
    """Metadata for a registered name, or for any ``timm/<model>`` name (built from timm's config)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for prefix, (entry_for, _) in _FAMILIES.items():
        if name.startswith(prefix):
            return entry_for(name)
    raise unknown_choice("model", name, list(_REGISTRY))


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching an fnmatch pattern; ``timm/<pattern>`` lists timm's catalogue instead."""
    names = sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))
    for prefix, (_, family_names) in _FAMILIES.items():
        if pattern.startswith(prefix):
            names += family_names(pattern[len(prefix):])
    return names


def create_model(name: str, *, num_classes: int, in_chans: int = 3, pretrained: bool = False,
                 drop_rate: float | None = None, img_size: int | tuple | None = None, **kwargs) -> Classifier:
    """Build a registered model with a new ``num_classes`` head; ``drop_rate=None`` keeps its default.

    ``pretrained=True`` loads ImageNet weights (downloaded once into torch.hub's / timm's cache); a
    different ``in_chans`` adapts the first conv of those weights. ``img_size``: the input side (or (H, W))
    it will run at; nets built for one size (ViT, Swin, ...) are built for it, their pretrained position
    embeddings resampled; the others run at any size and ignore it. Extra kwargs go to the builder.
    """
    entry = model_entry(name)
    if num_classes < 1:
        raise ClassifierError(f"num_classes must be >= 1, got {num_classes}")
    if in_chans < 1:
        raise ClassifierError(f"in_chans must be >= 1, got {in_chans}")
    if pretrained and not entry.has_pretrained:
        raise ClassifierError(f"model '{name}' has no pretrained weights; train it from scratch "
                              f"(pretrained=False) or pick one of: {', '.join(pretrained_models())}")
    try:
        if entry.sized and img_size is not None:
            kwargs["img_size"] = img_size
        model = entry.builder(num_classes=num_classes, in_chans=in_chans, pretrained=pretrained,
                              drop_rate=drop_rate, **kwargs)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise ClassifierError(f"model '{name}': {err}") from None
        raise
    model.name = name
    return model


def pretrained_models() -> list[str]:
    return sorted(n for n, e in _REGISTRY.items() if e.has_pretrained) + [TIMM_PREFIX + "<any timm model>"]


# ------------------------------------------------------------------------------- training-time helpers

def freeze_backbone(model: Classifier) -> Classifier:
    """Feature extraction: no gradients into the backbone and its BatchNorm statistics fixed, even in
    ``model.train()`` mode. Only the head learns."""
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    model.backbone_frozen = True
    return model.train(model.training)


def unfreeze_backbone(model: Classifier) -> Classifier:
    for p in model.backbone.parameters():
        p.requires_grad_(True)
    model.backbone_frozen = False
    return model.train(model.training)


def param_groups(model: Classifier, *, lr: float, backbone_lr_mult: float = 1.0,
                 weight_decay: float = 0.0) -> list[dict]:
    """Optimiser groups: head at ``lr``, backbone at ``lr * backbone_lr_mult``; biases and norm weights
    (every parameter with fewer than 2 dims) get no weight decay; frozen parameters are left out."""
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "head" if name.startswith("head.") else "backbone"
        groups.setdefault((part, p.ndim > 1), []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items(), key=lambda kv: (kv[0][0] != "head", not kv[0][1])):
        out.append({
            "name": part if decay else f"{part}_no_decay",
            "params": params,
            "lr": lr if part == "head" else lr * backbone_lr_mult,
            "weight_decay": weight_decay if decay else 0.0,
        })
    return out


def model_summary(model: nn.Module, input_size, device="cpu") -> str:
    """torchinfo table (layers, output shapes, params, mult-adds) for one input size (int, (H, W) or
    (C, H, W)); batch of 2 so BatchNorm works. Falls back to a parameter count if torchinfo fails."""
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    if len(input_size) == 2:
        input_size = (getattr(model, "in_chans", 3), *input_size)
    try:
        with torch.random.fork_rng(devices=[]):  # its random input must not move a (resumed) run's random state
            stats = summary(model, input_size=(2, *input_size), device=device, verbose=0, depth=3,
                            col_names=("output_size", "num_params", "mult_adds"), mode="eval")
        return str(stats)
    except Exception as err:  # torchinfo cannot trace some exotic modules; a count still helps
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        return (f"{type(model).__name__}: {total:,} parameters ({trainable:,} trainable)\n"
                f"(no layer table: torchinfo failed: {reason})")


def model_from_checkpoint(ckpt: dict):
    """Rebuild the model described by a toolkit checkpoint and load its weights (eval mode, CPU)."""
    kwargs = (ckpt.get("config") or {}).get("extra") or {}  # builder options such as width or depth
    size = (ckpt.get("preprocessing") or {}).get("size")  # nets built for one input size: the trained one
    model = create_model(ckpt["model_name"], num_classes=ckpt["num_classes"], in_chans=ckpt["in_chans"],
                         img_size=tuple(size) if size else None, **kwargs)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise ClassifierError(
            f"checkpoint weights do not fit model '{ckpt['model_name']}': {_misfit(model.state_dict(), ckpt['model'])}"
        ) from None
    return model.eval()


def _misfit(target: dict, state: dict) -> str:
    """One line on how a state dict differs from a model's: counts and an example of each difference."""
    differences = {
        "missing": [k for k in target if k not in state],
        "unexpected": [k for k in state if k not in target],
        "of another shape": [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in state
                             if k in target and state[k].shape != target[k].shape],
    }
    return ", ".join(f"{len(keys)} {what} (e.g. {keys[0]})" for what, keys in differences.items() if keys)

"""ImageNet-pretrained nets (torchvision and timm) wrapped as ``Classifier``, and weight loading.

torchvision nets are built at 1000 classes without weights, cut before their classifier, wrapped, and
then given the ImageNet state dict through ``load_weights`` -- the same path a user's checkpoint takes,
so head dropping and first-conv adaptation are written once. timm nets are built by timm itself with
``num_classes=0`` (timm adapts ``in_chans`` and resolves its own weight sources and caches).
"""
from __future__ import annotations

import functools
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from classifier._compat import import_torchvision
from classifier.checkpoint import is_toolkit_checkpoint, load_state_file
from classifier.errors import ClassifierError, unknown_choice
from classifier.models.registry import (TIMM_PREFIX, CamTarget, Classifier, ModelEntry, _remap_head_keys,
                                       register_family, register_model)


# ------------------------------------------------------------------------------ first-conv adaptation

def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Conv weight (O, I, kH, kW) -> (O, in_chans, kH, kW), keeping the response to gray images.

    1 channel: sum over the input channels (a gray image replicated to RGB gives the same output).
    Otherwise: repeat the channels cyclically and scale by I / in_chans (timm's rule).
    """
    have = weight.shape[1]
    if in_chans == have:
        return weight
    dtype = weight.dtype
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        reps = -(-in_chans // have)
        w = w.repeat(1, reps, 1, 1)[:, :in_chans] * (have / in_chans)
    return w.to(dtype)


def _get_submodule_parent(root: nn.Module, name: str):
    parent_name, _, attr = name.rpartition(".")
    return (root.get_submodule(parent_name) if parent_name else root), attr


def set_input_channels(module: nn.Module, conv_name: str, in_chans: int) -> None:
    """Replace the conv ``conv_name`` by one reading ``in_chans`` channels (weights adapted)."""
    old = module.get_submodule(conv_name)
    if old.in_channels == in_chans:
        return
    if old.groups != 1:
        raise ClassifierError(f"cannot change input channels of grouped conv '{conv_name}'")
    new = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
                    dilation=old.dilation, bias=old.bias is not None, padding_mode=old.padding_mode)
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(old.weight, in_chans))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    parent, attr = _get_submodule_parent(module, conv_name)
    setattr(parent, attr, new)


# ---------------------------------------------------------------------------------------- torchvision

class TorchvisionVGGBody(nn.Module):
    """torchvision VGG up to the second 4096-d FC (state-dict keys as in torchvision)."""

    def __init__(self, vgg: nn.Module):
        super().__init__()
        self.features = vgg.features
        self.avgpool = vgg.avgpool
        self.classifier = vgg.classifier[:-1]  # Linear-ReLU-Dropout-Linear-ReLU-Dropout, keys 0..5 kept
        self.num_features = vgg.classifier[-1].in_features

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TorchvisionMobileNetV2Body(nn.Module):
    """torchvision MobileNetV2 features + global average pool (its classifier is Dropout+Linear)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.features = net.features
        self.num_features = net.last_channel

    def forward(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)


def _resnet_body(net: nn.Module) -> nn.Module:
    net.num_features = net.fc.in_features
    net.fc = nn.Identity()
    return net


# arch -> (body from the torchvision model, state-dict prefix of torchvision's classifier Linear, drop)
_TORCHVISION = {
    "vgg11": (TorchvisionVGGBody, "classifier.6", 0.0),
    "resnet18": (_resnet_body, "fc", 0.0),
    "mobilenet_v2": (TorchvisionMobileNetV2Body, "classifier.1", 0.2),
}


def torchvision_weights_file(arch: str) -> tuple[str, Path]:
    """(url, cache path) of the DEFAULT ImageNet weights, where torch.hub looks before downloading."""
    weights = import_torchvision().models.get_model_weights(arch).DEFAULT
    filename = os.path.basename(urlparse(weights.url).path)
    return weights.url, Path(torch.hub.get_dir()) / "checkpoints" / filename


def torchvision_imagenet_state(arch: str) -> dict:
    """ImageNet state dict via torch.hub's cache (downloaded on first use), read with weights_only."""
    url, cached = torchvision_weights_file(arch)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=True,
                                                  weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        if cached.exists():
            raise ClassifierError(f"cannot read cached ImageNet weights {cached} ({reason}); delete the file "
                                  f"to download it again") from None
        raise ClassifierError(f"ImageNet weights for {arch} are not cached and the download failed ({reason}); "
                              f"if offline, fetch {url} elsewhere and save it as {cached}") from None


def _build_torchvision(arch: str, *, num_classes, in_chans, pretrained, drop_rate, **kwargs) -> Classifier:
    make_body, raw_head, default_drop = _TORCHVISION[arch]
    net = import_torchvision().models.get_model(arch, weights=None, **kwargs)  # 1000 classes; head discarded
    body = make_body(net)
    model = Classifier(body, body.num_features, num_classes, in_chans=3, name=arch, raw_head=raw_head,
                       drop_rate=default_drop if drop_rate is None else drop_rate)
    if in_chans != 3:
        set_input_channels(model.backbone, model.first_conv, in_chans)
        model.in_chans = in_chans
    if pretrained:
        state = torchvision_imagenet_state(arch)
        state = {k: v for k, v in state.items() if not k.startswith(raw_head + ".")}  # the head is always new
        load_weights(model, state, label=f"torchvision {arch} ImageNet weights")
    return model


def _register_torchvision(arch: str, description: str, cam_layer: str, cam_pooled: bool) -> None:
    builder = functools.partial(_build_torchvision, arch)
    register_model(arch, source="torchvision", pretrained=True, min_size=32, default_size=224,
                   description=description, cam_layer=cam_layer, cam_pooled=cam_pooled)(builder)


# heat maps read the last conv stage; VGG's 4096-d FC layers come between it and the head, so no plain CAM
_register_torchvision("vgg11", "VGG-11 (torchvision), ImageNet weights; 4096-d features", "backbone.features", False)
_register_torchvision("resnet18", "ResNet-18 (torchvision), ImageNet weights; 512-d features", "backbone.layer4", True)
_register_torchvision("mobilenet_v2", "MobileNetV2 (torchvision), ImageNet weights; 1280-d features",
                      "backbone.features", True)


# ----------------------------------------------------------------------------------------------- timm

def import_timm():
    import_torchvision()  # timm imports torchvision; this makes that import work on CPU-only torch
    import timm  # after the torchvision workaround above, which must run first

    return timm


@functools.lru_cache(maxsize=None)
def timm_entry(name: str) -> ModelEntry:
    """Registry entry for ``timm/<model[.tag]>``, from timm's pretrained config.

    Nets timm marks ``fixed_input_size`` (ViT/DeiT, Swin, ...) are built for the input size asked
    (``img_size``), their pretrained position embeddings resampled by timm; which sizes one runs at is
    found by running it on shapes only (the meta device), before any data is loaded.
    """
    arch = name[len(TIMM_PREFIX):]
    timm = import_timm()
    if not timm.is_model(arch):
        raise unknown_choice("model", name, [TIMM_PREFIX + n for n in timm.list_models()])
    try:
        cfg = timm.get_pretrained_cfg(arch)
    except RuntimeError as err:  # an unknown tag on a known architecture
        raise ClassifierError(f"model '{name}': {err}") from None
    cfg = cfg.to_dict() if cfg is not None else {}
    has_pretrained = bool(timm.is_model_pretrained(arch) and (cfg.get("url") or cfg.get("hf_hub_id")))
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    sized = bool(cfg.get("fixed_input_size"))
    return ModelEntry(
        name=name, source="timm", has_pretrained=has_pretrained,
        pretrained_mean=tuple(cfg["mean"]) if has_pretrained and "mean" in cfg else None,
        pretrained_std=tuple(cfg["std"]) if has_pretrained and "std" in cfg else None,
        min_size=size if sized else 32, default_size=size,
        builder=functools.partial(_build_timm, arch), description=f"timm {arch}",
        sized=sized, size_problem=functools.partial(timm_size_problem, arch, sized), cam_target=timm_cam_target,
    )


def timm_cam_target(model: Classifier) -> CamTarget:
    """Vision transformers (a ``blocks`` stack over patch tokens): the last block's first norm, tokens
    reshaped to the patch grid. CNNs: the module of timm's last ``feature_info`` stage; plain CAM applies
    when timm's head pools it by averaging straight into the classifier (checked by explain.py)."""
    net = model.backbone
    if hasattr(net, "blocks") and hasattr(net, "patch_embed") and hasattr(net.blocks[-1], "norm1"):
        grid = getattr(net.patch_embed, "grid_size", None)
        return CamTarget(f"backbone.blocks.{len(net.blocks) - 1}.norm1",
                         prefix_tokens=getattr(net, "num_prefix_tokens", 1), grid=tuple(grid) if grid is not None else None)
    info = getattr(net, "feature_info", None)
    if not info:
        raise ClassifierError(f"model '{model.name}' has no feature stages timm names; no heat-map target layer")
    last = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
    pooled = getattr(getattr(net, "global_pool", None), "pool_type", None) == "avg"
    return CamTarget(f"backbone.{last}", pooled)


@functools.lru_cache(maxsize=None)
def timm_size_problem(arch: str, sized: bool, side: int) -> str | None:
    """Why timm's ``arch`` cannot run on side x side images (one line), or None if it can. Shapes only: the
    net is built and run on the meta device, so no memory or time goes into weights or arithmetic."""
    timm = import_timm()
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = timm.create_model(arch, pretrained=False, num_classes=0, **({"img_size": side} if sized else {}))
            net.eval()(torch.zeros(2, 3, side, side))
    except TypeError as err:
        if "img_size" in str(err):  # marked fixed-size, but it cannot be built for another size
            return None if side == int(timm.get_pretrained_cfg(arch).input_size[-1]) else "fixed input size"
        raise
    except (RuntimeError, AssertionError, ValueError, ZeroDivisionError) as err:
        return (str(err).strip().splitlines() or [type(err).__name__])[0][:100]
    return None


def timm_names(pattern: str) -> list[str]:
    return [TIMM_PREFIX + n for n in import_timm().list_models(pattern)]


register_family(TIMM_PREFIX, timm_entry, timm_names)


def _build_timm(arch: str, *, num_classes, in_chans, pretrained, drop_rate, **kwargs) -> Classifier:
    """``img_size`` in kwargs (nets built for one input size): timm builds the net for it and, with pretrained
    weights, resamples their position embeddings (and relative-position tables) to it as it loads them."""
    timm = import_timm()
    if "img_size" in kwargs and _pair(kwargs["img_size"]) == tuple(timm.get_pretrained_cfg(arch).input_size[-2:]):
        del kwargs["img_size"]  # its own size: also right for nets that cannot be built for another
    try:
        net = timm.create_model(arch, pretrained=pretrained, num_classes=0, in_chans=in_chans, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        if not pretrained:
            raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ClassifierError(
            f"cannot load pretrained weights for timm/{arch} ({reason}); if offline, put them in the Hugging "
            f"Face cache ({_hf_cache_dir()}) and set HF_HUB_OFFLINE=1, or pass "
            f"pretrained_cfg_overlay=dict(file='weights.pth')") from None
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    first_conv = cfg.get("first_conv")
    if isinstance(first_conv, (list, tuple)):
        first_conv = first_conv[0]
    try:
        if not isinstance(net.get_submodule(first_conv), nn.Conv2d):
            first_conv = None
    except (AttributeError, TypeError):
        first_conv = None
    num_features = getattr(net, "head_hidden_size", None) or net.num_features
    return Classifier(net, num_features, num_classes, in_chans=in_chans, first_conv=first_conv,
                      raw_head=cfg.get("classifier"), drop_rate=drop_rate or 0.0)


def _pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants  # timm's dependency; only for this message

        return str(constants.HF_HUB_CACHE)
    except Exception:
        return "~/.cache/huggingface/hub"


# ------------------------------------------------------------------------------------- weight loading

@dataclass
class LoadReport:
    """What ``load_weights`` did. Keys are in the model's naming (``backbone.*`` / ``head.*``)."""
    source: str
    loaded: list[str] = field(default_factory=list)  # copied unchanged
    adapted: list[str] = field(default_factory=list)  # first conv, input channels converted
    dropped: list[str] = field(default_factory=list)  # in the checkpoint but not used (head of wrong size)
    missing: list[str] = field(default_factory=list)  # model tensors the checkpoint did not provide
    notes: dict[str, str] = field(default_factory=dict, repr=False)  # key -> shape change, for humans

    def __str__(self) -> str:
        def show(keys):
            return ", ".join(k + (f" {self.notes[k]}" if k in self.notes else "") for k in keys[:4]) + (
                ", ..." if len(keys) > 4 else "")

        parts = [f"loaded {len(self.loaded) + len(self.adapted)} tensors from {self.source}"]
        if self.adapted:
            parts.append(f"adapted input channels of {show(self.adapted)}")
        if self.dropped:
            parts.append(f"dropped {show(self.dropped)}")
        if self.missing:
            parts.append(f"newly initialised {show(self.missing)}")
        return "; ".join(parts)


_STATE_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "net")


def _read_state(source) -> tuple[str, dict]:
    if isinstance(source, (str, os.PathLike)):
        label, obj = str(source), load_state_file(source)
    elif isinstance(source, dict):
        label, obj = "state dict", source
    else:
        raise ClassifierError(f"cannot load weights from a {type(source).__name__}; give a path or a state dict")
    if is_toolkit_checkpoint(obj):
        obj = obj["model"]
    elif not all(torch.is_tensor(v) for v in obj.values()):
        nested = [k for k in _STATE_KEYS if isinstance(obj.get(k), dict)]
        if not nested:
            raise ClassifierError(f"{label} holds no state dict (keys: {', '.join(map(str, list(obj)[:8]))})")
        obj = obj[nested[0]]
    bad = [k for k, v in obj.items() if not torch.is_tensor(v)]
    if bad:
        raise ClassifierError(f"{label}: entry '{bad[0]}' is a {type(obj[bad[0]]).__name__}, not a tensor")
    return label, obj


def _to_wrapper_keys(model: Classifier, state: dict) -> dict:
    """Map a raw torchvision/timm state dict (or one from DataParallel/torch.compile) onto our keys."""
    out = {}
    for k, v in state.items():
        for junk in ("module.", "_orig_mod."):
            if k.startswith(junk):
                k = k[len(junk):]
        out[k] = v
    if not any(k.startswith(("backbone.", "head.")) for k in out):
        raw_heads = model.raw_head if isinstance(model.raw_head, (list, tuple)) else [model.raw_head]
        raw_heads = [h for h in raw_heads if h]
        mapped = {}
        for k, v in out.items():
            head = next((h for h in raw_heads if k == h or k.startswith(h + ".")), None)
            if head is not None and head == raw_heads[0]:
                mapped[model.head_linear_prefix + k[len(head):]] = v
            elif head is not None:
                mapped["head." + k] = v  # extra heads (e.g. timm's distillation head): dropped below
            else:
                mapped["backbone." + k] = v
        out = mapped
    _remap_head_keys(model, out, "")
    return out


def load_weights(model: Classifier, source, *, strict_body: bool = True, label: str | None = None) -> LoadReport:
    """Load a toolkit checkpoint, a plain state dict file (.pt/.pth/.safetensors) or an in-memory dict.

    Head tensors of another shape are dropped (reported); a different input-channel count adapts the first
    conv; body tensors that do not fit raise ClassifierError (``strict_body=False``: skip and report them).
    """
    src_label, state = _read_state(source)
    report = LoadReport(source=label or src_label)
    state = _to_wrapper_keys(model, state)
    target = model.state_dict()
    first = f"backbone.{model.first_conv}.weight" if model.first_conv else None
    new, misfit = {}, []
    for k, v in state.items():
        t = target.get(k)
        if t is None:
            (report.dropped if k.startswith("head.") or not strict_body else misfit).append(k)
            report.notes[k] = "(not in model)"
        elif v.shape == t.shape:
            new[k] = v
            report.loaded.append(k)
        elif k == first and v.ndim == 4 and v.shape[0] == t.shape[0] and v.shape[2:] == t.shape[2:]:
            new[k] = adapt_input_conv(v, t.shape[1])
            report.adapted.append(k)
            report.notes[k] = f"{v.shape[1]}->{t.shape[1]}"
        else:
            (report.dropped if k.startswith("head.") or not strict_body else misfit).append(k)
            report.notes[k] = f"{tuple(v.shape)}->{tuple(t.shape)}"
    for k in target:
        if k not in new and not k.endswith("num_batches_tracked"):  # old BN checkpoints lack the counter
            (report.missing if k.startswith("head.") or not strict_body else misfit).append(k)
            report.notes.setdefault(k, "(not in checkpoint)")
    if misfit:
        examples = "; ".join(f"{k} {report.notes[k]}" for k in misfit[:3])
        raise ClassifierError(f"checkpoint {report.source} does not fit model '{model.name or type(model).__name__}'"
                              f": {len(misfit)} body tensors differ ({examples})")
    model.load_state_dict({**target, **new})
    return report

"""Heat maps of where a prediction came from, at the input image's own height and width, in [0, 1].

- Grad-CAM (Selvaraju et al. 2017) through the ``grad-cam`` package on the target layer the model registry
  names for each family (``CamTarget``; vision transformers' tokens are reshaped to their patch grid).
- Plain CAM (Zhou et al. 2016) for nets whose last feature map is global-average-pooled straight into the
  linear head: the head's weights of the top class summed over that map's channels, no gradients. Its
  mean over the map plus the bias is that class's logit. ``export.py --cam`` adds it as a second ONNX output
  (``classifier/trust/graph.py``).

A heat map at model size goes back onto the image through the resize policy's box (``policy_window``):
resized to the box, cropped to the image (pad) or zero outside it (crop).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from classifier.errors import ClassifierError
from classifier.models import cam_target
from classifier.preprocess import Preprocessing, policy_window

CAM_OUTPUT = "cam"


class FeatureMap:
    """Context manager capturing the output of ``model``'s target layer during a forward pass."""

    def __init__(self, model: nn.Module, layer: str):
        self.module, self.value = model.get_submodule(layer), None

    def __enter__(self):
        self.handle = self.module.register_forward_hook(self._keep)
        return self

    def _keep(self, module, inputs, output):
        self.value = output

    def __exit__(self, *exc):
        self.handle.remove()
        return False


def head_linear(model) -> nn.Linear:
    return model.get_submodule(model.head_linear_prefix)


def top_class_cam(model: nn.Module, logits: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
    """Plain CAM (N, h, w): the head's weights of each image's top class summed over the map's channels."""
    weights = head_linear(model).weight[logits.argmax(dim=1)]  # (N, C) rows of the top classes
    return torch.einsum("nc,nchw->nhw", weights, feature_map)


class CamModel(nn.Module):
    """``model`` with a second output: the plain CAM of the top class (N, h, w) at the feature resolution.

    Only for pooled targets (feature map -> global average pool -> linear head); ``check_plain_cam``
    refuses the others with a one-line error.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        check_plain_cam(model)
        self.model, self.layer = model, cam_target(model).layer

    def forward(self, x):
        with FeatureMap(self.model, self.layer) as fm:
            logits = self.model(x)
        return logits, top_class_cam(self.model, logits, fm.value)


def plain_cam(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, CAM of the top class at the feature resolution) for model input ``x``."""
    with torch.inference_mode():
        return CamModel(model).eval()(x)


def check_plain_cam(model: nn.Module) -> None:
    """Plain CAM needs the target map pooled by averaging straight into the head: checked on a random
    input (the pooled map must give the model's logits), so a registry entry that is wrong cannot pass."""
    target = cam_target(model)
    if not target.pooled or target.prefix_tokens is not None:
        raise ClassifierError(f"plain CAM needs a net whose last feature map is averaged straight into a linear "
                              f"head; '{model.name}' is not one (Grad-CAM heat maps still work: explain=True)")
    size = getattr(model, "_cam_probe_size", 64)
    x = torch.randn(2, model.in_chans, size, size)
    was = model.training
    model.eval()
    try:
        with torch.inference_mode(), FeatureMap(model, target.layer) as fm:
            logits = model(x)
        linear = head_linear(model)
        again = fm.value.float().mean(dim=(2, 3)) @ linear.weight.T + linear.bias
    finally:
        model.train(was)
    if fm.value is None or fm.value.ndim != 4 or not torch.allclose(again, logits, atol=1e-4, rtol=1e-4):
        raise ClassifierError(f"plain CAM does not apply to '{model.name}': its head is not global average "
                              "pooling + linear on the registry's target layer (Grad-CAM still works)")


def _token_reshape(target):
    def reshape(tokens):
        grid = tokens[:, target.prefix_tokens:]
        h, w = target.grid or (int(round(grid.shape[1] ** 0.5)),) * 2
        return grid.reshape(grid.shape[0], h, w, grid.shape[2]).permute(0, 3, 1, 2)

    return reshape


def grad_cam(model: nn.Module, x: torch.Tensor, classes=None) -> np.ndarray:
    """Grad-CAM maps (N, H, W) at the model input's size, in [0, 1], for ``classes`` (default: the top class)."""
    from classifier._compat import import_torchvision

    import_torchvision()  # pytorch_grad_cam imports torchvision, which needs this first
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    target = cam_target(model)
    model.eval()
    targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
    reshape = _token_reshape(target) if target.prefix_tokens is not None else None
    with torch.enable_grad(), GradCAM(model=model, target_layers=[model.get_submodule(target.layer)],
                                      reshape_transform=reshape) as cam:
        maps = cam(input_tensor=x.detach().clone().requires_grad_(True), targets=targets)
    return np.clip(np.nan_to_num(maps), 0, 1).astype(np.float32)


def normalise(maps) -> np.ndarray:
    """Each map min-max scaled to [0, 1] (a constant map becomes 0)."""
    maps = np.asarray(maps, dtype=np.float32)
    lo = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - lo
    return np.divide(maps - lo, span, out=np.zeros_like(maps), where=span > 0)


def to_image(heatmap: np.ndarray, height: int, width: int, prep: Preprocessing) -> np.ndarray:
    """A map over the model input (any resolution) -> the image's own height x width, through the resize
    policy's box; values kept in [0, 1]."""
    top, left, box_h, box_w = (int(v) for v in policy_window(height, width, prep.size, prep.resize_policy))
    t = torch.as_tensor(np.asarray(heatmap, np.float32))[None, None]
    box = F.interpolate(t, size=(box_h, box_w), mode="bilinear", align_corners=False)[0, 0]
    out = torch.zeros(height, width)
    if top >= 0 and left >= 0:  # crop (or squash): the box lies inside the image
        out[top:top + box_h, left:left + box_w] = box
    else:  # pad: the image lies inside the box
        out = box[-top:-top + height, -left:-left + width]
    return out.clamp(0, 1).numpy()


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 RGB (H, W, 3): the image (gray or RGB, uint8 HWC) under the heat map in the jet colours."""
    from matplotlib import colormaps  # here: only overlays need matplotlib's colour maps

    base = np.asarray(image, np.float32)
    base = np.repeat(base, 3, axis=2) if base.ndim == 3 and base.shape[2] == 1 else base[..., :3]
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=2)
    colours = colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3] * 255
    return np.clip((1 - alpha) * base + alpha * colours, 0, 255).round().astype(np.uint8)


def write_overlays(folder, predictions, images) -> None:
    """One PNG per image in ``folder``: the image under its prediction's heat map, the label written on top."""
    from PIL import Image, ImageDraw

    from classifier.fileio import make_output_dir

    folder = make_output_dir(folder)
    for i, (prediction, image) in enumerate(zip(predictions, images)):
        picture = Image.fromarray(overlay(image, prediction.heatmap))
        side = max(picture.size)
        if side < 128:  # small images: enlarged so the label is readable
            picture = picture.resize((picture.width * 128 // side, picture.height * 128 // side), Image.NEAREST)
        ImageDraw.Draw(picture).text((2, 2), f"{prediction.label} {prediction.confidence:.0%}", fill=(255, 255, 255))
        stem = Path(prediction.path).stem if prediction.path else "image"
        picture.save(folder / f"{i:04d}-{stem}.png")


def with_heatmaps(predictor, grid: dict) -> dict:
    """The report's sample grid with each wrong prediction's image under its heat map (RGB); unchanged when
    the model cannot give heat maps (an export without a ``cam`` output)."""
    wrong = np.flatnonzero((grid["y_true"] >= 0) & (grid["y_true"] != grid["y_pred"]))
    if not len(wrong) or (predictor.model is None and predictor.graph_outputs is None):
        return grid
    try:
        maps = predictor.heatmaps([grid["images"][i] for i in wrong])
    except ClassifierError:
        return grid
    images = np.stack([_rgb(im) for im in grid["images"]])
    for i, heatmap in zip(wrong, maps):
        images[i] = overlay(grid["images"][i], heatmap)
    return {**grid, "images": images}


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]

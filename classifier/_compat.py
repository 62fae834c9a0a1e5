"""Import torchvision (and so timm) on a CPU-only torch.

PyPI's torchvision wheels are CUDA builds. Paired with a CPU build of torch, their compiled operators
fail to load and ``import torchvision`` dies with "operator torchvision::nms does not exist"
(pytorch/vision#9085). The pure-Python parts we use (models, datasets, transforms) only need the
operator *schemas* to exist, so we declare the two missing ones and import again. This runs only when
the import fails in exactly that way; on a matching torch/torchvision pair it does nothing.
"""
from __future__ import annotations

import sys

_MISSING_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the torch.library.Library alive for the life of the process


def import_torchvision():
    """Return the torchvision module, working around a CPU torch / CUDA torchvision mismatch."""
    global _library
    try:
        import torchvision
        return torchvision
    except RuntimeError as err:
        if "torchvision::nms does not exist" not in str(err):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # drop the half-imported package before trying again
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _MISSING_OPS.values():
        _library.define(schema)
    import torchvision
    return torchvision

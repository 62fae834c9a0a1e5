"""Models: one registry and factory for custom, torchvision and timm nets, all wrapped as ``Classifier``.

    model = create_model("resnet18", num_classes=10, in_chans=1, pretrained=True)
    freeze_backbone(model)
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-3, weight_decay=0.05))
"""
from classifier.models.registry import (
    CamTarget,
    Classifier,
    ModelEntry,
    cam_target,
    create_model,
    freeze_backbone,
    list_models,
    model_entry,
    model_from_checkpoint,
    model_summary,
    param_groups,
    pretrained_models,
    register_model,
    unfreeze_backbone,
)
from classifier.models import custom  # noqa: F401  (registers the custom nets)
from classifier.models.pretrained import (
    LoadReport,
    adapt_input_conv,
    load_weights,
    torchvision_weights_file,
)

__all__ = [
    "Classifier", "CamTarget", "cam_target", "ModelEntry", "LoadReport", "create_model", "register_model", "model_entry", "list_models",
    "pretrained_models", "freeze_backbone", "unfreeze_backbone", "param_groups", "load_weights",
    "adapt_input_conv", "model_from_checkpoint", "model_summary", "torchvision_weights_file",
]

"""timm models at the input size asked: nets built for one size (ViT/DeiT, Swin) are built for it, with
pretrained position embeddings resampled the way timm does it; sizes a net cannot take are refused in one
line naming the sides it runs at. Small random-weight variants only (no downloads)."""
from __future__ import annotations

import pytest
import torch

from classifier.config import resolve_for_model, make_config
from classifier.errors import ClassifierError
from classifier.models import create_model, model_entry, model_from_checkpoint
from classifier.models.pretrained import import_timm

SMALL = {"depth": 2}  # fewer blocks: same family, same size handling, a fraction of the build time
FAMILIES = {  # timm name -> builder kwargs shrinking it
    "vit_tiny_patch16_224": SMALL,
    "deit_tiny_patch16_224": SMALL,
    "swin_tiny_patch4_window7_224": {"depths": (1, 1, 1, 1), "embed_dim": 24, "num_heads": (1, 1, 1, 1)},
    "convnext_atto": {},
    "efficientnet_b0": {},
    "mobilenetv3_small_050": {},
    "resnet10t": {},
}


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("arch", FAMILIES)
def test_family_trains_at_the_size_asked(arch, size):
    name = f"timm/{arch}"
    model_entry(name).check_size(size)
    model = create_model(name, num_classes=3, in_chans=1, img_size=size, **FAMILIES[arch])
    logits = model(torch.randn(2, 1, size, size))
    assert logits.shape == (2, 3)
    logits.sum().backward()


def test_position_embeddings_are_resampled_from_pretrained_weights(tmp_path):
    """ImageNet-format weights of the 224 net (random here, in a file timm reads): built at 32, the 14x14 grid of
    position embeddings becomes 2x2 by timm's own resampling, the other weights load unchanged."""
    timm = import_timm()
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, **SMALL)
    weights = tmp_path / "vit.pth"
    torch.save(source.state_dict(), weights)
    model = create_model("timm/vit_tiny_patch16_224", num_classes=3, pretrained=True, img_size=32,
                         pretrained_cfg_overlay={"file": str(weights)}, **SMALL)
    expected = timm.layers.resample_abs_pos_embed(source.pos_embed.detach(), new_size=(2, 2), num_prefix_tokens=1)
    assert model.backbone.pos_embed.shape == (1, 1 + 4, 192)
    torch.testing.assert_close(model.backbone.pos_embed.detach(), expected)
    torch.testing.assert_close(model.backbone.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_checkpoint_rebuilds_the_net_at_its_trained_size():
    model = create_model("timm/vit_tiny_patch16_224", num_classes=3, img_size=32, **SMALL)
    ckpt = {"model": model.state_dict(), "model_name": "timm/vit_tiny_patch16_224", "num_classes": 3, "in_chans": 3,
            "preprocessing": {"size": [32, 32]}, "config": {"extra": SMALL}}
    assert model_from_checkpoint(ckpt).backbone.pos_embed.shape == (1, 5, 192)


@pytest.mark.parametrize("name,size,sides", [
    ("timm/vit_tiny_patch16_224", 8, "16, 32, 64, 128, 224, 256, 384"),
    ("timm/crossvit_tiny_240", 32, "240"),
    ("timm/convnext_atto", 16, "32, 64, 128, 224, 256, 384"),
])
def test_a_size_the_net_cannot_take_is_refused_before_data_loads(name, size, sides):
    with pytest.raises(ClassifierError) as err:
        resolve_for_model(make_config({"model": name, "img_size": size}))
    assert str(err.value).startswith(f"img_size={size} does not fit model '{name}': it runs at input sides {sides} "
                                     "(tried: 16, 32, 64, 128, 224, ")

"""Heat maps (classifier/trust/explain.py): Grad-CAM through the grad-cam package, plain CAM, and the
exported ``cam`` output."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from classifier.errors import ClassifierError
from classifier.models import create_model
from classifier.preprocess import Preprocessing
from classifier.trust.explain import grad_cam, head_linear, plain_cam, to_image


def test_plain_cam_equals_a_hand_computation():
    torch.manual_seed(0)
    model = create_model("resnet", num_classes=4, in_chans=3, width=8).eval()
    x = torch.randn(3, 3, 32, 32)
    logits, cam = plain_cam(model, x)
    with torch.inference_mode():
        fmap = model.backbone.stages(model.backbone.stem(x))  # the registry's target layer, by hand
    linear = head_linear(model)
    top = logits.argmax(1)
    with torch.inference_mode():
        by_hand = (linear.weight[top][:, :, None, None] * fmap).sum(1)
    torch.testing.assert_close(cam, by_hand, atol=1e-5, rtol=1e-5)
    # its mean plus the bias is the top logit
    with torch.inference_mode():
        bias = linear.bias[top]
    torch.testing.assert_close(cam.mean((1, 2)) + bias, logits.max(1).values, atol=1e-4, rtol=1e-4)


def test_plain_cam_refuses_heads_that_are_not_pooled_linear():
    with pytest.raises(ClassifierError, match="plain CAM"):
        plain_cam(create_model("lenet5", num_classes=3, in_chans=1).eval(), torch.randn(1, 1, 28, 28))


@pytest.mark.parametrize("policy", ["squash", "crop", "pad"])
def test_heat_map_goes_back_to_the_image_size(policy):
    prep = Preprocessing(size=(16, 16), channels=1, mean=(0.5,), std=(0.5,), resize_policy=policy)
    small = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    out = to_image(small, 30, 50, prep)
    assert out.shape == (30, 50) and out.min() >= 0 and out.max() <= 1


def test_grad_cam_and_predict_explain_give_image_sized_maps(tmp_path):
    import classifier
    from PIL import Image
    from tests.trust_run import trust_run

    model = create_model("lenet5", num_classes=3, in_chans=1).eval()
    maps = grad_cam(model, torch.randn(2, 1, 28, 28))
    assert maps.shape == (2, 28, 28) and maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0
    run, onnx_path, data = trust_run()
    wide = tmp_path / "wide.png"
    Image.open(next(data.rglob("*.png"))).resize((40, 24)).save(wide)
    preds = classifier.load(run.dir / "best.pt").predict([wide], explain=True)
    assert preds[0].heatmap.shape == (24, 40)
    assert preds[0].heatmap.dtype == np.float32 and 0 <= preds[0].heatmap.min() <= preds[0].heatmap.max() <= 1
    preds.save(tmp_path / "out")
    assert len(list((tmp_path / "out" / "explain").glob("*.png"))) == 1


def test_onnx_cam_output_equals_pytorch():
    from classifier.checkpoint import load_checkpoint
    from classifier.inference import Predictor
    from classifier.models import model_from_checkpoint
    from tests.trust_run import trust_run

    run, onnx_path, _ = trust_run()
    model = model_from_checkpoint(load_checkpoint(run.dir / "best.pt"))
    x = torch.randn(4, 3, 16, 16)
    _, cam = plain_cam(model, x)
    outputs = Predictor.load(onnx_path).graph_outputs(x.numpy())
    assert list(outputs) == ["logits", "ood_score", "cam"]
    np.testing.assert_allclose(outputs["cam"], cam.numpy(), atol=1e-4)


def test_grad_cam_on_a_vision_transformer_reshapes_its_tokens():
    model = create_model("timm/vit_tiny_patch16_224", num_classes=3, in_chans=3, img_size=32).eval()
    from classifier.models import cam_target

    target = cam_target(model)
    assert target.prefix_tokens == 1 and target.grid == (2, 2)
    maps = grad_cam(model, torch.randn(2, 3, 32, 32))
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1

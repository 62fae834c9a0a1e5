"""Model registry, the Classifier contract, freezing, optimiser groups and weight loading."""
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from classifier._compat import import_torchvision
from classifier.checkpoint import save_checkpoint
from classifier.errors import ClassifierError
from classifier.models import (
    Classifier,
    create_model,
    freeze_backbone,
    list_models,
    load_weights,
    model_entry,
    model_summary,
    param_groups,
    torchvision_weights_file,
    unfreeze_backbone,
)

tv = import_torchvision()
TIMM_MODEL = "timm/mobilenetv3_small_050"


def _first_conv_weight(model: Classifier) -> torch.Tensor:
    return model.backbone.get_submodule(model.first_conv).weight


def _backbone_state(model: Classifier) -> dict:
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


@pytest.mark.parametrize("name", list_models() + [TIMM_MODEL])
def test_model_contract(name):
    entry = model_entry(name)
    size = entry.min_size
    for in_chans in (1, 3):
        torch.manual_seed(0)
        model = create_model(name, num_classes=5, in_chans=in_chans)
        assert isinstance(model, Classifier) and isinstance(model.backbone, nn.Module)
        assert (model.name, model.num_classes, model.in_chans) == (name, 5, in_chans)
        assert all(k.startswith(("backbone.", "head.")) for k in model.state_dict())
        assert _first_conv_weight(model).shape[1] == in_chans

        x = torch.randn(2, in_chans, size, size)
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features)
        logits = model(x)
        assert logits.shape == (2, 5)
        logits.square().mean().backward()
        assert _first_conv_weight(model).grad is not None
        assert model.get_classifier() is model.head

    model.reset_classifier(7)
    assert model.num_classes == 7
    assert model(x).shape == (2, 7)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 7)


def test_metadata():
    assert model_entry("vgg11").min_size == 32 and model_entry("vgg11").default_size == 224
    assert model_entry("resnet18").pretrained_mean == (0.485, 0.456, 0.406)
    lenet = model_entry("lenet5")
    assert (lenet.source, lenet.has_pretrained, lenet.pretrained_mean, lenet.default_size) == ("custom", False, None, 28)
    timm_entry = model_entry(TIMM_MODEL)
    assert timm_entry.source == "timm" and timm_entry.default_size == 224 and timm_entry.pretrained_std is not None
    assert list_models("deepnet-*") == ["deepnet-conv", "deepnet-res", "deepnet-skip"]
    assert TIMM_MODEL in list_models("timm/mobilenetv3_small*")


def test_custom_options():
    drop = create_model("lenet5-dropout", num_classes=10, in_chans=1)
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.2 for m in drop.modules()) == 2
    assert create_model("vggnet", num_classes=10, width=8).num_features == 32
    assert create_model("deepnet-skip", num_classes=10, width=8, depth=3, growth=4).num_features == 8 + 3 * 4
    deep = create_model("deepnet-res", num_classes=10, depth=6, width=8)
    assert deep(torch.randn(2, 3, 28, 28)).shape == (2, 10)
    for size in (28, 32, 64):  # LeNet-5 at MNIST size, classic size and larger
        assert create_model("lenet5", num_classes=10, in_chans=1)(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_unknown_model_suggests_close_matches():
    with pytest.raises(ClassifierError, match="unknown model 'resnet19'.*did you mean.*resnet18"):
        create_model("resnet19", num_classes=3)
    with pytest.raises(ClassifierError, match="timm/resnet18"):
        model_entry("timm/resnet19x")
    with pytest.raises(ClassifierError, match="no pretrained weights"):
        create_model("lenet5", num_classes=3, pretrained=True)


def _small_resnet(**kw):
    torch.manual_seed(0)
    return create_model("resnet", num_classes=3, in_chans=1, width=4, layers=(1, 1, 1, 1), **kw)


def _train_steps(model, steps=3):
    opt = torch.optim.SGD(param_groups(model, lr=0.1), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 3, (4,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_freeze_keeps_backbone_and_bn_stats_fixed():
    model = _small_resnet()
    freeze_backbone(model)
    before, head_before = _backbone_state(model), model.head.weight.clone()
    _train_steps(model)
    assert model.training and not model.backbone.stem[1].training  # BN stays in eval under train()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and running stats
    assert not torch.equal(head_before, model.head.weight)

    unfreeze_backbone(model)
    _train_steps(model)
    assert model.backbone.stem[1].training
    after = model.backbone.state_dict()
    assert not torch.equal(before["stem.0.weight"], after["stem.0.weight"])
    assert not torch.equal(before["stem.1.running_mean"], after["stem.1.running_mean"])


def test_param_groups():
    model = _small_resnet()
    groups = {g["name"]: g for g in param_groups(model, lr=0.1, backbone_lr_mult=0.01, weight_decay=0.05)}
    assert set(groups) == {"head", "head_no_decay", "backbone", "backbone_no_decay"}
    assert groups["head"]["lr"] == 0.1 and groups["backbone"]["lr"] == pytest.approx(0.001)
    assert groups["backbone"]["weight_decay"] == 0.05 and groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in groups["backbone_no_decay"]["params"])  # biases and BN weights
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))

    freeze_backbone(model)
    frozen = param_groups(model, lr=0.1, weight_decay=0.05)
    assert [g["name"] for g in frozen] == ["head", "head_no_decay"]
    assert {id(p) for g in frozen for p in g["params"]} == {id(model.head.weight), id(model.head.bias)}


def _toolkit_checkpoint(model, path, **extra):
    return save_checkpoint({"model": model.state_dict(), "model_name": model.name,
                            "num_classes": model.num_classes, "in_chans": model.in_chans, **extra}, path)


def test_load_toolkit_checkpoint_other_classes_and_channels(tmp_path):
    torch.manual_seed(0)
    source = create_model("vggnet", num_classes=10, in_chans=3, width=4)
    path = _toolkit_checkpoint(source, tmp_path / "best.pt")

    target = create_model("vggnet", num_classes=4, in_chans=3, width=4)
    report = load_weights(target, path)
    src, dst = source.state_dict(), target.state_dict()
    assert all(torch.equal(src[k], dst[k]) for k in src if k.startswith("backbone."))
    assert set(report.dropped) == {"head.weight", "head.bias"} and set(report.missing) == {"head.weight", "head.bias"}
    assert not report.adapted
    assert "head.weight (10, 16)->(4, 16)" in str(report)
    assert "\n" not in str(report)

    gray = create_model("vggnet", num_classes=10, in_chans=1, width=4)
    report = load_weights(gray, path)
    key = "backbone.features.0.0.weight"
    assert report.adapted == [key] and not report.dropped
    assert torch.allclose(gray.state_dict()[key], src[key].sum(dim=1, keepdim=True))
    assert torch.equal(gray.head.weight, source.head.weight)

    five = create_model("vggnet", num_classes=10, in_chans=5, width=4)
    load_weights(five, path)
    w5 = five.state_dict()[key]
    assert torch.allclose(w5[:, 3:], src[key][:, :2] * 3 / 5)


def test_load_weights_body_mismatch_is_one_line_error(tmp_path):
    path = _toolkit_checkpoint(create_model("vggnet", num_classes=10, width=4), tmp_path / "w4.pt")
    with pytest.raises(ClassifierError, match="does not fit model 'vggnet'") as err:
        load_weights(create_model("vggnet", num_classes=10, width=8), path)
    assert "\n" not in str(err.value)
    report = load_weights(create_model("vggnet", num_classes=10, width=8), path, strict_body=False)
    assert report.dropped and report.missing


def test_head_dropout_and_plain_head_checkpoints_interchange():
    plain = create_model("lenet5", num_classes=10)
    dropped = create_model("lenet5", num_classes=10, drop_rate=0.3)
    dropped.load_state_dict(plain.state_dict())  # head.weight -> head.1.weight
    assert torch.equal(dropped.head[1].weight, plain.head.weight)
    assert load_weights(plain, dropped.state_dict()).loaded


def test_load_raw_torchvision_state_dict(tmp_path):
    torch.manual_seed(0)
    raw = tv.models.resnet18(num_classes=10).eval()
    torch.save(raw.state_dict(), tmp_path / "resnet18_raw.pth")
    model = create_model("resnet18", num_classes=10).eval()
    report = load_weights(model, tmp_path / "resnet18_raw.pth")
    assert not (report.dropped or report.missing or report.adapted)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), raw(x), atol=1e-5)  # same network, same logits

    other = create_model("resnet18", num_classes=3, in_chans=1)
    report = load_weights(other, raw.state_dict())
    assert set(report.dropped) == {"head.weight", "head.bias"} and report.adapted == ["backbone.conv1.weight"]
    assert torch.allclose(other.backbone.conv1.weight, raw.conv1.weight.sum(1, keepdim=True))


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch"


def test_pretrained_torchvision_from_hub_cache(torch_home):
    url, cached = torchvision_weights_file("mobilenet_v2")
    assert cached.parent == torch_home / "hub" / "checkpoints" and cached.name == Path(url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(1)
    imagenet = tv.models.mobilenet_v2().state_dict()  # stands in for the real file
    torch.save(imagenet, cached)

    model = create_model("mobilenet_v2", num_classes=3, pretrained=True)
    state = model.state_dict()
    assert all(torch.equal(state["backbone." + k], v) for k, v in imagenet.items() if k.startswith("features."))
    assert model.head[1].weight.shape == (3, 1280) and isinstance(model.head[0], nn.Dropout)

    gray = create_model("mobilenet_v2", num_classes=3, in_chans=1, pretrained=True)
    assert torch.allclose(gray.backbone.features[0][0].weight, imagenet["features.0.0.weight"].sum(1, keepdim=True))


def test_pretrained_offline_without_cache_names_the_file(torch_home):
    _, cached = torchvision_weights_file("resnet18")
    with pytest.raises(ClassifierError, match="not cached") as err:
        create_model("resnet18", num_classes=3, pretrained=True)
    assert str(cached) in str(err.value) and "resnet18-" in cached.name


def test_pretrained_timm_from_local_file(tmp_path):
    from classifier.models.pretrained import import_timm

    torch.manual_seed(2)
    net = import_timm().create_model("mobilenetv3_small_050")  # 1000-class head, as published
    torch.save(net.state_dict(), tmp_path / "timm.pth")
    model = create_model(TIMM_MODEL, num_classes=4, pretrained=True,
                         pretrained_cfg_overlay=dict(file=str(tmp_path / "timm.pth")))
    assert torch.equal(model.backbone.conv_stem.weight, net.conv_stem.weight)
    assert model.head.weight.shape == (4, model.num_features)


def test_model_summary():
    text = model_summary(create_model("lenet5", num_classes=10, in_chans=1), 28)
    assert "Total params: 61,706" in text and "Mult-Adds" in text

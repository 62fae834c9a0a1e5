"""Cached backbone features for feature-extract runs: same head as without the cache, invalidated by
anything that changes the features."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from classifier.data.sources.folder import scan_class_folders
from classifier.data.loaders import build_loader
from classifier.engine import features as feature_cache
from classifier.engine.features import cached_feature_loader
from classifier.engine.loop import StepContext, train_one_epoch
from classifier.models import create_model, freeze_backbone
from classifier.preprocess import Preprocessing
from tests.conftest import write_class_images

PREP = Preprocessing(size=(16, 16), channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)


def _frozen_model(seed=0):
    torch.manual_seed(seed)
    return freeze_backbone(create_model("lenet5", num_classes=3, in_chans=3))


def _loader(folder, prep=PREP, augment="none"):
    _, samples = scan_class_folders(folder)
    return build_loader(samples, prep, train=True, batch_size=8, augment=augment, seed=3, workers=0)


def _train_head(model, loader, epochs=2, head_only=False):
    torch.manual_seed(1)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    ctx = StepContext(optimizer, torch.device("cpu"))
    step = 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        _, step = train_one_epoch(model.head if head_only else model, loader, ctx, step=step)
    return model.head.weight.detach().clone(), model.head.bias.detach().clone()


def test_cached_features_train_the_same_head(tmp_path):
    folder = write_class_images(tmp_path / "colours", per_class=12)
    loader = _loader(folder)
    uncached = _train_head(_frozen_model(), loader)
    model = _frozen_model()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    features, note = cached_feature_loader(model, loader)
    assert features is not None and "computed 1 view(s) x 36 images" in note
    assert len(features) == len(loader) and features.indices().tolist() == loader.indices().tolist()
    cached = _train_head(model, features, head_only=True)
    for a, b in zip(uncached, cached):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in before.items())  # still frozen


def test_augmented_views_are_the_training_augmentation(tmp_path):
    folder = write_class_images(tmp_path / "colours", per_class=4)
    loader = _loader(folder, augment="light")
    model = _frozen_model()
    features, note = cached_feature_loader(model, loader, views=2)
    assert features.views == 2 and "2 view(s)" in note
    assert not torch.equal(features.features[0], features.features[1])  # two augmentations differ
    loader.set_epoch(1)
    x, _ = next(iter(loader))
    first = loader.indices()[: len(x)]
    with torch.inference_mode():
        model.eval()
        want = model.forward_features(x)
    torch.testing.assert_close(features.features[1][torch.from_numpy(first)], want, rtol=1e-5, atol=1e-5)


def test_cache_reused_and_invalidated(tmp_path, monkeypatch):
    folder = write_class_images(tmp_path / "colours", per_class=6)
    model = _frozen_model()
    _, note = cached_feature_loader(model, _loader(folder))
    assert "computed" in note
    computed = []
    real = feature_cache.compute_features
    monkeypatch.setattr(feature_cache, "compute_features", lambda *a, **k: computed.append(1) or real(*a, **k))
    _, note = cached_feature_loader(model, _loader(folder))
    assert "reused" in note and computed == []

    changed = folder / "red" / "red_0.png"  # a changed file
    Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(changed)
    _, note = cached_feature_loader(model, _loader(folder))
    assert "computed" in note and len(computed) == 1
    _, note = cached_feature_loader(model, _loader(folder))
    assert "reused" in note and len(computed) == 1

    other_weights = _frozen_model(seed=5)  # changed weights
    _, note = cached_feature_loader(other_weights, _loader(folder))
    assert "computed" in note and len(computed) == 2

    other_prep = Preprocessing(size=(16, 16), channels=3, mean=(0.4,) * 3, std=(0.25,) * 3)  # changed preprocessing
    _, note = cached_feature_loader(model, _loader(folder, prep=other_prep))
    assert "computed" in note and len(computed) == 3


def test_cache_off_when_the_backbone_trains_or_images_stream(tmp_path):
    folder = write_class_images(tmp_path / "colours", per_class=3)
    torch.manual_seed(0)
    loader, reason = cached_feature_loader(create_model("lenet5", num_classes=3, in_chans=3), _loader(folder))
    assert loader is None and "backbone trains" in reason
    _, samples = scan_class_folders(folder)
    streaming = build_loader(samples, PREP, train=True, batch_size=4, workers=0, cache=False)
    loader, reason = cached_feature_loader(_frozen_model(), streaming)
    assert loader is None and "stream" in reason

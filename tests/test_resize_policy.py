"""The resize policies (squash, crop, pad): one pixel pipeline for training, evaluation, the predictor, the
exported graph and the ONNX client."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from classifier.data import Samples
from classifier.data.loaders import build_loader, decode_fitted
from classifier.evaluation import iter_image_batches
from classifier.export import export_onnx, read_metadata
from classifier.inference import Predictor, model_input
from classifier.preprocess import RESIZE_POLICIES, Preprocessing, fitted, policy_window, to_model_input

SIZES = [(20, 30), (30, 20), (12, 16), (7, 40), (33, 33)]  # (height, width): wider, taller, the model's own, ...


def _prep(policy: str) -> Preprocessing:
    return Preprocessing(size=(12, 16), channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), resize_policy=policy)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """PNG files of several sizes and aspect ratios (lossless: every path decodes the same pixels)."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(SIZES):
        path = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return Samples(labels=np.zeros(len(paths), np.int64), paths=paths, root=str(folder))


def _client():
    path = Path(__file__).resolve().parents[1] / "examples" / "onnx_client.py"
    spec = importlib.util.spec_from_file_location("onnx_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_policy_boxes(monkeypatch):
    client = _client()
    for h in range(1, 60, 3):
        for w in range(1, 60, 4):
            for size in ((12, 16), (16, 16), (224, 224)):
                for policy in RESIZE_POLICIES:
                    top, left, bh, bw = policy_window(h, w, size, policy)
                    assert client.policy_window(h, w, size, policy) == (top, left, bh, bw)
                    if policy == "crop":  # inside the image, centred, at most 7/8 of each side
                        assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w
                        assert bh <= max(1, h * 7 // 8) and bw <= max(1, w * 7 // 8)
                    if policy == "pad":  # the whole image, centred, padding below one model-aspect pixel
                        assert top <= 0 and left <= 0 and bh >= h and bw >= w and top + bh >= h
                        assert bh * size[1] >= bw * size[0] - size[1] and bw * size[0] >= bh * size[1] - size[0]
    assert policy_window(256, 320, (224, 224), "crop") == (16, 48, 224, 224)  # ImageNet: 224 of a 256 short side


@pytest.mark.parametrize("policy", RESIZE_POLICIES)
def test_same_pixels_in_eval_predictor_graph_and_training(policy, photos, tmp_path):
    prep = _prep(policy)
    skipped = []
    eval_images = [im for _, batch, _ in iter_image_batches(photos, 3, 64, skipped) for im in batch]
    eval_pixels = [model_input([im], prep) for im in eval_images]  # what eval.py's torch_predict_fn feeds

    # the checkpoint predictor and the exported graph, with a model that returns its input
    torch_predictor = Predictor.from_model(nn.Flatten(), prep, ["a"])
    path = export_onnx(nn.Flatten(), prep, {"classes": ["a"]}, tmp_path / "pixels.onnx", embed_preprocessing=True)
    assert read_metadata(path)["resize_policy"] == policy
    graph = Predictor.load(path)
    assert graph.prep == prep and graph.resize_embedded
    for image, want in zip(eval_images, eval_pixels):
        assert want.shape == (1, 3, 12, 16)
        group = torch.from_numpy(image).permute(2, 0, 1)[None]
        from_torch = torch_predictor.logits(torch_predictor.to_input(group))
        from_graph = graph.logits(graph.to_input(group))
        assert np.abs(from_torch - want.flatten(1).numpy()).max() < 1e-4
        assert np.abs(from_graph - want.flatten(1).numpy()).max() < 1e-4

    # training: the fitted uint8 pixels, normalised, differ by the rounding alone (0.5 of a level)
    rounding = 0.5 / 255 / min(prep.std) + 1e-5
    for path_, want in zip(photos.paths, eval_pixels):
        train = decode_fitted(path_, prep)
        x = to_model_input(torch.from_numpy(train).permute(2, 0, 1)[None], fitted(prep))
        assert (x - want).abs().max() <= rounding
    loader = build_loader(photos, prep, train=True, batch_size=len(SIZES), workers=0, seed=0)
    x, _ = next(iter(loader))  # images of five sizes batch together: all were fitted to 12x16
    assert x.shape == (len(SIZES), 3, 12, 16)
    order = loader.indices()[:len(SIZES)]
    assert (x - torch.cat([eval_pixels[i] for i in order])).abs().max() <= rounding


def test_policies_differ_and_pad_keeps_the_whole_image():
    image = torch.zeros(1, 3, 10, 40)
    image[..., :, :2] = 255  # a bright left edge
    pad = to_model_input(image, _prep("pad")) * 0.2 + 0.4  # back to 0-1 in channel 0
    crop = to_model_input(image, _prep("crop")) * 0.2 + 0.4
    assert pad[0, 0, :, 0].max() > 0.5 and crop[0, 0, :, 0].max() < 0.01  # the crop cuts the edge off
    assert abs(float(pad[0, 0, 0, 8]) - 114 / 255) < 1e-5  # letterbox rows above the image


def test_client_resizes_like_the_toolkit(tmp_path):
    """examples/onnx_client.py on a model whose graph does not resize: the same box, then Pillow's bilinear
    resize, which is close to, not bit-identical with, the toolkit's (on smooth images, as photos are)."""
    client = _client()
    for h, w in SIZES:
        yy, xx = np.mgrid[0:h, 0:w]
        image = np.stack([yy * 255 // h, xx * 255 // w, (xx + yy) * 127 // (h + w)], -1).astype(np.uint8)
        Image.fromarray(image).save(tmp_path / "smooth.png")
        for policy in RESIZE_POLICIES:
            meta = {"input_size": "[12, 16]", "color_mode": "RGB", "mean": "[0.4, 0.5, 0.6]",
                    "std": "[0.2, 0.25, 0.3]", "resize_policy": policy}
            got = client.preprocess(str(tmp_path / "smooth.png"), meta)
            want = model_input([image], _prep(policy)).numpy()
            assert got.shape == want.shape
            assert np.abs(got - want).mean() * 0.25 * 255 < 0.5  # measured 0.0-0.31 pixel levels


def test_old_checkpoints_and_exports_mean_squash():
    prep = Preprocessing.from_dict({"size": [8, 8], "channels": 1, "mean": [0.5], "std": [0.5]})
    assert prep.resize_policy == "squash"
    assert Preprocessing.from_dict(_prep("pad").to_dict()).resize_policy == "pad"
    from classifier.artifact import prep_from_metadata

    meta = {"input_size": [8, 8], "channels": 1, "mean": [0.5], "std": [0.5], "classes": ["a", "b"]}
    assert prep_from_metadata(meta).resize_policy == "squash"

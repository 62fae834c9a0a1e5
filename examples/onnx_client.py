#!/usr/bin/env python
"""Classify images with a model exported by ``export.py``, needing only onnxruntime, numpy and Pillow.

    pip install onnxruntime numpy pillow
    python examples/onnx_client.py runs/demo/model.onnx photo.jpg [more.png ...] [--top 3]

The model file describes itself: its metadata (``metadata_props``, JSON for lists) gives the class
names, the input size (height, width), the colour mode (L or RGB), the normalisation (mean, std on
the 0-1 scale) and whether preprocessing is inside the graph (``preprocessing_embedded``: the input
is raw uint8 pixels; ``resize_embedded``: of any size, the graph resizes them). This script is the whole
recipe for a deployment in any language:

    1. open the image, convert it to ``color_mode``; unless ``resize_embedded``, apply ``resize_policy``
       (squash when absent: nothing; crop: cut out the centre box; pad: letterbox with grey 114; the box is
       ``policy_window`` below, integer arithmetic) and resize the result to ``input_size``
    2. HWC -> NCHW; if ``preprocessing_embedded`` feed uint8, else (pixel / 255 - mean) / std as float32
    3. run, softmax the "logits" output, look the index up in ``classes``; a multi-label model
       (``task`` = ``multilabel``) takes a sigmoid per class instead, and its labels are every class whose
       probability is at least its entry in ``thresholds`` (a JSON list in class order; maybe none)
    4. calibration: divide the logits by ``temperature`` (when present; a number, or a JSON list with one
       per class for a multi-label model) before the softmax or sigmoid
    5. "unknown" (``--reject``): below ``reject_threshold`` of the score named by ``ood_score`` the answer is
       "unknown": ``msp`` = the top probability, ``energy`` = temperature * logsumexp(logits / temperature),
       feature scores (``mahalanobis``, ``knn``) = the graph's second output ``ood_score``

The toolkit resizes with torch's antialiased bilinear filter; Pillow's bilinear filter is very close
but not bit-identical, so images not already at the model's size may differ in the last digits. A
model exported with ``--embed-preprocessing`` resizes with the toolkit's own filter, inside the graph.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


def load_model(path: str):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    missing = [k for k in ("classes", "input_size", "color_mode", "mean", "std") if k not in meta]
    if missing:
        raise SystemExit(f"error: {path} has no toolkit metadata ({', '.join(missing)}); export it with export.py")
    return session, meta


def preprocess(image_path: str, meta: dict) -> np.ndarray:
    """One image file -> a batch of one, as the model's metadata asks."""
    height, width = json.loads(meta["input_size"])
    image = ImageOps.exif_transpose(Image.open(image_path))  # phone photos store rotation in EXIF
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / float gray: scale to 8 bits first
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.uint8(255 * (values - values.min()) / max(np.ptp(values), 1e-12)))
    image = image.convert(meta["color_mode"])
    if meta.get("resize_embedded") != "true":
        image = apply_policy(image, (height, width), meta.get("resize_policy", "squash"))
        image = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels  # HWC
    nchw = pixels.transpose(2, 0, 1)[None]
    if meta.get("preprocessing_embedded") == "true":
        return np.ascontiguousarray(nchw)
    mean = np.asarray(json.loads(meta["mean"]), np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(json.loads(meta["std"]), np.float32).reshape(1, -1, 1, 1)
    return ((nchw.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


CROP_RATIO = (7, 8)  # crop: 7/8 of the largest centred box at the model's aspect ratio (ImageNet's 224 of 256)
PAD_FILL = 114  # pad: letterbox grey, every channel


def policy_window(height: int, width: int, size, policy: str):
    """(top, left, box height, box width) on the image, as the toolkit computes it (non-negative integers
    divided with floor, so every language gets the same box); pad boxes start before the image (<= 0)."""
    th, tw = size
    if policy == "crop":
        num, den = CROP_RATIO
        box_h = max(1, min(height, width * th // tw) * num // den)
        box_w = max(1, min(width, height * tw // th) * num // den)
        return (height - box_h) // 2, (width - box_w) // 2, box_h, box_w
    if policy == "pad":
        box_h = max(height, (width * th + tw - 1) // tw)
        box_w = max(width, (height * tw + th - 1) // th)
        return -((box_h - height) // 2), -((box_w - width) // 2), box_h, box_w
    return 0, 0, height, width


def apply_policy(image: Image.Image, size, policy: str) -> Image.Image:
    """The model's resize policy before the resize: crop to, or pad the image to, its box."""
    if policy == "squash":
        return image
    top, left, box_h, box_w = policy_window(image.height, image.width, size, policy)
    if policy == "crop":
        return image.crop((left, top, left + box_w, top + box_h))
    fill = PAD_FILL if image.mode == "L" else (PAD_FILL,) * 3
    canvas = Image.new(image.mode, (box_w, box_h), fill)
    canvas.paste(image, (-left, -top))
    return canvas


def classify(session, meta: dict, image_path: str) -> np.ndarray:
    return classify_with_score(session, meta, image_path)[0]


def classify_with_score(session, meta: dict, image_path: str):
    """(probabilities, "unknown" score or None): higher scores are more like the model's classes."""
    x, name = preprocess(image_path, meta), session.get_inputs()[0].name
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {name: x})))
    logits = outputs["logits"][0] if "logits" in outputs else next(iter(outputs.values()))[0]
    if meta.get("tta_flip") == "true":  # the model was evaluated on each image and its mirror image
        logits = (logits + session.run(None, {name: np.ascontiguousarray(x[..., ::-1])})[0][0]) / 2
    # fitted on validation: calibrated probabilities (a number; multi-label models may have one per class)
    temperature = np.asarray(json.loads(meta.get("temperature", "1")), np.float64)
    logits = logits.astype(np.float64) / temperature
    if meta.get("task") == "multilabel":  # one independent probability per class
        return 1.0 / (1.0 + np.exp(-logits)), None
    exp = np.exp(logits - logits.max())
    probs = exp / exp.sum()
    score = {"msp": probs.max(), "energy": temperature * (logits.max() + np.log(exp.sum()))}.get(meta.get("ood_score"))
    if score is None and "ood_score" in outputs:
        score = float(outputs["ood_score"][0])
    return probs, score


def label_set(meta: dict, probs: np.ndarray, threshold: float | None = None) -> list[int]:
    """A multi-label model's predicted classes: probability >= the class's threshold (``threshold``: for all;
    0.5 where the file has no ``thresholds``, as the toolkit and the web page decide)."""
    if threshold is None and "thresholds" not in meta:
        threshold = 0.5
    cut = np.full(len(probs), threshold) if threshold is not None else np.asarray(json.loads(meta["thresholds"]))
    return [int(i) for i in np.flatnonzero(probs >= cut)]


def main() -> None:
    parser = argparse.ArgumentParser(description="Classify images with an exported ONNX/ORT model.")
    parser.add_argument("model", help="model.onnx or model.ort written by export.py")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--top", type=int, default=3, help="how many classes to show per image")
    parser.add_argument("--threshold", type=float, default=None,
                        help="multi-label models: this threshold for every class instead of the fitted ones")
    parser.add_argument("--reject", action="store_true",
                        help="answer 'unknown' below the model's stored rejection threshold")
    args = parser.parse_args()
    session, meta = load_model(args.model)
    classes = json.loads(meta["classes"])
    if args.reject and "reject_threshold" not in meta:
        raise SystemExit(f"error: {args.model} has no reject_threshold (export it again from its checkpoint)")
    for path in args.images:
        probs, score = classify_with_score(session, meta, path)
        if args.reject and score is not None and score < float(meta["reject_threshold"]):
            print(f"unknown\t{path}\t({meta['ood_score']} score {score:.4g} < {float(meta['reject_threshold']):.4g})")
            continue
        if meta.get("task") == "multilabel":
            chosen = label_set(meta, probs, args.threshold)
            print(" ".join(classes[i] for i in chosen) + f"\t{path}\t("
                  + ", ".join(f"{classes[i]} {probs[i]:.1%}" for i in chosen) + ")")
            continue
        best = np.argsort(probs)[::-1][: args.top]
        shown = ", ".join(f"{classes[i]} {probs[i]:.1%}" for i in best)
        print(f"{classes[best[0]]}\t{path}\t({shown})")


if __name__ == "__main__":
    main()

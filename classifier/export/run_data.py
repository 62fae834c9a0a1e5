"""The run's own data, as export uses it: the split recorded in ``split.json`` beside the checkpoint (val
images for the parity check, training images for int8 calibration, the test split for accuracy).

Without data (e.g. a run trained on in-memory arrays) the parity check runs on random images, and says so.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from classifier.data import RunSplits, load_image, run_splits
from classifier.errors import ClassifierError
from classifier.inference import image_groups
from classifier.preprocess import Preprocessing

PARITY_IMAGES = 256  # val images compared between ONNX Runtime and PyTorch
CALIBRATION_IMAGES = 256  # training images for static int8 calibration
CALIBRATION_BATCH = 32


def load_run_splits(ckpt_path: Path, ckpt: dict, data_dir: str | None) -> RunSplits:
    """train/val/test Samples as the run used them (``run_splits``). Never downloads: no data is
    reported in the note, not fatal."""
    config = ckpt.get("config") or {"dataset": ckpt.get("dataset")}
    if not config.get("dataset"):
        return RunSplits(None, list(ckpt["classes"]), {}, None, "no data (no dataset in the checkpoint)")
    try:
        return run_splits(config, split_file=Path(ckpt_path).parent / "split.json", data_dir=data_dir,
                          download=False)
    except ClassifierError as err:
        return RunSplits(None, list(ckpt["classes"]), {}, None, f"no data ({err})")


def sample_images(samples, channels: int, indices=None):
    """uint8 images of a Samples (array batch, or files read with ``load_image``), optionally a subset."""
    if indices is not None:
        samples = samples.subset(indices)
    if samples.images is not None:
        return samples.images
    return [load_image(p, channels) for p in samples.paths]


def seeded_subset(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n])


def predictions(predictor, samples, batch_size: int = 256) -> np.ndarray:
    """Predicted label sets (N, C) 0/1, as the model's task decides: the top class, or the classes at or
    above their thresholds (files are read batch by batch)."""
    out = []
    for start in range(0, len(samples), batch_size):
        idx = np.arange(start, min(start + batch_size, len(samples)))
        out.append(predictor.predict(sample_images(samples, predictor.prep.channels, idx), batch_size=batch_size))
    return predictor.label_sets(np.concatenate(out)) if out else np.zeros((0, len(predictor.classes)), np.int64)


def parity_images(prep: Preprocessing, data: RunSplits):
    """(uint8 images, what they are) for the parity check: val (else test) images, random pixels without data."""
    samples = data.get("val", "test")
    if samples is not None:
        images = sample_images(samples, prep.channels, seeded_subset(len(samples), PARITY_IMAGES))
        return images, f"{len(images)} {'val' if data.get('val') is samples else 'test'} images"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (64, *prep.size, prep.channels), dtype=np.uint8), "64 random images (no data found)"


def calibration_batches(fp32_predictor, data: RunSplits):
    """Model-input batches of training images, prepared exactly as the fp32 model takes them."""
    train = data.get("train")
    if train is None:
        raise ClassifierError(f"static int8 quantization calibrates on training images, but there are none "
                              f"({data.note}); pass --data-dir or use --quantize-method dynamic")
    idx = seeded_subset(len(train), CALIBRATION_IMAGES)
    return (fp32_predictor.to_input(group) for i in range(0, len(idx), CALIBRATION_BATCH)
            for group in image_groups(sample_images(train, fp32_predictor.prep.channels, idx[i:i + CALIBRATION_BATCH])))

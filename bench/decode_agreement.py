"""What training's reduced-size JPEG decode (draft mode) changes: accuracy and agreement with the deployed model.

Training decodes a JPEG at least twice the model size with Pillow's draft mode (the JPEG decoder's own 1/2,
1/4, 1/8 scaling) and rounds the fitted pixels to uint8; evaluation, prediction and the exported model decode
at full size. This bench builds a folder of large photo-like JPEGs from real Fashion-MNIST (5 classes, sides
of 600-1000 px, so draft mode applies at the model size used here), trains a model on it with ``train.py``,
then classifies the run's validation and test images twice with its best.pt: from the pixels training makes
(draft decode, policy, resize, rounding) and from the deployed model's (full decode, ``Predictor``), and
prints each accuracy, how often the two predictions agree and the mean pixel difference.

    python bench/decode_agreement.py                 # 1,500 photos, resnet at 64 px, 6 epochs (10-20 min)
    python bench/decode_agreement.py --img-size 96 --images 3000
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from classifier.data.splits import run_splits  # noqa: E402
from classifier.data.loaders import decode_fitted  # noqa: E402
from classifier.inference import Predictor, softmax  # noqa: E402
from classifier.preprocess import Preprocessing, fitted, to_model_input  # noqa: E402
from transfer_speed import make_photo_folder  # noqa: E402


def held_out(run: Path) -> tuple[list[str], np.ndarray]:
    """Paths and labels of the run's validation and test images, rebuilt from its split.json."""
    found = run_splits(yaml.safe_load((run / "config.yaml").read_text()), split_file=run / "split.json")
    parts = [found.splits[name] for name in ("val", "test") if name in found.splits]
    return [p for s in parts for p in s.paths], np.concatenate([s.labels for s in parts])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--sides", type=int, nargs=2, default=(600, 1000), help="photo side range, px")
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--data-dir", default="datasets")
    parser.add_argument("--work", help="folder for the photos and the run (default: a new temporary one)")
    args = parser.parse_args(argv)

    work = Path(args.work or tempfile.mkdtemp(prefix="decode-agreement-"))
    folder = work / "photos"
    if not folder.is_dir():
        make_photo_folder(folder, args.images, args.data_dir, sides=tuple(args.sides))
    run = work / "run"
    subprocess.run([sys.executable, "train.py", "--dataset", f"folder:{folder}", "--model", args.model,
                    "--img-size", str(args.img_size), "--epochs", str(args.epochs), "--project", str(work),
                    "--name", "run", "--exist-ok", "--progress", "false", "--plots", "false",
                    "--eval-test", "false"], cwd=ROOT, check=True,
                   env={**os.environ, "CLASSIFIER_CACHE": str(work / "cache")})
    predictor = Predictor.load(run / "best.pt")
    prep: Preprocessing = predictor.prep
    paths, labels = held_out(run)

    deployed = predictor.predict_files(paths)  # full decode, the policy, resize: what eval.py and ONNX see
    trained_pixels = np.stack([decode_fitted(p, prep) for p in paths])  # draft decode, fitted, rounded
    x = to_model_input(torch.from_numpy(trained_pixels).permute(0, 3, 1, 2), fitted(prep)).numpy()
    as_trained = np.concatenate([softmax(predictor.logits(x[i:i + 64])) for i in range(0, len(x), 64)])
    full_pixels = np.stack([decode_fitted(p, prep, draft=False) for p in paths])  # isolates the draft decode
    diff = np.abs(trained_pixels.astype(np.int16) - full_pixels.astype(np.int16))

    a, b = as_trained.argmax(1), deployed.argmax(1)
    print(f"{len(paths)} held-out photos ({args.sides[0]}-{args.sides[1]} px JPEGs), {args.model} at "
          f"{args.img_size} px, resize policy {prep.resize_policy}, {args.epochs} epochs; run: {run}")
    print(f"  accuracy from training's pixels (draft decode): {np.mean(a == labels):.2%}")
    print(f"  accuracy of the deployed model (full decode):   {np.mean(b == labels):.2%}")
    print(f"  predictions that agree: {np.mean(a == b):.2%} ({int(np.sum(a != b))} of {len(a)} differ); "
          f"largest probability difference {np.abs(as_trained - deployed).max():.3f}")
    print(f"  pixels at model size: mean difference {diff.mean():.2f} levels, largest {diff.max()}")



if __name__ == "__main__":
    main()

"""``python test.py``: classify unlabelled images with a checkpoint or an exported ONNX model."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from classifier.commands import cli_entry
from classifier.errors import ClassifierError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Classify images: top-k classes per image, predictions.csv and a figure.",
        epilog="examples:\n"
               "  python test.py --checkpoint runs/NAME/best.pt photo.jpg other.png\n"
               "  python test.py --checkpoint runs/NAME/model.onnx photos/ --topk 3",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--checkpoint", required=True, help="a .pt checkpoint or an exported .onnx/.ort model")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--output", help="output folder (default: next to the model, predict/)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quiet", action="store_true", help="do not print one line per image")
    return p


def collect_images(inputs) -> list[str]:
    from classifier.data import is_image_file

    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(str(f) for f in path.rglob("*") if f.is_file() and is_image_file(f))
        elif path.is_file():
            files.append(str(path))
        else:
            raise ClassifierError(f"no such image or folder: {item}")
    if not files:
        raise ClassifierError("no images found in " + ", ".join(map(str, inputs)))
    return files


def classify(predictor, files: list[str], batch_size: int):
    """Probabilities for readable files; unreadable ones are returned separately with their reason."""
    from classifier.data import BadImageError, load_image

    probs, kept, skipped, shown = [], [], [], []
    for start in range(0, len(files), batch_size):
        images = []
        for f in files[start:start + batch_size]:
            try:
                images.append(load_image(f, predictor.prep.channels))
                kept.append(f)
            except BadImageError as err:
                skipped.append((f, str(err)))
        if images:
            probs.append(predictor.predict(images))
            shown += images[: max(0, 48 - len(shown))]
    return (np.concatenate(probs) if probs else np.zeros((0, len(predictor.classes)))), kept, skipped, shown


@cli_entry
def main(argv=None):
    from classifier.evaluation import images_to_uint8_batch
    from classifier.inference import Predictor
    from classifier.report.plots import plot_predictions_grid
    from classifier.report.writer import prediction_rows, write_predictions_csv

    args = build_parser().parse_args(argv)
    predictor = Predictor.load(args.checkpoint)
    files = collect_images(args.images)
    probs, kept, skipped, shown = classify(predictor, files, args.batch_size)
    rows = prediction_rows(kept, probs, predictor.classes, k=args.topk)
    if not args.quiet:
        for row in rows:
            print(f"{row['file']}: " + ", ".join(
                f"{c} {float(p):.1%}" for c, p in (kv.split(":") for kv in row["topk"].split(";"))))
    for f, reason in skipped:
        print(f"skipped {f}: {reason}")
    out = Path(args.output) if args.output else Path(args.checkpoint).parent / "predict"
    write_predictions_csv(out / "predictions.csv", rows)
    if shown:
        side = max(max(im.shape[:2]) for im in shown)
        pred = probs[: len(shown)].argmax(1)
        plot_predictions_grid(out / "predictions.png", images_to_uint8_batch(shown, min(side, 128)), pred,
                              probs[np.arange(len(shown)), pred], predictor.classes)
    print(f"{len(kept)} images classified" + (f", {len(skipped)} skipped" if skipped else "")
          + f"; wrote {out / 'predictions.csv'}" + (f" and {out / 'predictions.png'}" if shown else ""))
    return rows

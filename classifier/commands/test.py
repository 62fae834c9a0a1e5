"""``python test.py``: classify unlabelled images with a checkpoint or an exported ONNX model."""
from __future__ import annotations

import argparse
from pathlib import Path

from classifier import api
from classifier.commands import cli_entry
from classifier.flags import FlagParser, add_bool_flag


def build_parser() -> argparse.ArgumentParser:
    p = FlagParser(
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
    p.add_argument("--threshold", type=float, default=None,
                   help="multi-label models: this decision threshold for every class (default: the fitted ones)")
    add_bool_flag(p, "reject", default=False, help="answer 'unknown' for images below the model's stored "
                                                   "rejection threshold (classifier/trust/)")
    add_bool_flag(p, "explain", default=False, help="a heat map per image: overlays in OUTPUT/explain/ beside "
                                                    "predictions.csv")
    add_bool_flag(p, "quiet", default=False, help="do not print one line per image (--quiet, or --quiet true)")
    return p


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    model = api.load(args.checkpoint)
    preds = model.predict(args.images, topk=args.topk, batch_size=args.batch_size, threshold=args.threshold,
                          reject=args.reject, explain=args.explain)
    if not args.quiet:
        for p in preds:
            if preds.multilabel:  # the label set, each with its probability
                chosen = [(c, p.probs[model.classes.index(c)]) for c in p.labels]
                print(f"{p.path}: " + (", ".join(f"{label} {prob:.1%}" for label, prob in chosen) or "(no label)"))
            else:
                print(f"{p.path}: " + ("unknown; " if p.index < 0 else "")
                      + ", ".join(f"{label} {prob:.1%}" for label, prob in p.topk))
    out = Path(args.output) if args.output else Path(args.checkpoint).parent / "predict"
    preds.save(out, topk=args.topk)
    shown = (out / "predictions.png").is_file()
    print(f"{len(preds)} images classified" + (f", {len(preds.skipped)} skipped" if preds.skipped else "")
          + f"; wrote {out / 'predictions.csv'}" + (f" and {out / 'predictions.png'}" if shown else "")
          + (f", heat maps in {out / 'explain'}" if args.explain else ""))
    return preds

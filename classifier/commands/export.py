"""``python export.py``: a checkpoint -> verified ONNX (+ int8, + ORT mobile format), with a report
(classifier/export/from_checkpoint.py does the work; ``Model.export`` takes the same options)."""
from __future__ import annotations

import argparse

from classifier import api
from classifier.commands import cli_entry
from classifier.export.onnx import DEFAULT_OPSET, ORT_TARGETS
from classifier.export.web import export_web_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a checkpoint to ONNX, verify it against PyTorch, optionally quantize it to int8 "
                    "and convert it to the ORT format of ONNX Runtime Mobile.",
        epilog="examples:\n"
               "  python export.py --checkpoint runs/demo/best.pt\n"
               "  python export.py --checkpoint runs/demo/best.pt --quantize int8 --mobile --benchmark",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="toolkit checkpoint, e.g. runs/NAME/best.pt")
    parser.add_argument("--output", help="ONNX file to write (default: model.onnx beside the checkpoint)")
    parser.add_argument("--dynamic-size", action="store_true", help="let input height and width vary too")
    parser.add_argument("--embed-preprocessing", action="store_true",
                        help="fold resizing, pixel scaling and normalisation into the graph: input is uint8 NCHW "
                             "pixels of any height and width")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    parser.add_argument("--quantize", choices=["int8"], help="also write an int8 model (NAME.int8.onnx)")
    parser.add_argument("--quantize-method", choices=["static", "dynamic"], default="static",
                        help="static: calibrated on training images (default); dynamic: weights only")
    parser.add_argument("--mobile", nargs="?", const="arm", choices=ORT_TARGETS, metavar="{arm,amd64}",
                        help="also write NAME.ort and NAME.required_operators.config for ONNX Runtime Mobile, "
                             "optimised for ARM CPUs (phones; the default) or amd64 (x86-64 devices)")
    parser.add_argument("--benchmark", action="store_true",
                        help="time PyTorch eager vs ONNX Runtime (batch-1 latency, throughput)")
    parser.add_argument("--threads", type=int, help="CPU threads for the latency figures and --benchmark, both "
                        "engines (default: PyTorch's, usually the number of cores)")
    parser.add_argument("--opset", type=int, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    parser.add_argument("--data-dir", help="dataset folder (default: the one the run was trained with)")
    parser.add_argument("--web", nargs="?", const="", metavar="DIR",
                        help="instead of model.onnx, write a static web page that classifies images in the browser "
                             "(ONNX Runtime Web) to DIR (default: web/ beside the checkpoint)")
    parser.add_argument("--serve", action="store_true", help="with --web: serve the page on localhost")
    return parser


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("checkpoint", "output", "no_verify", "web", "serve")}
    if args.web is not None or args.serve:
        return export_web_checkpoint(args.checkpoint, args.web, serve_page=args.serve, output=args.output,
                                     verify=not args.no_verify, **options)
    return api.load(args.checkpoint).export(args.output, verify=not args.no_verify, **options)

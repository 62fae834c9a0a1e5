"""``python serve.py --model PATH``: serve a checkpoint or exported model over HTTP (the V2 inference
protocol and ``POST /predict``). The flags come from ``ServeOptions``; ``Model.serve`` takes the same
options as keywords."""
from __future__ import annotations

import argparse
from dataclasses import fields

from classifier.api import load
from classifier.commands import cli_entry
from classifier.serve.metrics import configure_logging
from classifier.serve.options import HELP, ServeOptions
from classifier.serve.server import serve, worker_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Serve an image classifier over HTTP: the V2 inference protocol (Triton / KServe clients) "
                    "and POST /predict for image files, with dynamic batching and Prometheus /metrics.",
        epilog="examples:\n"
               "  python serve.py --model runs/demo/model.onnx\n"
               "  curl -F files=@shoe.png http://127.0.0.1:8000/predict\n"
               "  python serve.py --model runs/demo/best.pt --host 0.0.0.0 --workers 2 --max-batch 32",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint (.pt) or exported model (.onnx, .ort)")
    for f in fields(ServeOptions):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                            help=f"{HELP[f.name]} (default: {f.default})")
    return parser


@cli_entry
def main(argv=None):
    args = vars(build_parser().parse_args(argv))
    path = args.pop("model")
    options = ServeOptions.of(**args)  # checked before the model loads
    serve(load(path, threads=options.threads or None), options)


def app_from_env():
    """The app of one worker process (``--workers N``): the model path and options come from the
    environment the command set before starting the workers."""
    from classifier.serve.app import create_app

    configure_logging()
    path, options = worker_settings()
    return create_app(load(path, threads=options.threads or None), options)

"""``python export.py``: a checkpoint -> the export formats asked for (fp32 ONNX, int8, the ORT mobile format,
a web page), verified, with a report. One flag per ``ExportOptions`` field (classifier/export/formats.py, whose
table lists the formats); ``Model.export`` takes the same options."""
from __future__ import annotations

import argparse

from classifier import api
from classifier.commands import add_import_argument, cli_entry, import_user_modules
from classifier.export.formats import ExportOptions, formats_text
from classifier.flags import FlagParser, add_dataclass_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        description="Export a checkpoint to ONNX, verify it against PyTorch, optionally quantize it to int8, "
                    "convert it to the ORT format of ONNX Runtime Mobile, or write a web page that runs it.",
        epilog="formats (--format NAME ...):\n" + formats_text() + "\n\n"
               "examples:\n"
               "  python export.py --checkpoint runs/demo/best.pt\n"
               "  python export.py --checkpoint runs/demo/best.pt --format onnx int8 ort --benchmark\n"
               "  python export.py --checkpoint runs/demo/best.pt --format web int8 --serve\n"
               "booleans: --verify false (or --no-verify), --benchmark (or --benchmark true)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="toolkit checkpoint, e.g. runs/NAME/best.pt")
    add_import_argument(parser)  # the module registering the run's dataset (its data checks the export)
    add_dataclass_arguments(parser, ExportOptions, convert=ExportOptions.convert)
    return parser


@cli_entry
def main(argv=None):
    options = vars(build_parser().parse_args(argv))
    import_user_modules(options.pop("imports"))
    return api.load(options.pop("checkpoint")).export(**options)

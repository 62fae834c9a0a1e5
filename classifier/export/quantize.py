"""int8 quantization of an exported fp32 model with ONNX Runtime's quantization tools.

Static (default): weights int8 per output channel, activations uint8, in QDQ format; activation
ranges come from calibration batches of training images. The fp32 model is first run through
``quant_pre_process`` (shape inference + graph optimisation) so BatchNorm is folded and every
tensor has a known shape. Dynamic: int8 weights only, activation ranges computed at run time; no
calibration data, smaller gains on convolutional nets.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                      quantize_dynamic, quantize_static)

from classifier.errors import ClassifierError
from classifier.artifact import INPUT_NAME, first_line, load_proto, set_metadata
from classifier.export.onnx import quiet, save_model
from classifier.fileio import make_output_dir

METHODS = ("static", "dynamic")


class _BatchReader(CalibrationDataReader):
    """Feeds numpy batches to the calibrator (``get_next`` -> feed dict, None when done)."""

    def __init__(self, batches, input_name: str, dtype):
        self._batches = iter(batches)
        self._name = input_name
        self._dtype = dtype
        self.images = 0

    def get_next(self):
        batch = next(self._batches, None)
        if batch is None:
            return None
        batch = np.ascontiguousarray(batch, dtype=self._dtype)
        self.images += len(batch)
        return {self._name: batch}


def quantize_int8(fp32_path, out_path, *, calibration_batches=None, method: str = "static",
                  per_channel: bool = True) -> Path:
    """Write an int8 version of ``fp32_path`` to ``out_path`` (metadata kept, ``quantization`` added).

    ``calibration_batches``: iterable of model-input arrays (NCHW, as the fp32 model takes them:
    normalised float32, or uint8 pixels when preprocessing is embedded), needed for ``static``.
    """
    if method not in METHODS:
        raise ClassifierError(f"unknown quantization method '{method}' (choices: {', '.join(METHODS)})")
    if method == "static" and calibration_batches is None:
        raise ClassifierError("static int8 quantization needs calibration images; "
                              "give training data or use the dynamic method")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    make_output_dir(out_path.parent)
    source = load_proto(fp32_path)
    embedded = any(p.key == "preprocessing_embedded" and p.value == "true" for p in source.metadata_props)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        _pre_process(fp32_path, prepared)
        quantized = Path(tmp) / "int8.onnx"
        with quiet():
            if method == "static":
                reader = _BatchReader(calibration_batches, INPUT_NAME, np.uint8 if embedded else np.float32)
                try:
                    quantize_static(prepared, quantized, reader, quant_format=QuantFormat.QDQ,
                                    per_channel=per_channel, activation_type=QuantType.QUInt8,
                                    weight_type=QuantType.QInt8)
                except ClassifierError:
                    raise
                except Exception as err:  # noqa: BLE001
                    raise ClassifierError(f"static int8 quantization failed: {first_line(err)}") from None
                if reader.images == 0:
                    raise ClassifierError("static int8 quantization got no calibration images")
                note = (f"int8 static QDQ, {'per-channel' if per_channel else 'per-tensor'} int8 weights, "
                        f"uint8 activations calibrated (MinMax) on {reader.images} training images")
            else:
                try:
                    quantize_dynamic(prepared, quantized, weight_type=QuantType.QInt8, per_channel=per_channel)
                except Exception as err:  # noqa: BLE001
                    raise ClassifierError(f"dynamic int8 quantization failed: {first_line(err)}") from None
                note = f"int8 dynamic, {'per-channel' if per_channel else 'per-tensor'} int8 weights"
        proto = onnx.load(str(quantized))
    set_metadata(proto, {"quantization": note})
    return save_model(proto, out_path)


def _pre_process(src: Path, dst: Path) -> None:
    """Symbolic shape inference fails on some graphs; ONNX's own shape inference is then enough."""
    with quiet():
        try:
            quant_pre_process(src, dst)
            return
        except Exception:  # noqa: BLE001 - retry below with the simpler inference
            pass
        try:
            quant_pre_process(src, dst, skip_symbolic_shape=True)
        except Exception as err:  # noqa: BLE001
            raise ClassifierError(f"cannot prepare {src} for quantization: {first_line(err)}") from None

"""The Open Inference Protocol ("V2", as Triton, KServe and Seldon MLServer speak it): the model's
metadata, and infer requests and responses in JSON or with the binary tensor data extension.

Request (JSON, or JSON followed by raw tensor bytes whose JSON length is in the
``Inference-Header-Content-Length`` header)::

    {"id": "...", "inputs": [{"name": "input", "shape": [N, C, H, W], "datatype": "FP32",
                              "data": [...] | "parameters": {"binary_data_size": BYTES}}],
     "outputs": [{"name": "logits", "parameters": {"binary_data": true}}]}

The model has one input (``input``: what ``Predictor.prepare`` makes: normalised FP32, or UINT8
pixels for a graph with embedded preprocessing) and two outputs: ``logits`` (what the exported graph
computes, averaged with the mirror image's for a run evaluated with the test-time flip) and
``probabilities`` (their softmax; a sigmoid per class for a multi-label model). Any problem with a
request is a ``V2Error`` with an HTTP status and a one-line message, answered as ``{"error": "..."}``.
"""
from __future__ import annotations

import json
import math

import numpy as np

from classifier.artifact import INPUT_NAME, OUTPUT_NAME
from classifier.inference import softmax

PROBABILITIES = "probabilities"
OUTPUTS = (OUTPUT_NAME, PROBABILITIES)
HEADER_LENGTH = "inference-header-content-length"
MODEL_VERSION = "1"
DATATYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
             "FP32": np.float32, "FP64": np.float64}
V2_NAMES = {np.dtype(t): name for name, t in DATATYPES.items()}


class V2Error(Exception):
    """A bad request: ``status`` (4xx) and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def input_signature(predictor) -> tuple[str, list[int]]:
    """(V2 datatype, shape with -1 for any size) of the model's input."""
    datatype = "UINT8" if predictor.raw_pixels else "FP32"
    if predictor.input_shape is None:  # a PyTorch checkpoint: the size it was trained at
        return datatype, [-1, predictor.prep.channels, *predictor.prep.size]
    return datatype, [-1] + [d if isinstance(d, int) else -1 for d in predictor.input_shape[1:]]


def model_metadata(name: str, predictor) -> dict:
    datatype, shape = input_signature(predictor)
    classes = len(predictor.classes)
    return {
        "name": name,
        "versions": [MODEL_VERSION],
        "platform": "onnxruntime_onnx" if predictor.backend == "onnxruntime" else "pytorch",
        "inputs": [{"name": INPUT_NAME, "datatype": datatype, "shape": shape}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, classes]},
                    {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, classes]}],
        "parameters": {"classes": list(predictor.classes), "preprocessing": predictor.prep.to_dict()},
    }


def parse_infer_request(body: bytes, header_length: str | None, predictor) -> tuple[dict, np.ndarray]:
    """The request's JSON and its input as an array of the model's datatype and shape."""
    json_part, binary = _split_body(body, header_length)
    try:
        request = json.loads(json_part)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:  # RecursionError: nested too deep
        raise V2Error(400, f"the request body is not JSON: {str(err).splitlines()[0][:120]}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise V2Error(400, "an infer request is a JSON object with an 'inputs' list")
    if len(request["inputs"]) != 1 or not isinstance(request["inputs"][0], dict):
        raise V2Error(400, f"the model takes one input ('{INPUT_NAME}'), got {len(request['inputs'])}")
    tensor, rest = _input_tensor(request["inputs"][0], binary, predictor)
    if rest:
        raise V2Error(400, f"{rest} bytes of binary data after the input tensor's")
    _requested_outputs(request)
    return request, tensor


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise V2Error(400, f"Inference-Header-Content-Length must be an integer, got {header_length[:40]!r}") from None
    if not 0 < length <= len(body):
        raise V2Error(400, f"Inference-Header-Content-Length {length} is outside the body of {len(body)} bytes")
    return body[:length], body[length:]


def _input_tensor(spec: dict, binary: bytes, predictor) -> tuple[np.ndarray, int]:
    """The input as an array, and how many binary bytes were left over."""
    want_type, want_shape = input_signature(predictor)
    if spec.get("name") != INPUT_NAME:
        raise V2Error(400, f"unknown input {spec.get('name')!r}: the model's input is '{INPUT_NAME}'")
    if spec.get("datatype") != want_type:
        raise V2Error(400, f"input '{INPUT_NAME}' has datatype {want_type}, got {spec.get('datatype')!r}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise V2Error(400, f"input shape must be a list of integers, got {shape!r}")
    shown = "[" + ", ".join("N" if i == 0 else "any" if d == -1 else str(d) for i, d in enumerate(want_shape)) + "]"
    if len(shape) != len(want_shape) or shape[0] < 1 or any(
            (w != -1 and s != w) or s < 1 for s, w in zip(shape[1:], want_shape[1:])):
        raise V2Error(400, f"input '{INPUT_NAME}' has shape {shown} (N >= 1), got {shape}")
    dtype = np.dtype(DATATYPES[want_type])
    count = math.prod(shape)
    size = parameters(spec, f"input '{INPUT_NAME}'").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize or size > len(binary):
            raise V2Error(400, f"binary_data_size {size!r}: a {want_type} tensor of shape {shape} is "
                               f"{count * dtype.itemsize} bytes ({len(binary)} binary bytes sent)")
        return np.frombuffer(binary[:size], dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape), \
            len(binary) - size
    if "data" not in spec:
        raise V2Error(400, f"input '{INPUT_NAME}' has neither 'data' nor a binary_data_size parameter")
    try:
        flat = np.asarray(spec["data"], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float64
        raise V2Error(400, f"input '{INPUT_NAME}' data must be numbers (a flat or nested list)") from None
    if not np.all(np.isfinite(flat)):
        raise V2Error(400, f"input '{INPUT_NAME}' data must be finite numbers (no null, NaN or infinity)")
    if flat.size != count:
        raise V2Error(400, f"input '{INPUT_NAME}' of shape {shape} needs {count} values, got {flat.size}")
    if dtype == np.uint8 and (np.any(flat < 0) or np.any(flat > 255) or np.any(flat != np.round(flat))):
        raise V2Error(400, f"input '{INPUT_NAME}' is UINT8: whole numbers 0-255")
    return flat.astype(dtype).reshape(shape), len(binary)


def parameters(obj: dict, what: str) -> dict:
    """The ``parameters`` object of a request, input or output ({} when absent)."""
    value = obj.get("parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise V2Error(400, f"the parameters of {what} must be a JSON object, got {type(value).__name__}")
    return value


def _requested_outputs(request: dict) -> list[tuple[str, bool]]:
    """[(output name, as binary data)] the request asks for (all, when it names none)."""
    default_binary = bool(parameters(request, "the request").get("binary_data_output", False))
    asked = request.get("outputs")
    if asked is None:
        return [(name, default_binary) for name in OUTPUTS]
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise V2Error(400, "'outputs' must be a list of objects with a 'name'")
    out = []
    for o in asked:
        if o.get("name") not in OUTPUTS:
            raise V2Error(400, f"unknown output {o.get('name')!r} (outputs: {', '.join(OUTPUTS)})")
        out.append((o["name"], bool(parameters(o, f"output '{o['name']}'").get("binary_data", default_binary))))
    return out


def infer_response(name: str, request: dict, logits: np.ndarray, probabilities: np.ndarray | None = None
                   ) -> tuple[bytes, dict]:
    """The response body and its extra headers (the binary extension's, where outputs are binary).
    ``probabilities``: the model's own (a multi-label model's sigmoids); default the softmax of the logits."""
    probabilities = softmax(logits) if probabilities is None else probabilities
    values = {OUTPUT_NAME: logits.astype(np.float32), PROBABILITIES: probabilities.astype(np.float32)}
    outputs, chunks = [], []
    for out_name, binary in _requested_outputs(request):
        array = values[out_name]
        entry = {"name": out_name, "datatype": V2_NAMES[array.dtype], "shape": list(array.shape)}
        if binary:
            raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    response = {"model_name": name, "model_version": MODEL_VERSION, "outputs": outputs}
    if "id" in request:
        response["id"] = request["id"]
    header = json.dumps(response).encode()
    if not chunks:
        return header, {}
    return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}

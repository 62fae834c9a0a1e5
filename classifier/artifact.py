"""The exported model as a file: its metadata schema, safe loading and ONNX Runtime sessions.

Export (``classifier.export``) writes what this module reads; the predictor (``classifier.inference``)
and the web page read it too. Metadata lives in the ONNX ``metadata_props`` as strings; the keys the
toolkit writes are decoded back to Python values here, in one place.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from classifier.errors import ClassifierError
from classifier.preprocess import Preprocessing, policy_description

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
ONNX_SUFFIXES = (".onnx", ".ort")

# How metadata values are decoded; keys not listed stay strings.
_JSON_KEYS = {"classes", "input_size", "mean", "std", "config"}
_INT_KEYS = {"channels", "num_classes", "opset"}
_BOOL_KEYS = {"preprocessing_embedded", "resize_embedded", "dynamic_batch", "dynamic_size", "tta_flip"}


def checkpoint_metadata(ckpt: dict) -> dict:
    """The metadata an export of a toolkit checkpoint carries besides its preprocessing."""
    dataset = ckpt.get("dataset")
    return {
        "model_name": ckpt["model_name"],
        "classes": list(ckpt["classes"]),
        "num_classes": int(ckpt["num_classes"]),
        "dataset": dataset if isinstance(dataset, str) or dataset is None else json.dumps(dataset),
        "epoch": ckpt.get("epoch"),
        "config": ckpt.get("config"),  # the training config: provenance, and which classes were kept
        "tta_flip": bool((ckpt.get("config") or {}).get("tta_flip")),  # clients average image + mirror logits
    }


def preprocessing_metadata(prep: Preprocessing, *, embedded: bool, resize_embedded: bool = False) -> dict:
    """What a client must do to an image before feeding the model."""
    return {
        "input_size": list(prep.size),
        "channels": prep.channels,
        "color_mode": "L" if prep.channels == 1 else "RGB",
        "mean": list(prep.mean),
        "std": list(prep.std),
        "resize": ("in the graph: any height and width -> input_size, bilinear with antialias" if resize_embedded
                   else "bilinear with antialias to input_size (height, width)"),
        "resize_policy": prep.resize_policy,  # absent in older files: squash
        "resize_policy_detail": policy_description(prep.resize_policy),
        "preprocessing_embedded": embedded,
        "resize_embedded": resize_embedded,
        "input_dtype": "uint8" if embedded else "float32",
        "input_layout": "NCHW",
        "input_range": "0-255 pixels" if embedded else "(pixel / 255 - mean) / std",
    }


def first_line(err: BaseException, limit: int = 240) -> str:
    """The first line of the innermost cause: the exporter wraps the real reason in advice text."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


def set_metadata(proto: onnx.ModelProto, props: dict) -> None:
    """Store ``props`` in ``metadata_props``, replacing keys already there; None values are skipped."""
    import onnx  # in the ONNX functions, not at the top: ~1.2 s to import (ml_dtypes), and training never needs it

    encoded = {k: _encode(v) for k, v in props.items() if v is not None}
    keep = {p.key: p.value for p in proto.metadata_props if p.key not in encoded}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {**keep, **encoded})


def _encode(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def decode_metadata(props: dict[str, str]) -> dict:
    """Strings from ``metadata_props`` -> Python values for the keys this toolkit writes."""
    out = {}
    for key, value in props.items():
        try:
            if key in _JSON_KEYS:
                value = json.loads(value)
            elif key in _INT_KEYS:
                value = int(value)
            elif key in _BOOL_KEYS:
                value = value.lower() == "true"
        except ValueError:
            raise ClassifierError(f"bad metadata value {key}={value[:80]!r} in the model file") from None
        out[key] = value
    return out


def read_metadata(path) -> dict:
    """Decoded metadata of an ``.onnx`` or ``.ort`` model (refuses external data outside its folder)."""
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"model file not found: {path}")
    if path.suffix == ".ort":
        return decode_metadata(dict(open_session(path).get_modelmeta().custom_metadata_map))
    proto = load_proto(path)
    return decode_metadata({p.key: p.value for p in proto.metadata_props})


def prep_from_metadata(meta: dict, source="model") -> Preprocessing:
    missing = [k for k in ("input_size", "channels", "mean", "std", "classes") if k not in meta]
    if missing:
        raise ClassifierError(f"{source} has no toolkit metadata ({', '.join(missing)} missing): "
                              "export it with export.py, or use the checkpoint")
    return Preprocessing(size=tuple(meta["input_size"]), channels=meta["channels"], mean=meta["mean"], std=meta["std"],
                         resize_policy=meta.get("resize_policy") or "squash")


def load_proto(path, *, with_weights: bool = False) -> onnx.ModelProto:
    """Load an ONNX file; external data must lie inside the model's own folder."""
    import onnx  # see set_metadata

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf decode errors have no common type
        raise ClassifierError(f"cannot read ONNX model {path}: {first_line(err, 160)}") from None
    check_external_data(proto, path.parent)
    if with_weights:
        onnx.load_external_data_for_model(proto, str(path.parent))
    return proto


def check_external_data(proto: onnx.ModelProto, model_dir: Path) -> None:
    """Refuse tensors whose external data file is outside ``model_dir`` (absolute, ``..`` or a symlink out)."""
    import onnx  # see set_metadata

    root = Path(model_dir).resolve()
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(root):
            raise ClassifierError(f"refused: tensor '{tensor.name}' takes its data from '{location}', "
                                  f"outside the model's folder {root}")


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    yield from (s.values for s in graph.sparse_initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def open_session(path, *, threads: int | None = None):
    """An ONNX Runtime CPU session; ``threads`` sets intra-op threads (None: ONNX Runtime's choice)."""
    import onnxruntime as ort  # here, not at the top: ~0.3 s to import, and training never needs it

    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"model file not found: {path}")
    if path.suffix != ".ort":
        load_proto(path)  # refuses external data outside the model's folder before ORT reads it
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: optimiser notes are noise to a user
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
        raise ClassifierError(f"ONNX Runtime cannot load {path}: {str(err).strip().splitlines()[0][:200]}") from None

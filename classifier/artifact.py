"""The exported model as a file: its metadata schema, safe loading and ONNX Runtime sessions.

Export (``classifier.export``) writes what this module reads; the predictor (``classifier.inference``)
and the web page read it too. Metadata lives in the ONNX ``metadata_props`` as strings; the keys the
toolkit writes are decoded back to Python values here, in one place.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from classifier.errors import ClassifierError
from classifier.preprocess import Preprocessing, policy_description

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# What ONNX Runtime opens: every export format writes one of these (classifier/export/formats.py), so a
# new format of ONNX models needs nothing here; a new kind of file would need a reader first.
ONNX_SUFFIXES = (".onnx", ".ort")


# --- the metadata schema: one entry per key ---------------------------------------------------------
@dataclass(frozen=True)
class MetadataKey:
    """A key the toolkit writes into ``metadata_props``: how its string is decoded (``kind``) and, for keys
    that come from the run, its value in an export of a checkpoint (``from_checkpoint(ckpt)``; None leaves
    the key out, so checkpoints that predate it export as before). Keys written by the exporter itself
    (preprocessing, opset, ...) have no ``from_checkpoint``."""
    kind: str = "str"  # str | int | float | bool | json
    from_checkpoint: Callable[[dict], object] | None = None


METADATA_KEYS: dict[str, MetadataKey] = {}


def metadata_key(name: str, kind: str = "str", from_checkpoint: Callable[[dict], object] | None = None) -> None:
    """Declare a metadata key: the one place a new key is added (decoding, and its value from a checkpoint)."""
    if kind not in _DECODERS:
        raise ValueError(f"metadata kind must be one of {', '.join(_DECODERS)}, got {kind!r}")
    METADATA_KEYS[name] = MetadataKey(kind, from_checkpoint)


_DECODERS = {"str": str, "int": int, "float": float, "bool": lambda v: v.lower() == "true", "json": json.loads}


def _dataset_text(ckpt: dict):
    dataset = ckpt.get("dataset")
    return dataset if isinstance(dataset, str) or dataset is None else json.dumps(dataset)


# from the run (checkpoint_metadata), in the order they are written
metadata_key("model_name", "str", lambda ckpt: ckpt["model_name"])
metadata_key("classes", "json", lambda ckpt: list(ckpt["classes"]))
metadata_key("num_classes", "int", lambda ckpt: int(ckpt["num_classes"]))
metadata_key("dataset", "str", _dataset_text)
metadata_key("epoch", "str", lambda ckpt: ckpt.get("epoch"))
metadata_key("config", "json", lambda ckpt: ckpt.get("config"))  # the training config: provenance, kept classes
# clients average the logits of the image and its mirror image
metadata_key("tta_flip", "bool", lambda ckpt: bool((ckpt.get("config") or {}).get("tta_flip")))
# classifier/tasks.py: "multilabel" = a sigmoid per class, class c predicted when sigmoid >= thresholds[c]
# (a JSON list in class order); absent or "multiclass" = softmax, the top class
metadata_key("task", "str", lambda ckpt: ckpt.get("task"))
metadata_key("thresholds", "json", lambda ckpt: ckpt.get("thresholds"))
# classifier/trust/: every client of ours divides the logits by ``temperature`` before the softmax (the graph
# outputs the raw logits); below ``reject_threshold`` of the ``ood_score`` an image is "unknown" (feature
# scores: the graph's ``ood_score`` output; msp / energy: computed from the divided logits)
metadata_key("temperature", "json", lambda ckpt: ckpt.get("temperature"))  # a number, or a list (per class)
metadata_key("ood_score", "str", lambda ckpt: (ckpt.get("ood") or {}).get("score"))
metadata_key("reject_threshold", "float", lambda ckpt: (ckpt.get("ood") or {}).get("threshold"))
metadata_key("reject_keep", "float", lambda ckpt: (ckpt.get("ood") or {}).get("keep"))
# from the exporter (preprocessing_metadata, export_onnx, quantize_int8, the web graph)
for _name in ("input_size", "mean", "std"):
    metadata_key(_name, "json")
for _name in ("channels", "opset"):
    metadata_key(_name, "int")
for _name in ("preprocessing_embedded", "resize_embedded", "dynamic_batch", "dynamic_size"):
    metadata_key(_name, "bool")


def checkpoint_metadata(ckpt: dict) -> dict:
    """The metadata an export of a toolkit checkpoint carries besides its preprocessing (``METADATA_KEYS``;
    a key whose value is None, e.g. one the checkpoint predates, is left out)."""
    values = {name: key.from_checkpoint(ckpt) for name, key in METADATA_KEYS.items() if key.from_checkpoint}
    return {name: value for name, value in values.items() if value is not None}


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
        declared = METADATA_KEYS.get(key)
        try:
            out[key] = _DECODERS[declared.kind](value) if declared else value
        except ValueError:
            raise ClassifierError(f"bad metadata value {key}={value[:80]!r} in the model file") from None
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

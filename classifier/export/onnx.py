"""ONNX export with the model's preprocessing and class names in its metadata, verification against
PyTorch, and conversion to the ORT format of ONNX Runtime Mobile.

An exported file is self-describing: ``metadata_props`` (string key -> string value; JSON for lists)
holds everything a client needs to feed it, so ``Predictor.load("model.onnx")`` needs no checkpoint.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from classifier.version import __version__
from classifier.artifact import (INPUT_NAME, OUTPUT_NAME, first_line, load_proto, open_session,
                                 preprocessing_metadata, set_metadata)
from classifier.errors import ClassifierError
from classifier.export.graph import trim_conv_kernels
from classifier.fileio import atomic_target, make_output_dir
from classifier.inference import Predictor, image_groups, pixels_at_model_size
from classifier.preprocess import InputNormalizer, Preprocessing, to_model_input

# Opset 18 is the lowest the torch.export-based exporter emits natively, and it runs on every
# ONNX Runtime since 1.14 (including the prebuilt mobile packages). Resize with antialias needs 18.
DEFAULT_OPSET = 18
# Largest protobuf a single .onnx file can hold; above it weights go to an external data file.
PROTOBUF_LIMIT = 2**31 - 1

def export_onnx(model: nn.Module, prep: Preprocessing, metadata: dict, path, *, dynamic_batch: bool = True,
                dynamic_size: bool = False, embed_preprocessing: bool = False, opset: int | None = None,
                outputs: tuple[str, ...] = (OUTPUT_NAME,)) -> Path:
    """Export ``model`` to ``path`` (input "input", output "logits") with ``metadata`` and ``prep`` stored.

    ``outputs``: the names of the model's outputs when it returns several (a tuple), logits first: clients
    that know only "logits" read the first output.

    ``embed_preprocessing`` folds the resize, pixel scaling and normalisation into the graph: the input
    is then uint8 NCHW pixels of any height and width, in the model's channels, and the graph computes
    what ``to_model_input`` does. ``dynamic_size`` lets the model itself run at other sizes (checked by
    running the exported model at a second size; a model that cannot is refused); with both, the graph
    normalises but does not resize.
    """
    path = Path(path)
    make_output_dir(path.parent)
    opset = opset or DEFAULT_OPSET
    resize_embedded = embed_preprocessing and not dynamic_size
    net = nn.Sequential(InputNormalizer(prep, resize=resize_embedded), model) if embed_preprocessing else model
    was_training = model.training
    net.eval()
    example = _example_input(prep, embedded=embed_preprocessing, batch=2)
    try:
        proto, exporter = _trace(net, example, dynamic_batch=dynamic_batch,
                                 dynamic_size=dynamic_size or resize_embedded, opset=opset, outputs=list(outputs))
    finally:
        model.train(was_training)
    props = {
        **metadata,
        **preprocessing_metadata(prep, embedded=embed_preprocessing, resize_embedded=resize_embedded),
        "dynamic_batch": dynamic_batch,
        "dynamic_size": dynamic_size,
        "opset": opset,
        "exporter": exporter,
        "toolkit_version": __version__,
        "torch_version": torch.__version__,
    }
    _strip_node_metadata(proto.graph)
    if not dynamic_size and proto.ByteSize() < PROTOBUF_LIMIT:
        trim_conv_kernels(proto)  # exact: drops kernel taps that only ever see padding at this size
    set_metadata(proto, props)
    save_model(proto, path)
    if dynamic_size or resize_embedded:
        _check_other_size(path, prep, embedded=embed_preprocessing, fix="export without --dynamic-size" if dynamic_size
                          else "export without --embed-preprocessing")
    return path


def _strip_node_metadata(graph: onnx.GraphProto) -> None:
    """Drop the exporter's per-node notes: stack traces with this machine's file paths, and ~5% of the
    file (a quarter of the graph structure) that a deployed model does not need."""
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        for attr in node.attribute:
            if attr.HasField("g"):
                _strip_node_metadata(attr.g)
            for sub in attr.graphs:
                _strip_node_metadata(sub)


def _example_input(prep: Preprocessing, *, embedded: bool, batch: int, size=None) -> torch.Tensor:
    shape = (batch, prep.channels, *(size or prep.size))
    if embedded:
        return torch.randint(0, 256, shape, dtype=torch.uint8)
    return torch.randn(shape)


def _trace(net, example, *, dynamic_batch, dynamic_size, opset, outputs) -> tuple[onnx.ModelProto, str]:
    """torch.export-based exporter first; the TorchScript one for models it cannot capture."""
    dims = {0: "batch"} if dynamic_batch else {}
    if dynamic_size:
        dims.update({2: "height", 3: "width"})
    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation chatter, not the user's concern
        try:
            shapes = ({i: torch.export.Dim(name) for i, name in dims.items()},) if dims else None
            program = torch.onnx.export(net, (example,), None, input_names=[INPUT_NAME], output_names=outputs,
                                        opset_version=opset, dynamo=True, dynamic_shapes=shapes,
                                        external_data=False, verbose=False)
            return program.model_proto, f"torch.onnx dynamo (torch {torch.__version__})"
        except Exception as err:  # noqa: BLE001 - any capture failure: try the other exporter
            errors.append(first_line(err))
        try:
            buf = io.BytesIO()
            axes = {INPUT_NAME: dims, **{name: {0: "batch"} if dynamic_batch else {} for name in outputs}}
            with _native_stdout_silenced():
                torch.onnx.export(net, (example,), buf, input_names=[INPUT_NAME], output_names=outputs,
                                  opset_version=opset, dynamo=False, dynamic_axes=axes)
            return onnx.load_from_string(buf.getvalue()), f"torch.onnx torchscript (torch {torch.__version__})"
        except Exception as err:  # noqa: BLE001
            errors.append(first_line(err))
    raise ClassifierError(f"cannot export this model to ONNX opset {opset}: {errors[0]} "
                          f"(TorchScript exporter: {errors[1]})")


@contextlib.contextmanager
def _native_stdout_silenced():
    """The TorchScript exporter's C++ logger writes the whole graph to fd 1 when it fails."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _check_other_size(path: Path, prep: Preprocessing, *, embedded: bool, fix: str) -> None:
    """The exported graph must run on an input of another height and width; otherwise it is removed."""
    height, width = prep.size
    other = (height + max(8, height // 4), width + max(8, width // 4))
    x = _example_input(prep, embedded=embedded, batch=1, size=other).numpy()
    try:
        open_session(path).run(None, {INPUT_NAME: x})
    except Exception as err:  # noqa: BLE001 - ORT raises several types for shape errors
        path.unlink(missing_ok=True)
        raise ClassifierError(f"this model only runs at its own input size {height}x{width} (at {other[0]}x"
                              f"{other[1]}: {first_line(err, 160)}); {fix}") from None


def save_model(proto: onnx.ModelProto, path: Path) -> Path:
    """Write atomically; models above the protobuf limit keep their weights in ``NAME.data`` beside."""
    path = Path(path)
    with atomic_target(path) as tmp:
        if proto.ByteSize() > PROTOBUF_LIMIT:
            onnx.save_model(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=f"{path.name}.data")
        else:
            onnx.save_model(proto, str(tmp))
    return path


@dataclass
class Parity:
    """ONNX Runtime vs PyTorch on the same inputs."""
    max_abs_diff: float  # largest |logit difference|
    top1_agreement: float  # fraction of images with the same predicted class
    images: int

    def __str__(self) -> str:
        return f"max |logit diff| {self.max_abs_diff:.2e}, top-1 agreement {self.top1_agreement:.2%} " \
               f"on {self.images} images"


def compare_with_torch(onnx_path, model: nn.Module, images, *, batch_size: int = 64) -> Parity:
    """Run ``images`` (uint8 HWC list or NHWC array) through ONNX Runtime and ``model``; compare logits.

    PyTorch gets what the checkpoint path gives it (``to_model_input``), the ONNX model what its metadata
    asks for: normalised input, or uint8 pixels when preprocessing is embedded. A graph that resizes
    gets the images at their own size; one that does not (dynamic size) gets them resized and rounded
    to uint8 outside the graph, and then PyTorch gets those same rounded pixels.
    """

    predictor = Predictor.load(onnx_path)
    model.eval()
    worst, agree, count = 0.0, 0, 0
    for start in range(0, len(images), batch_size):
        for group in image_groups(images[start:start + batch_size]):
            if predictor.raw_pixels and not predictor.resize_embedded:
                group = pixels_at_model_size(group, predictor.prep)
            with torch.inference_mode():
                ref = model(to_model_input(group, predictor.prep)).float().numpy()
            got = predictor.logits(predictor.to_input(group))
            worst = max(worst, float(np.abs(got - ref).max()))
            agree += int((got.argmax(1) == ref.argmax(1)).sum())
            count += len(ref)
    if count == 0:
        raise ClassifierError("no images to compare the ONNX model with PyTorch on")
    return Parity(worst, agree / count, count)


def verify_onnx(onnx_path, model: nn.Module, images, *, max_abs_diff: float = 1e-4,
                min_agreement: float = 1.0) -> Parity:
    """ONNX checker, then ONNX Runtime vs PyTorch on ``images``; raises ClassifierError below target."""
    onnx_path = Path(onnx_path)
    load_proto(onnx_path)  # refuses escaping external data before the checker follows it
    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ClassifierError(f"ONNX checker rejected {onnx_path}: {first_line(err)}") from None
    parity = compare_with_torch(onnx_path, model, images)
    if parity.max_abs_diff > max_abs_diff or parity.top1_agreement < min_agreement:
        raise ClassifierError(f"ONNX verification failed for {onnx_path}: {parity} (targets: diff <= "
                              f"{max_abs_diff:.0e}, agreement >= {min_agreement:.0%})")
    return parity


ORT_TARGETS = ("arm", "amd64")  # devices an .ort file can be optimised for


def to_ort(onnx_path, target: str = "arm") -> Path:
    """Write ``NAME.ort`` (ONNX Runtime Mobile format) and ``NAME.required_operators.config`` beside it.

    ``target``: the CPU it will run on, as ONNX Runtime's converter takes it. ``arm`` (phones) leaves out
    the x86-only NCHWc layout and allows signed-int8 QDQ fusion; ``amd64`` (x86-64 tablets and PCs) keeps
    NCHWc, which makes convolutions several times faster there.
    The config lists the operators the model needs; pass it to ONNX Runtime's build with
    ``--include_ops_by_config`` for a reduced-size runtime. The ``.ort`` keeps the metadata.
    """
    # imported here: the converter pulls in onnxruntime's tooling (slow), needed only for --mobile
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    if target not in ORT_TARGETS:
        raise ClassifierError(f"unknown ORT target '{target}' (choices: {', '.join(ORT_TARGETS)})")
    onnx_path = Path(onnx_path)
    load_proto(onnx_path)
    try:
        with quiet():
            convert_onnx_models_to_ort(onnx_path, optimization_styles=[OptimizationStyle.Fixed],
                                       target_platform=target)
    except Exception as err:  # noqa: BLE001 - the converter raises whatever ORT raised
        raise ClassifierError(f"conversion of {onnx_path} to ORT format failed: {first_line(err)}") from None
    ort_path = onnx_path.with_suffix(".ort")
    if not ort_path.is_file():
        raise ClassifierError(f"conversion of {onnx_path} to ORT format wrote no {ort_path}")
    return ort_path


def required_operators_path(ort_path) -> Path:
    return Path(ort_path).with_suffix(".required_operators.config")


@contextlib.contextmanager
def quiet():
    """ONNX Runtime's tools print and log progress at INFO/WARNING; keep the report readable."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)

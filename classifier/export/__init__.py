"""Deployment: ONNX export with self-describing metadata, verification against PyTorch, int8
quantization, the ORT (ONNX Runtime Mobile) format, and CPU benchmarks."""
from classifier.artifact import checkpoint_metadata, prep_from_metadata, read_metadata
from classifier.export.benchmark import BenchResult, benchmark, format_results
from classifier.export.onnx import (DEFAULT_OPSET, ORT_TARGETS, Parity, compare_with_torch, export_onnx,
                                    required_operators_path, to_ort, verify_onnx)
from classifier.export.quantize import quantize_int8

__all__ = [
    "BenchResult", "DEFAULT_OPSET", "ORT_TARGETS", "Parity", "benchmark", "checkpoint_metadata",
    "compare_with_torch", "export_onnx", "format_results", "prep_from_metadata", "quantize_int8", "read_metadata",
    "required_operators_path", "to_ort", "verify_onnx",
]

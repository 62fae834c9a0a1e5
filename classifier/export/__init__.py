"""Deployment: the export formats (one table, classifier/export/formats.py: fp32 ONNX with self-describing
metadata verified against PyTorch, int8, the ORT (ONNX Runtime Mobile) format, a web page), and CPU benchmarks."""
from classifier.artifact import checkpoint_metadata, metadata_key, prep_from_metadata, read_metadata
from classifier.export.benchmark import BenchResult, benchmark, format_results
from classifier.export.formats import FORMATS, ExportFormat, ExportOptions, register_format
from classifier.export.onnx import (DEFAULT_OPSET, ORT_TARGETS, Parity, compare_with_torch, export_onnx,
                                    required_operators_path, to_ort, verify_onnx)
from classifier.export.quantize import quantize_int8

__all__ = [
    "BenchResult", "DEFAULT_OPSET", "ExportFormat", "ExportOptions", "FORMATS", "ORT_TARGETS", "Parity", "benchmark",
    "checkpoint_metadata", "compare_with_torch", "export_onnx", "format_results", "metadata_key", "prep_from_metadata",
    "quantize_int8", "read_metadata", "register_format", "required_operators_path", "to_ort", "verify_onnx",
]

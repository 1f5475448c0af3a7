"""Checkpoint (or an existing ONNX classifier) -> verified, self-describing ONNX in a model repository."""

from export.errors import ExportError
from export.exporter import ExportResult, export_model
from export.onnx_import import import_onnx

__all__ = ["ExportError", "ExportResult", "export_model", "import_onnx"]

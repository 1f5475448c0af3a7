"""Checkpoint -> verified, self-describing ONNX in a model repository (``python -m export``)."""

from export.errors import ExportError
from export.exporter import ExportResult, export_model

__all__ = ["ExportError", "ExportResult", "export_model"]

"""resnet-serve: the ResNet family served from verified ONNX files, with dynamic batching on onnxruntime.

Packages, outermost first (ARCHITECTURE.md draws them): :mod:`service.doors` (the wire formats),
:mod:`service.pipeline` (one request's path), :mod:`service.engine` (models, sessions, batchers),
:mod:`service.limits` (budgets, memory, CPUs). The service never imports torch, ``models`` or ``export``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    #: The one version (pyproject.toml's): /v2, /models, the OpenAPI document and ``--version`` report it.
    __version__ = version("resnet-serve")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

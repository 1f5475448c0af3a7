"""The ResNet family in PyTorch: one configurable ResNet, a registry of named architectures, checkpoints.

Public API (export/ and outside checks code against exactly this)::

    list_models() -> list[str]
    create_model(name, *, num_classes=None, weights=None) -> nn.Module   # eval mode
    get_model_config(name) -> ModelConfig
    load_checkpoint(spec, *, arch=None) -> LoadedCheckpoint
    preprocessing_for(name, weights=None) -> Preprocessing
    labels_for(name, num_classes=None) -> tuple[str, ...] | None
"""

from models.checkpoints import CheckpointError, LoadedCheckpoint, load_checkpoint
from models.config import ModelConfig, Preprocessing, PublishedCheckpoint
from models.factory import build_model, create_model, labels_for, preprocessing_for
from models.registry import get_model_config, list_models
from models.resnet import ResNet

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "ModelConfig",
    "Preprocessing",
    "PublishedCheckpoint",
    "ResNet",
    "build_model",
    "create_model",
    "get_model_config",
    "labels_for",
    "list_models",
    "load_checkpoint",
    "preprocessing_for",
]

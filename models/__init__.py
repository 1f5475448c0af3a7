"""Image classifiers of the residual family in PyTorch: a registry of named architectures, checkpoints.

Public API (export/ and outside checks code against exactly this)::

    list_models(family=None) -> list[str]          # list_families() for the families
    create_model(name, *, num_classes=None, weights=None) -> nn.Module   # eval mode
    get_model_config(name) -> ModelConfig
    load_checkpoint(spec, *, arch=None, progress=SILENT) -> LoadedCheckpoint   # progress: models.progress
    preprocessing_for(name, weights=None) -> Preprocessing
    labels_for(name, num_classes=None) -> tuple[str, ...] | None

Each family is an architecture module (``models/resnet.py``, ``preact_resnet.py``, ``densenet.py``,
``inception_resnet.py``) plus its registry data in ``models/zoo/``; importing ``models`` registers them.
"""

import models.zoo  # noqa: F401  (registers every family's names)
from models.checkpoints import CheckpointError, LoadedCheckpoint, load_checkpoint
from models.config import ModelConfig, PublishedCheckpoint
from models.densenet import DenseNet
from models.factory import build_model, create_model, labels_for, preprocessing_for
from models.inception_resnet import InceptionResNetV2
from models.preact_resnet import PreActResNet
from models.registry import get_model_config, list_families, list_models
from models.resnet import ResNet
from servable.preprocessing import Preprocessing

__all__ = [
    "CheckpointError",
    "DenseNet",
    "InceptionResNetV2",
    "LoadedCheckpoint",
    "ModelConfig",
    "PreActResNet",
    "Preprocessing",
    "PublishedCheckpoint",
    "ResNet",
    "build_model",
    "create_model",
    "get_model_config",
    "labels_for",
    "list_families",
    "list_models",
    "load_checkpoint",
    "preprocessing_for",
]

"""Build registered architectures, optionally with weights, and answer what they expect and emit."""

from __future__ import annotations

import os
from functools import cache
from importlib import resources

from torch import nn

from models.checkpoints import LoadedCheckpoint, load_checkpoint, load_into, resolve_published
from models.registry import get_model_config
from servable.preprocessing import Preprocessing

WeightsSpec = str | os.PathLike[str] | LoadedCheckpoint


def build_model(name: str, *, num_classes: int | None = None) -> nn.Module:
    """A randomly initialised ``name`` in training mode (no weights; see :func:`create_model`)."""
    return get_model_config(name).build(num_classes)


def create_model(
    name: str, *, num_classes: int | None = None, weights: WeightsSpec | None = None
) -> nn.Module:
    """``name`` in eval mode, with ``weights`` (any spec :func:`load_checkpoint` takes) loaded strictly.

    With weights and no ``num_classes``, the class count comes from the checkpoint's head, so
    fine-tuned checkpoints (10, 37 ... classes) load without being told.
    """
    get_model_config(name)  # unknown names fail before any download
    checkpoint: LoadedCheckpoint | None = None
    if weights is not None:
        checkpoint = weights if isinstance(weights, LoadedCheckpoint) else load_checkpoint(weights, arch=name)
        if num_classes is None:
            num_classes = checkpoint.num_classes
    model = build_model(name, num_classes=num_classes)
    if checkpoint is not None:
        load_into(model, checkpoint, arch=name)
    return model.eval()


def preprocessing_for(name: str, weights: WeightsSpec | None = None) -> Preprocessing:
    """The preprocessing ``weights`` were trained with: the published checkpoint's, else the default."""
    config = get_model_config(name)
    if weights is None:
        return config.preprocessing
    if isinstance(weights, LoadedCheckpoint):
        published = weights.published
    else:
        published = resolve_published(weights)
    return published.preprocessing if published is not None else config.preprocessing


@cache
def _label_file(label_set: str) -> tuple[str, ...]:
    text = resources.files("models").joinpath("labels", f"{label_set}.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def labels_for(name: str, num_classes: int | None = None) -> tuple[str, ...] | None:
    """Class names of ``name``'s label set, or None when ``num_classes`` differs from its size."""
    labels = _label_file(get_model_config(name).label_set)
    if num_classes is not None and num_classes != len(labels):
        return None
    return labels

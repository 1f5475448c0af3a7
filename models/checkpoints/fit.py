"""Fitting a state_dict to a registered architecture: expected keys, adaptation, strict checks, loading.

Nothing here imports an architecture. The registry supplies what differs per family: the builder
(run on the meta device for the expected keys and shapes, which costs no memory), the head name,
and the optional key adapter that renames an old release's keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
from torch import nn

from models.checkpoints.errors import CheckpointError, first_items
from models.checkpoints.state_dict import infer_num_classes
from models.registry import get_model_config, head_names, list_models

if TYPE_CHECKING:
    from models.checkpoints.loader import LoadedCheckpoint


@lru_cache(maxsize=128)
def expected_shapes(arch: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Every state_dict key of ``arch`` and its shape, in order, from a model built on the meta device."""
    with torch.device("meta"):
        model = get_model_config(arch).build(num_classes)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def adapt_head(state_dict: dict[str, torch.Tensor], head_name: str) -> dict[str, torch.Tensor]:
    """Rename the classifier to ``head_name`` if only another known head is there (``fc`` <-> ``linear``)."""
    if any(key.startswith(f"{head_name}.") for key in state_dict):
        return state_dict
    for other in head_names():
        if other != head_name and any(key.startswith(f"{other}.") for key in state_dict):
            prefix = f"{other}."
            return {
                (f"{head_name}.{key[len(prefix) :]}" if key.startswith(prefix) else key): value
                for key, value in state_dict.items()
            }
    return state_dict


def adapt(state_dict: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """``state_dict`` as ``arch`` names things: its family's key adapter, then its head name."""
    config = get_model_config(arch)
    if config.key_adapter is not None:
        state_dict = config.key_adapter(state_dict)
    return adapt_head(state_dict, config.head_name)


def _is_optional(key: str) -> bool:
    """BN counters that old checkpoints lack; loading fills them with zero, as PyTorch itself does."""
    return key.endswith("num_batches_tracked")


def mismatch(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]
) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, mis-shaped as 'key: checkpoint (..) vs model (..)') keys."""
    missing = [key for key in expected if key not in state_dict and not _is_optional(key)]
    unexpected = [key for key in state_dict if key not in expected]
    misshaped = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {expected[key]}"
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != expected[key]
    ]
    return missing, unexpected, misshaped


def fitting_architectures(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Registered architectures whose keys and shapes this state_dict fits exactly (after adaptation)."""
    try:
        num_classes = infer_num_classes(state_dict)
    except CheckpointError:
        return []
    fits = []
    for arch in list_models():
        adapted = adapt(dict(state_dict), arch)
        expected = expected_shapes(arch, num_classes)
        if len(adapted) > len(expected):
            continue
        if not any(mismatch(adapted, expected)):
            fits.append(arch)
    return fits


def check_fits(
    state_dict: dict[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], arch: str, source: str
) -> None:
    """Raise a CheckpointError naming missing/unexpected/mis-shaped keys and any architecture that fits."""
    missing, unexpected, misshaped = mismatch(state_dict, expected)
    if not (missing or unexpected or misshaped):
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            parts.append(f"{len(keys)} {label} key{'s' if len(keys) != 1 else ''} ({first_items(keys)})")
    message = f"checkpoint {source} does not fit {arch}: " + "; ".join(parts) + "."
    others = [name for name in fitting_architectures(state_dict) if name != arch]
    if others:
        message += f" Its keys and shapes fit {', '.join(others)}: create_model({others[0]!r}, weights=...)."
    raise CheckpointError(message)


def check_fits_arch(state_dict: dict[str, torch.Tensor], arch: str, num_classes: int, source: str) -> None:
    """:func:`check_fits` against ``arch`` with ``num_classes`` outputs, after adapting the keys."""
    check_fits(adapt(state_dict, arch), expected_shapes(arch, num_classes), arch, source)


def load_into(model: nn.Module, checkpoint: LoadedCheckpoint, *, arch: str) -> None:
    """Copy ``checkpoint`` into ``model`` (an ``arch``) strictly: every key, nothing extra, equal shapes."""
    state_dict = adapt(checkpoint.state_dict, arch)
    model_state = model.state_dict()
    check_fits(
        state_dict, {key: tuple(value.shape) for key, value in model_state.items()}, arch, checkpoint.source
    )
    complete = dict(state_dict)
    for key, value in model_state.items():
        if key not in complete and _is_optional(key):
            complete[key] = torch.zeros_like(value)
    model.load_state_dict(complete, strict=True)

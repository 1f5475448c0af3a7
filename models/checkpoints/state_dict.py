"""Reading a checkpoint file and unwrapping the bare state_dict from what people save around it.

Pickles are read with ``torch.load(weights_only=True)``: files that would run code or build
objects other than tensors and plain containers are refused. Nothing here knows an architecture:
the class count is read from whichever registered head name the file holds.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from models.checkpoints.errors import CheckpointError, first_items
from models.registry import head_names

#: Containers people save a state_dict in, looked into in this order.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
#: Key prefixes added by nn.DataParallel/DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_file(path: Path) -> object:
    """The object saved in ``path`` (safetensors by suffix, else a weights-only pickle)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path} as safetensors: {exc}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickling_detail(str(exc))
        if "global" in detail.lower():
            raise CheckpointError(
                f"refusing {path}: it is a pickle that would run code or build objects other than tensors"
                f" and plain containers (loaded with weights_only=True). Re-save just the state_dict"
                f" (torch.save(model.state_dict(), ...)) or use safetensors. Detail: {detail}"
            ) from None
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint (corrupt or another format): {detail}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError, KeyError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {detail}") from None


def _unpickling_detail(message: str) -> str:
    """The line of torch's long weights_only message that says what was wrong."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "global" in line or line.startswith("Unsupported"):
            return line
    return lines[-1] if lines else "unpickling failed"


def unwrap_state_dict(obj: object, *, origin: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The bare state_dict inside what people save: wrapper dicts and DataParallel/compile prefixes."""
    for _ in range(len(WRAPPER_KEYS) + 1):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[key] for key in WRAPPER_KEYS if isinstance(obj.get(key), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{origin} holds no state_dict (found {type(obj).__name__})")
    not_tensors = [str(key) for key, value in obj.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{origin} is not a state_dict: {len(not_tensors)} entries are not tensors"
            f" ({first_items(not_tensors)}); expected a mapping of names to tensors, possibly under"
            f" {' / '.join(repr(k) for k in WRAPPER_KEYS)}"
        )
    state_dict = {str(key): value for key, value in obj.items()}
    for prefix in WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


def _classifier_rows(weight: torch.Tensor | None) -> int | None:
    """Rows of a linear head (2-D) or of a 1x1 convolution head (timm's ResNetV2: N x C x 1 x 1)."""
    if weight is None:
        return None
    if weight.dim() == 2 or (weight.dim() == 4 and tuple(weight.shape[2:]) == (1, 1)):
        return int(weight.shape[0])
    return None


def infer_num_classes(
    state_dict: Mapping[str, torch.Tensor], *, origin: str = "checkpoint", head_name: str | None = None
) -> int:
    """Rows of the classifier weight: ``head_name``'s if given and present, else any registered head's."""
    names = ((head_name,) if head_name else ()) + head_names()
    for head in names:
        rows = _classifier_rows(state_dict.get(f"{head}.weight"))
        if rows is not None:
            return rows
    raise CheckpointError(
        f"{origin} has no classifier head ({' or '.join(f'{h}.weight' for h in head_names())});"
        f" its keys start {first_items(list(state_dict))}"
    )

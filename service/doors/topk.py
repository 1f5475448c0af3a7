"""Top-k over one probability row, as every door answers it."""

from __future__ import annotations

import numpy as np

from service.engine.served import ServedVersion
from service.errors import ServiceError


def top_k(row: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` highest scores, highest first (ties keep index order)."""
    if k < row.shape[0]:
        best = np.argpartition(row, -k)[-k:]
        best = best[np.argsort(-row[best], kind="stable")]
    else:
        best = np.argsort(-row, kind="stable")
    return [int(i) for i in best.tolist()]


def bounded_top_k(requested: int | None, default: int, served: ServedVersion) -> int:
    """``requested`` checked against the model's class count, or the model's default capped by it."""
    classes = served.model.card.num_classes
    if requested is not None and requested > classes:
        raise ServiceError(422, "bad_top_k", f"top_k must be between 1 and {classes} for model {served.name!r}")
    return min(requested or default, classes)

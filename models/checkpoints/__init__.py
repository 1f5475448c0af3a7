"""Checkpoints, split by job; none of it knows an architecture (the registry answers for them).

- :mod:`~models.checkpoints.specs`: spec syntax -> what to fetch, which publication a file is;
- :mod:`~models.checkpoints.download`: the cache, downloads, hash checks, atomic writes;
- :mod:`~models.checkpoints.state_dict`: reading files safely, unwrapping, the class count;
- :mod:`~models.checkpoints.fit`: adapting keys, strict fit checks, loading into a model;
- :mod:`~models.checkpoints.loader`: :func:`load_checkpoint`, which strings them together.
"""

from models.checkpoints.download import cache_dir, cache_path_for, downloads_allowed, file_sha256
from models.checkpoints.errors import CheckpointError
from models.checkpoints.fit import (
    adapt,
    adapt_head,
    check_fits,
    expected_shapes,
    fitting_architectures,
    load_into,
    mismatch,
)
from models.checkpoints.loader import LoadedCheckpoint, load_checkpoint
from models.checkpoints.specs import resolve_published
from models.checkpoints.state_dict import infer_num_classes, unwrap_state_dict

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "adapt",
    "adapt_head",
    "cache_dir",
    "cache_path_for",
    "check_fits",
    "downloads_allowed",
    "expected_shapes",
    "file_sha256",
    "fitting_architectures",
    "infer_num_classes",
    "load_checkpoint",
    "load_into",
    "mismatch",
    "resolve_published",
    "unwrap_state_dict",
]

"""``load_checkpoint``: a spec -> a verified, unwrapped state_dict with where it came from."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.checkpoints.download import fetch, file_sha256
from models.checkpoints.errors import CheckpointError
from models.checkpoints.fit import check_fits_arch
from models.checkpoints.specs import existing_local_file, published_by_sha, resolve_remote
from models.checkpoints.state_dict import infer_num_classes, read_file, unwrap_state_dict
from models.config import PublishedCheckpoint
from models.progress import SILENT, Progress
from models.registry import get_model_config


@dataclass(frozen=True, eq=False)
class LoadedCheckpoint:
    """A state_dict read from a verified file, unwrapped (keys as saved), with where it came from."""

    state_dict: dict[str, torch.Tensor] = field(repr=False)
    source: str
    sha256: str
    num_classes: int
    published: PublishedCheckpoint | None
    path: Path


def load_checkpoint(
    spec: str | os.PathLike[str], *, arch: str | None = None, progress: Progress = SILENT
) -> LoadedCheckpoint:
    """Read ``spec`` (see :mod:`models.checkpoints.specs`) into an unwrapped, verified state_dict.

    With ``arch``, also check that the checkpoint is meant for it (a named one) and fits it. A download
    shows its bytes on ``progress`` (nothing by default).
    """
    if isinstance(spec, LoadedCheckpoint):  # type: ignore[unreachable]
        raise TypeError("load_checkpoint takes a spec; pass a LoadedCheckpoint to create_model directly")
    source = os.fspath(spec)
    head_name = get_model_config(arch).head_name if arch is not None else None
    remote = resolve_remote(source)
    if remote is not None:
        path, sha = fetch(remote, progress)
        published = remote.published or (published_by_sha(sha) if remote.expected_sha256 else None)
    else:
        path = existing_local_file(source)
        sha = file_sha256(path)
        published = published_by_sha(sha)
    state_dict = unwrap_state_dict(read_file(path), origin=str(path))
    num_classes = infer_num_classes(state_dict, origin=str(path), head_name=head_name)
    if arch is not None:
        if published is not None and published.arch != arch and remote is not None:
            raise CheckpointError(
                f"{source} is the published {published.arch} checkpoint, not one for {arch}"
            )
        check_fits_arch(state_dict, arch, num_classes, source)
    return LoadedCheckpoint(
        state_dict=state_dict,
        source=source,
        sha256=sha,
        num_classes=num_classes,
        published=published,
        path=path,
    )

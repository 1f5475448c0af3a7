"""Checkpoint specs -> what to fetch, and which published checkpoint a spec, URL or hash is.

Specs the loader takes:

- a local file: ``.pth/.pt/.th/.bin`` or ``.safetensors``;
- ``https://...#sha256=<hex>`` (full hash or a prefix of at least 8 digits), or the URL of a known
  published checkpoint (its published hash is used);
- ``torchvision:<arch>:<TAG>`` (``DEFAULT`` allowed), ``cifar10:<arch>``, ``hf:<org>/<repo>``
  (``hf:timm/seresnet50.a1_in1k`` -> the repo's ``model.safetensors``; no hash is published, the
  file's hash is recorded).

Everything here reads the registry's published facts; nothing knows an architecture.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from models.checkpoints.download import Remote, file_sha256
from models.checkpoints.errors import CheckpointError
from models.config import PublishedCheckpoint
from models.registry import all_checkpoints, get_model_config
from models.sources import hf_url

_SHA_FRAGMENT = re.compile(r"^sha256=([0-9a-fA-F]{8,64})$")
#: Named specs: scheme -> the layout whose checkpoints it names.
_NAMED_SCHEMES = {"torchvision": "torchvision", "cifar10": "cifar"}


def published_by_url(url: str) -> PublishedCheckpoint | None:
    for checkpoint in all_checkpoints():
        if checkpoint.url == url:
            return checkpoint
    return None


def published_by_sha(sha256: str) -> PublishedCheckpoint | None:
    for checkpoint in all_checkpoints():
        if checkpoint.sha256 and sha256.startswith(checkpoint.sha256.lower()):
            return checkpoint
    return None


def _named_checkpoint(spec: str) -> PublishedCheckpoint | None:
    """The published checkpoint a ``torchvision:``/``cifar10:`` spec names (None for other specs)."""
    scheme, _, rest = spec.partition(":")
    if scheme not in _NAMED_SCHEMES:
        return None
    layout = _NAMED_SCHEMES[scheme]
    if scheme == "torchvision":
        arch, sep, tag = rest.partition(":")
        if not sep or not tag:
            raise CheckpointError(
                f"{spec!r}: expected torchvision:<arch>:<TAG>, e.g. torchvision:resnet50:IMAGENET1K_V2"
            )
    else:
        arch, tag = rest, "cifar10"
    try:
        config = get_model_config(arch)
        if config.layout != layout:
            raise KeyError(f"{arch} is a {config.layout} architecture, {scheme}: names {layout} checkpoints")
        return config.checkpoint(tag)
    except KeyError as exc:
        raise CheckpointError(f"{spec!r}: {exc.args[0]}") from None


def resolve_remote(spec: str) -> Remote | None:
    """Turn a named or URL spec into what to fetch; None when ``spec`` is not one of those."""
    published = _named_checkpoint(spec)
    if published is not None:
        return Remote(published.url, published.sha256, published)
    if spec.startswith("hf:"):
        repo_id = spec[3:].strip("/")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise CheckpointError(f"{spec!r}: expected hf:<org>/<repo>, e.g. hf:timm/seresnet50.a1_in1k")
        url = hf_url(repo_id)
        published = published_by_url(url)
        return Remote(url, published.sha256 if published else None, published)
    if spec.startswith(("https://", "http://")):
        url, _, fragment = spec.partition("#")
        published = published_by_url(url)
        expected: str | None
        if fragment:
            match = _SHA_FRAGMENT.match(fragment)
            if match is None:
                raise CheckpointError(f"{spec!r}: the URL fragment must be #sha256=<hex, 8 to 64 digits>")
            expected = match.group(1).lower()
        elif published is not None:
            expected = published.sha256
        else:
            raise CheckpointError(
                f"{url} is not a known published checkpoint and names no hash: append #sha256=<hex>"
                " (the file's SHA-256, or at least its first 8 digits) so the download can be checked"
            )
        return Remote(url, expected, published)
    return None


def existing_local_file(text: str) -> Path:
    """The local file ``text`` names, or a CheckpointError listing every spec form."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint file at {path} (weights are a local .pth/.pt/.th/.bin/.safetensors file,"
            " https://...#sha256=<hex>, torchvision:<arch>:<TAG>, cifar10:<arch> or hf:<org>/<repo>)"
        )
    return path


def resolve_published(spec: str | os.PathLike[str]) -> PublishedCheckpoint | None:
    """The published checkpoint a spec names or whose hash a local file has, without downloading."""
    text = os.fspath(spec)
    remote = resolve_remote(text)
    if remote is not None:
        if remote.published is None and remote.expected_sha256:
            return published_by_sha(remote.expected_sha256)
        return remote.published
    return published_by_sha(file_sha256(existing_local_file(text)))

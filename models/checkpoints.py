"""Find, fetch, verify and unwrap checkpoints, and load them strictly into registered architectures.

Specs the loader takes:

- a local file: ``.pth/.pt/.th/.bin`` (``torch.load(weights_only=True)``: pickles that would run code
  are refused) or ``.safetensors``;
- ``https://...#sha256=<hex>`` (full hash or a prefix of at least 8 digits), or the URL of a known
  published checkpoint (its published hash is used);
- ``torchvision:<arch>:<TAG>`` (``DEFAULT`` allowed), ``cifar10:<arch>``, ``hf:<org>/<repo>``
  (``hf:timm/seresnet50.a1_in1k`` -> the repo's ``model.safetensors``; no hash is published, the
  file's hash is recorded).

Downloads land in ``$RESNET_SERVE_CACHE_DIR`` (default ``~/.cache/resnet-serve``) under the URL's
basename (Hugging Face files under ``huggingface/<org>/<repo>/``), so a folder of published files can
seed the cache. They are written to a temporary file in the same folder, checked, fsynced and renamed:
a partial or wrong file never sits under the final name. ``RESNET_SERVE_OFFLINE=1`` forbids downloads.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from models.config import PublishedCheckpoint
from models.registry import all_checkpoints, get_model_config, list_models
from models.resnet import ResNet

CACHE_DIR_ENV = "RESNET_SERVE_CACHE_DIR"
OFFLINE_ENV = "RESNET_SERVE_OFFLINE"
TIMEOUT_ENV = "RESNET_SERVE_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
HEAD_NAMES = ("fc", "linear")
#: Containers people save a state_dict in, looked into in this order.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
#: Key prefixes added by nn.DataParallel/DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_CHUNK = 1 << 20
_SHA_FRAGMENT = re.compile(r"^sha256=([0-9a-fA-F]{8,64})$")
_SHOWN_KEYS = 5


class CheckpointError(Exception):
    """A checkpoint cannot be found, fetched, trusted, read or fitted; the message says what and where."""


@dataclass(frozen=True, eq=False)
class LoadedCheckpoint:
    """A state_dict read from a verified file, unwrapped, with where it came from."""

    state_dict: dict[str, torch.Tensor] = field(repr=False)
    source: str
    sha256: str
    num_classes: int
    published: PublishedCheckpoint | None
    path: Path


@dataclass(frozen=True)
class _Remote:
    """A file to fetch: where from, where it is cached, what hash it must have (None: unknown)."""

    url: str
    expected_sha256: str | None
    cache_path: Path
    published: PublishedCheckpoint | None


# --- environment ------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where downloads go; read at every call so tests and deployments can point it elsewhere."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "resnet-serve"


def downloads_allowed() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def _timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise CheckpointError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None


# --- spec resolution ----------------------------------------------------------------------------------


def _cache_path_for(url: str) -> Path:
    """``<cache>/<basename>``; Hugging Face repos all name their file model.safetensors, so they nest."""
    parsed = urllib.parse.urlsplit(url)
    parts = [urllib.parse.unquote(part) for part in parsed.path.split("/") if part]
    if not parts or parts[-1] in (".", ".."):
        raise CheckpointError(f"cannot name a cache file after {url!r}: its path has no file name")
    if parsed.hostname == "huggingface.co" and len(parts) >= 3 and "resolve" in parts:
        org, repo = parts[0], parts[1]
        return cache_dir() / "huggingface" / org / repo / parts[-1]
    return cache_dir() / parts[-1]


def _published_by_url(url: str) -> PublishedCheckpoint | None:
    for checkpoint in all_checkpoints():
        if checkpoint.url == url:
            return checkpoint
    return None


def _published_by_sha(sha256: str) -> PublishedCheckpoint | None:
    for checkpoint in all_checkpoints():
        if checkpoint.sha256 and sha256.startswith(checkpoint.sha256.lower()):
            return checkpoint
    return None


def _named_checkpoint(spec: str) -> PublishedCheckpoint | None:
    """The published checkpoint a ``torchvision:``/``cifar10:`` spec names (None for other specs)."""
    scheme, _, rest = spec.partition(":")
    if scheme == "torchvision":
        arch, sep, tag = rest.partition(":")
        if not sep or not tag:
            raise CheckpointError(
                f"{spec!r}: expected torchvision:<arch>:<TAG>, e.g. torchvision:resnet50:IMAGENET1K_V2"
            )
        family = "torchvision"
    elif scheme == "cifar10":
        arch, tag, family = rest, "cifar10", "cifar"
    else:
        return None
    try:
        config = get_model_config(arch)
        if config.family != family:
            raise KeyError(f"{arch} is a {config.family} architecture, {scheme}: names {family} checkpoints")
        return config.checkpoint(tag)
    except KeyError as exc:
        raise CheckpointError(f"{spec!r}: {exc.args[0]}") from None


def _resolve_remote(spec: str) -> _Remote | None:
    """Turn a named or URL spec into what to fetch; None when ``spec`` is not one of those."""
    published = _named_checkpoint(spec)
    if published is not None:
        return _Remote(published.url, published.sha256, _cache_path_for(published.url), published)
    if spec.startswith("hf:"):
        repo_id = spec[3:].strip("/")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise CheckpointError(f"{spec!r}: expected hf:<org>/<repo>, e.g. hf:timm/seresnet50.a1_in1k")
        url = f"https://huggingface.co/{repo_id}/resolve/main/model.safetensors"
        published = _published_by_url(url)
        return _Remote(url, published.sha256 if published else None, _cache_path_for(url), published)
    if spec.startswith(("https://", "http://")):
        url, _, fragment = spec.partition("#")
        published = _published_by_url(url)
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
        return _Remote(url, expected, _cache_path_for(url), published)
    return None


def resolve_published(spec: str | os.PathLike[str]) -> PublishedCheckpoint | None:
    """The published checkpoint a spec names or whose hash a local file has, without downloading."""
    text = os.fspath(spec)
    remote = _resolve_remote(text)
    if remote is not None:
        if remote.published is None and remote.expected_sha256:
            return _published_by_sha(remote.expected_sha256)
        return remote.published
    return _published_by_sha(file_sha256(_existing_local_file(text)))


# --- files and downloads -----------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_ok(actual: str, expected: str | None) -> bool:
    return expected is None or actual.startswith(expected.lower())


def _existing_local_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint file at {path} (weights are a local .pth/.pt/.th/.bin/.safetensors file,"
            " https://...#sha256=<hex>, torchvision:<arch>:<TAG>, cifar10:<arch> or hf:<org>/<repo>)"
        )
    return path


def _drop_hint(remote: _Remote) -> str:
    return f"download {remote.url} yourself and drop it at {remote.cache_path}"


def _fetch(remote: _Remote) -> tuple[Path, str]:
    """The cached file for ``remote`` (downloading it if needed) and its SHA-256."""
    path = remote.cache_path
    if path.is_file():
        sha = file_sha256(path)
        if _hash_ok(sha, remote.expected_sha256):
            return path, sha
        if not downloads_allowed():
            raise CheckpointError(
                f"cached {path} has SHA-256 {sha}, expected {remote.expected_sha256}; downloads are off"
                f" ({OFFLINE_ENV}=1): replace it with the right file from {remote.url}"
            )
    elif not downloads_allowed():
        raise CheckpointError(
            f"{remote.url} is not cached and downloads are off ({OFFLINE_ENV}=1): {_drop_hint(remote)}"
        )
    return path, _download(remote)


def _download(remote: _Remote) -> str:
    """Stream ``remote.url`` into a temp file beside the target, check it, rename it into place."""
    target = remote.cache_path
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create the cache folder {target.parent}: {exc}") from None
    request = urllib.request.Request(remote.url, headers={"User-Agent": "resnet-serve"})
    descriptor, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    temp_path = Path(temp_name)
    try:
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(descriptor, "wb") as out:
            try:
                with urllib.request.urlopen(request, timeout=_timeout_s()) as response:  # noqa: S310 (http(s) only)
                    announced = response.headers.get("Content-Length")
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        received += len(chunk)
            except urllib.error.HTTPError as exc:
                raise CheckpointError(
                    f"downloading {remote.url} failed: HTTP {exc.code} {exc.reason}; {_drop_hint(remote)}"
                ) from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise CheckpointError(
                    f"downloading {remote.url} failed: {reason!s}; {_drop_hint(remote)}"
                ) from None
            if announced is not None and announced.isdigit() and received != int(announced):
                raise CheckpointError(
                    f"downloading {remote.url} failed: got {received} of {announced} bytes (connection cut);"
                    f" {_drop_hint(remote)}"
                )
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        if not _hash_ok(sha, remote.expected_sha256):
            raise CheckpointError(
                f"{remote.url} has SHA-256 {sha}, expected {remote.expected_sha256}: refusing the file"
                " (it is corrupt or not the published one)"
            )
        os.replace(temp_path, target)
        fsync_dir(target.parent)
        return sha
    finally:
        temp_path.unlink(missing_ok=True)


def fsync_dir(folder: Path) -> None:
    """Make the rename durable where the platform allows fsync on a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- reading and unwrapping --------------------------------------------------------------------------


def _read_file(path: Path) -> object:
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
            f" ({_first(not_tensors)}); expected a mapping of names to tensors, possibly under"
            f" {' / '.join(repr(k) for k in WRAPPER_KEYS)}"
        )
    state_dict = {str(key): value for key, value in obj.items()}
    for prefix in WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


def infer_num_classes(state_dict: Mapping[str, torch.Tensor], *, origin: str = "checkpoint") -> int:
    """Rows of the classifier weight (``fc.weight`` or ``linear.weight``)."""
    for head in HEAD_NAMES:
        weight = state_dict.get(f"{head}.weight")
        if weight is not None and weight.dim() == 2:
            return int(weight.shape[0])
    raise CheckpointError(
        f"{origin} has no classifier head ({' or '.join(f'{h}.weight' for h in HEAD_NAMES)});"
        f" its keys start {_first(list(state_dict))}"
    )


# --- fitting to an architecture ------------------------------------------------------------------------


@lru_cache(maxsize=128)
def expected_shapes(arch: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Every state_dict key of ``arch`` and its shape, from a model built on the meta device (no memory)."""
    config = get_model_config(arch)
    with torch.device("meta"):
        model = ResNet(num_classes=num_classes, **config.builder_kwargs())  # type: ignore[arg-type]
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def adapt_head(state_dict: dict[str, torch.Tensor], head_name: str) -> dict[str, torch.Tensor]:
    """Rename the classifier (``fc`` <-> ``linear``) to the model's name when only the other is present."""
    if any(key.startswith(f"{head_name}.") for key in state_dict):
        return state_dict
    for other in HEAD_NAMES:
        if other != head_name and any(key.startswith(f"{other}.") for key in state_dict):
            prefix = f"{other}."
            return {
                (f"{head_name}.{key[len(prefix) :]}" if key.startswith(prefix) else key): value
                for key, value in state_dict.items()
            }
    return state_dict


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN_KEYS])
    return shown + (", ..." if len(items) > _SHOWN_KEYS else "")


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
    """Registered architectures whose keys and shapes this state_dict fits exactly."""
    try:
        num_classes = infer_num_classes(state_dict)
    except CheckpointError:
        return []
    fits = []
    for arch in list_models():
        adapted = adapt_head(dict(state_dict), get_model_config(arch).head_name)
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
            parts.append(f"{len(keys)} {label} key{'s' if len(keys) != 1 else ''} ({_first(keys)})")
    message = f"checkpoint {source} does not fit {arch}: " + "; ".join(parts) + "."
    others = [name for name in fitting_architectures(state_dict) if name != arch]
    if others:
        message += f" Its keys and shapes fit {', '.join(others)}: create_model({others[0]!r}, weights=...)."
    raise CheckpointError(message)


def load_into(model: ResNet, checkpoint: LoadedCheckpoint, *, arch: str) -> None:
    """Copy ``checkpoint`` into ``model`` strictly (every key present, nothing extra, shapes equal)."""
    state_dict = adapt_head(checkpoint.state_dict, model.head_name)
    model_state = model.state_dict()
    check_fits(
        state_dict, {key: tuple(value.shape) for key, value in model_state.items()}, arch, checkpoint.source
    )
    complete = dict(state_dict)
    for key, value in model_state.items():
        if key not in complete and _is_optional(key):
            complete[key] = torch.zeros_like(value)
    model.load_state_dict(complete, strict=True)


# --- the entry point -----------------------------------------------------------------------------------


def load_checkpoint(spec: str | os.PathLike[str], *, arch: str | None = None) -> LoadedCheckpoint:
    """Read ``spec`` (see module doc) into an unwrapped, verified state_dict.

    With ``arch``, also check that the checkpoint is meant for it (a named one) and fits it.
    """
    if isinstance(spec, LoadedCheckpoint):  # type: ignore[unreachable]
        raise TypeError("load_checkpoint takes a spec; pass a LoadedCheckpoint to create_model directly")
    source = os.fspath(spec)
    if arch is not None:
        get_model_config(arch)
    remote = _resolve_remote(source)
    if remote is not None:
        path, sha = _fetch(remote)
        published = remote.published or (_published_by_sha(sha) if remote.expected_sha256 else None)
    else:
        path = _existing_local_file(source)
        sha = file_sha256(path)
        published = _published_by_sha(sha)
    state_dict = unwrap_state_dict(_read_file(path), origin=str(path))
    num_classes = infer_num_classes(state_dict, origin=str(path))
    if arch is not None:
        if published is not None and published.arch != arch and remote is not None:
            raise CheckpointError(
                f"{source} is the published {published.arch} checkpoint, not one for {arch}"
            )
        head_name = get_model_config(arch).head_name
        check_fits(adapt_head(state_dict, head_name), expected_shapes(arch, num_classes), arch, source)
    return LoadedCheckpoint(
        state_dict=state_dict,
        source=source,
        sha256=sha,
        num_classes=num_classes,
        published=published,
        path=path,
    )

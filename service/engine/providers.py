"""Execution providers: which to ask for, their options, and where onnxruntime really put the nodes.

What a first GPU run would otherwise hit, each handled here:

- onnxruntime names a cached TensorRT engine from the file name, tensor names and versions, never the
  weights (``TRTGenerateId``), and every export is ``model.onnx`` with the same graph: without a prefix of
  its own, v2 of a model would run v1's engine from a shared cache. :func:`engine_cache_prefix` keys it by
  name, version, file fingerprint and profile.
- The TensorRT provider links ``libnvinfer.so.10`` *and* ``libnvonnxparser.so.10`` (``readelf -d`` of
  onnxruntime-gpu 1.31's ``libonnxruntime_providers_tensorrt.so``); a host with one but not the other
  loses TensorRT, so :func:`tensorrt_loadable` asks for both.
- INT8 files are asymmetric uint8 QDQ, which TensorRT cannot build (it takes symmetric int8 only): they
  are served on CUDA or the CPU on purpose, and the load says so.
- An engine cache folder that cannot be made costs TensorRT, not the model: CUDA serves it.
- ``get_providers()`` lists what was registered, not what runs: :func:`node_providers` reads onnxruntime's
  record of which provider each node went to.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from servable.card import INPUT_NAME, ModelCard
from servable.layout import VersionFile

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = frozenset({TENSORRT, CUDA})

#: What the TensorRT provider of onnxruntime-gpu 1.31 links beyond CUDA (tests/test_providers.py reads
#: the provider library's NEEDED entries where it is installed, so an upgrade that changes them fails there).
TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvonnxparser.so.10")
#: The CUDA 13 runtime the CUDA provider needs (cuBLASLt for the GEMMs, cuDNN 9 for the convolutions).
CUDA_LIBRARIES = ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcudnn.so.9")
#: Session config key (onnxruntime >= 1.23) that keeps the provider of every node for
#: ``InferenceSession.get_provider_graph_assignment_info()``.
RECORD_ASSIGNMENT = "session.record_ep_graph_assignment_info"
#: Ops that only compute shapes: onnxruntime keeps them on the CPU beside CUDA by design.
SHAPE_OPS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "ConstantOfShape", "Range", "Size"})


def gpu_device_present() -> bool:
    """An NVIDIA device node exists (containers get them only with a GPU attached)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def _wheel_library_dirs() -> list[Path]:
    """Folders of NVIDIA's pip wheels that hold shared libraries (tensorrt-cu13-libs, nvidia-*)."""
    folders = []
    for package in ("tensorrt_libs", "nvidia"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for root in (spec.submodule_search_locations or []) if spec else []:
            folders.append(Path(root))
            folders.extend(sorted(Path(root).glob("*/lib")))
    return folders


def load_library(name: str) -> None:
    """Load ``name`` (a soname) globally, from the loader's path or NVIDIA's wheels; raises OSError.

    Loaded by full path, a wheel's library then satisfies onnxruntime's own ``dlopen`` of the soname."""
    try:
        ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        return
    except OSError as first:
        error = first
    for folder in _wheel_library_dirs():
        candidate = folder / name
        if candidate.is_file():
            ctypes.CDLL(str(candidate), mode=ctypes.RTLD_GLOBAL)
            return
    raise error


def library_problems(names: Iterable[str]) -> dict[str, str]:
    """Each library of ``names`` that does not load, with the loader's reason."""
    problems = {}
    for name in names:
        try:
            load_library(name)
        except OSError as exc:
            problems[name] = str(exc)
    return problems


def tensorrt_loadable() -> bool:
    """Both libraries the TensorRT provider links load (libnvinfer alone is not enough)."""
    return not library_problems(TENSORRT_LIBRARIES)


def resolve_providers(setting: str, available: Sequence[str], *, gpu_present: bool) -> list[str]:
    """The provider list to ask for: 'auto' -> TensorRT, CUDA (with a GPU), CPU; else the list given."""
    if setting.strip().lower() != "auto":
        wanted = [name.strip() for name in setting.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in available]
        if unknown:
            log.warning("providers %s are not in this onnxruntime build (has %s); skipping them", unknown, available)
        chosen = [name for name in wanted if name in available]
        return chosen or [CPU]
    chosen = []
    if gpu_present:
        if TENSORRT in available and tensorrt_loadable():
            chosen.append(TENSORRT)
        if CUDA in available:
            chosen.append(CUDA)
    chosen.append(CPU)
    return chosen


def engine_cache_prefix(entry: VersionFile, card: ModelCard, max_batch_size: int) -> str:
    """The TensorRT engine file prefix of one version: readable name and version, then a digest of what
    the engine depends on that onnxruntime's own id ignores (the file's fingerprint: a republished
    version is a new file) and of the profile and precision it is built for.

    Letters, digits and '_' only: onnxruntime joins it into a file name."""
    side = card.preprocessing.crop_size
    key = f"{entry.name}\0{entry.version}\0{entry.fingerprint}\0{card.export.precision}\0{max_batch_size}\0{side}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9_]", "_", entry.name)[:48]
    return f"{readable}_v{entry.version}_{digest}"


def provider_options(
    provider: str, entry: VersionFile, card: ModelCard, *, cache_dir: Path, device_id: int, max_batch_size: int
) -> dict[str, object]:
    """onnxruntime options of ``provider`` for one version (none for the CPU)."""
    if provider == TENSORRT:
        side = card.preprocessing.crop_size
        cache = str(cache_dir.resolve())
        return {
            "device_id": device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_engine_cache_prefix": engine_cache_prefix(entry, card, max_batch_size),
            # Tactic timings depend on layer shapes, not weights: one timing cache serves every version.
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
            "trt_fp16_enable": card.export.precision == "fp16",
            "trt_profile_min_shapes": f"{INPUT_NAME}:1x{side}x{side}x3",
            "trt_profile_opt_shapes": f"{INPUT_NAME}:{max_batch_size}x{side}x{side}x3",
            "trt_profile_max_shapes": f"{INPUT_NAME}:{max_batch_size}x{side}x{side}x3",
        }
    if provider == CUDA:
        return {"device_id": device_id}
    return {}


@dataclass(frozen=True)
class ProviderPlan:
    """What to ask onnxruntime for, what must then be active for no fallback, and why they differ."""

    session: list[str]
    expected: list[str]
    notes: tuple[str, ...] = ()


def plan_providers(requested: Sequence[str], card: ModelCard, cache_dir: Path) -> ProviderPlan:
    """Drop TensorRT where it cannot serve this file: on purpose for INT8 (not a fallback), and when the
    engine cache folder cannot be made (a fallback: TensorRT was wanted and is not there)."""
    session, expected, notes = list(requested), list(requested), []
    if TENSORRT in session and card.export.precision == "int8":
        session.remove(TENSORRT)
        expected.remove(TENSORRT)
        notes.append("INT8 (asymmetric uint8 QDQ) cannot run in TensorRT, which takes symmetric int8 only: "
                     f"served on {session[0]} on purpose")
    if TENSORRT in session:
        problem = engine_cache_problem(cache_dir)
        if problem is not None:
            session.remove(TENSORRT)
            notes.append(f"TensorRT engine cache {cache_dir} unusable ({problem}): served on {session[0]} instead")
    return ProviderPlan(session, expected, tuple(notes))


def engine_cache_problem(cache_dir: Path) -> str | None:
    """Make the engine cache folder; why it cannot be used, or None."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    if not os.access(cache_dir, os.W_OK | os.X_OK):
        log.warning("TensorRT engine cache %s is not writable: engines are rebuilt on every start", cache_dir)
    return None


#: (node name, op type, provider) of every node of a session, as onnxruntime assigned them.
NodeAssignment = tuple[tuple[str, str, str], ...]


def node_providers(session: ort.InferenceSession) -> NodeAssignment:
    """Where each node runs (empty when the session was made without :data:`RECORD_ASSIGNMENT`)."""
    try:
        subgraphs = session.get_provider_graph_assignment_info()
    except Exception as exc:  # noqa: BLE001 (onnxruntime's errors derive from Exception only)
        log.warning("onnxruntime cannot say where nodes run (%s)", exc)
        return ()
    return tuple((node.name, node.op_type, subgraph.ep_name) for subgraph in subgraphs for node in subgraph.get_nodes())


def active_providers(assignment: NodeAssignment, registered: Sequence[str]) -> list[str]:
    """Registered providers that run at least one node, in registration order (all of them when the
    assignment is unknown)."""
    if not assignment:
        return list(registered)
    used = {provider for _, _, provider in assignment}
    return [name for name in registered if name in used]


def cpu_compute_nodes(assignment: NodeAssignment) -> list[tuple[str, str]]:
    """(name, op type) of nodes on the CPU provider that compute on tensors, not only shapes."""
    return [(name, op) for name, op, provider in assignment if provider == CPU and op not in SHAPE_OPS]


_dlls_preloaded = False


def preload_gpu_libraries() -> None:
    """Let onnxruntime find CUDA/cuDNN from the nvidia-* wheels (no-op on builds without it)."""
    global _dlls_preloaded
    if _dlls_preloaded or not hasattr(ort, "preload_dlls"):
        return
    _dlls_preloaded = True
    try:
        ort.preload_dlls()
    except Exception as exc:  # noqa: BLE001 (a failed preload only means the libraries come from elsewhere)
        log.warning("onnxruntime.preload_dlls() failed: %s", exc)

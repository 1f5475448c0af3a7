"""onnxruntime sessions: provider choice, silent-fallback detection, throughput options and warm-up.

onnxruntime quietly drops CUDA/TensorRT when their libraries are missing and runs on the CPU, and its
Python layer retries a failed TensorRT session as CUDA-only (printing to stdout) or switches providers
in the middle of ``run()``. Sessions here are made with its fallback off; we try the next providers
ourselves, read where every node went (``service.engine.providers``), compare that with what we asked
for and say so loudly (log, /models, /metrics), and ``REQUIRE_GPU`` turns "no GPU" into "not ready".
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from servable.card import INPUT_NAME, OUTPUT_NAME, InvalidModelCard, ModelCard
from servable.layout import UnreadableFile, VersionFile, read_regular_file
from service.engine.providers import (
    CPU,
    CUDA,
    GPU_PROVIDERS,
    RECORD_ASSIGNMENT,
    TENSORRT,
    NodeAssignment,
    active_providers,
    gpu_device_present,
    node_providers,
    plan_providers,
    preload_gpu_libraries,
    provider_options,
    resolve_providers,
)
from service.limits.cpus import int8_pairs_saturate
from service.settings import Settings

log = logging.getLogger(__name__)


class ModelLoadError(Exception):
    """A model file cannot be served; the message says why (shown in /health/ready)."""


@dataclass(frozen=True)
class RuntimeOptions:
    """Per-model session choices the service derives from global and per-model settings."""

    max_batch_size: int
    buckets: tuple[int, ...]
    intra_op_threads: int


#: Timing the warmed largest batch: repeat while under this many seconds, at most this many runs.
TIMING_BUDGET_S = 0.2
TIMING_RUNS = 9


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two up to the largest batch, plus the largest batch itself: 1, 2, 4, ..., 32."""
    sizes = {max_batch_size}
    size = 1
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


@dataclass
class LoadedModel:
    """A ready session plus what the service reports about it."""

    entry: VersionFile
    card: ModelCard
    session: ort.InferenceSession
    requested_providers: list[str]
    active_providers: list[str]
    buckets: tuple[int, ...]
    pad_to_buckets: bool
    load_seconds: float = 0.0
    warmup_seconds: float = 0.0
    #: Seconds one warmed batch of the largest bucket took (None without warm-up): sizes the queue.
    batch_seconds: float | None = None
    labels: tuple[str, ...] = field(default=())
    #: Where onnxruntime put each node: (name, op type, provider).
    node_providers: NodeAssignment = field(default=())
    #: Why the providers differ from the setting's (INT8 kept off TensorRT, a GPU session that failed).
    provider_notes: tuple[str, ...] = field(default=())
    #: INT8 on the CPU: whether onnxruntime computes the file as its accuracy gate did (None: not INT8
    #: on the CPU, or the CPU's flags are unreadable). False for full-range weights without VNNI.
    int8_exact: bool | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def on_gpu(self) -> bool:
        return bool(GPU_PROVIDERS.intersection(self.active_providers))

    @property
    def gpu_fallback(self) -> bool:
        """The preferred GPU provider asked for runs no node: the CPU serves, or TensorRT was asked for and
        only CUDA runs (TensorRT taking every node, CUDA none, is no fallback)."""
        preferred = next((name for name in self.requested_providers if name in GPU_PROVIDERS), None)
        return preferred is not None and preferred not in self.active_providers

    @property
    def nodes_per_provider(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, _, provider in self.node_providers:
            counts[provider] = counts.get(provider, 0) + 1
        return counts

    def run(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, classes) probabilities; GPU batches are padded to a warmed bucket."""
        count = len(images)
        if self.pad_to_buckets:
            target = next((size for size in self.buckets if size >= count), count)
            if target > count:
                padding = np.zeros((target - count, *images.shape[1:]), dtype=images.dtype)
                images = np.concatenate([images, padding])
        (probabilities,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: images})
        return probabilities[:count]

    def close(self) -> None:
        """Drop the session now (its arena and weights are freed) even if something still holds this object."""
        self.session = None  # type: ignore[assignment]

    @property
    def images_per_s(self) -> float | None:
        """One instance's measured throughput at its largest batch (None when not warmed)."""
        if not self.batch_seconds:
            return None
        return self.buckets[-1] / self.batch_seconds

    def warm_up(self) -> None:
        """Run every batch size the batcher can produce, so no request pays first-shape costs.

        The largest batch then runs again, timed: a first run includes allocation (and on a GPU a
        TensorRT engine build), so only later ones say how fast this model drains its queue. Fast
        models repeat it for :data:`TIMING_BUDGET_S` and keep the median (one 20 ms run of
        ResNet-20 varied 2x between loads on a shared box).
        """
        started = time.perf_counter()
        side = self.card.preprocessing.crop_size
        for size in self.buckets:
            self.session.run([OUTPUT_NAME], {INPUT_NAME: np.zeros((size, side, side, 3), np.uint8)})
        largest = np.zeros((self.buckets[-1], side, side, 3), np.uint8)
        runs: list[float] = []
        while not runs or (sum(runs) < TIMING_BUDGET_S and len(runs) < TIMING_RUNS):
            timed = time.perf_counter()
            self.session.run([OUTPUT_NAME], {INPUT_NAME: largest})
            runs.append(time.perf_counter() - timed)
        self.batch_seconds = statistics.median(runs)
        self.warmup_seconds = time.perf_counter() - started


def int8_exactness(card: ModelCard) -> bool | None:
    """For an INT8 file on the CPU: does this CPU compute it exactly (None: not INT8, or flags unknown)?"""
    quantization = card.export.quantization
    if quantization is None:
        return None
    if quantization.weight_bits <= 7:
        return True
    saturates = _pairs_saturate_here()
    return None if saturates is None else not saturates


@functools.cache
def _pairs_saturate_here() -> bool | None:
    return int8_pairs_saturate()


def session_options(settings: Settings, intra_op_threads: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads or settings.inference_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only; provider fallbacks are reported by us
    # Keep where each node runs: the providers that really run, not the registered ones.
    options.add_session_config_entry(RECORD_ASSIGNMENT, "1")
    if not settings.intra_op_spinning:
        # Idle inference threads sleep instead of spinning: the decode pool needs those cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def load_model(entry: VersionFile, settings: Settings, options: RuntimeOptions | None = None) -> LoadedModel:
    """Open, check and (optionally) warm one model; raises :class:`ModelLoadError` with the reason.

    ``options`` carries the per-model batch size, buckets and threads (default: the global settings).
    """
    started = time.perf_counter()
    options = options or RuntimeOptions(
        settings.max_batch_size, batch_buckets(settings.max_batch_size), settings.inference_threads
    )
    requested = resolve_providers(settings.providers, ort.get_available_providers(), gpu_present=gpu_device_present())
    wants_gpu = bool(GPU_PROVIDERS.intersection(requested))
    if wants_gpu:
        preload_gpu_libraries()
    notes: tuple[str, ...] = ()
    if entry.problem is not None:
        raise ModelLoadError(f"{entry.shown}: {entry.problem}")
    try:
        # Read here, not by onnxruntime from the path: a FIFO or a device is refused and a read that
        # hangs (a mount that stops answering) ends after MODEL_READ_TIMEOUT_S (servable.layout).
        content = read_regular_file(entry.path, timeout_s=settings.model_read_timeout_s)
    except UnreadableFile as exc:
        raise ModelLoadError(f"{entry.shown}: {exc}") from None
    try:
        # GPU provider options depend on the card (input size, fp16), so read it from a plain CPU
        # session first; on the CPU that session is the one we serve with.
        session = _session(entry, content, settings, options, [CPU], None, optimize=not wants_gpu)
        card = ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)
    except InvalidModelCard as exc:
        raise ModelLoadError(f"{entry.shown}: {exc}") from None
    except Exception as exc:
        raise ModelLoadError(f"{entry.shown}: onnxruntime cannot load it: {_without_paths(str(exc), entry)}") from None
    if wants_gpu:
        plan = plan_providers(requested, card, settings.trt_cache_dir)
        requested = plan.expected
        session, notes = _gpu_session(entry, content, settings, options, plan.session, card, plan.notes)
    del content
    _check_signature(entry, session, card)
    assignment = node_providers(session)
    active = active_providers(assignment, session.get_providers())
    model = LoadedModel(
        entry=entry,
        card=card,
        session=session,
        requested_providers=requested,
        active_providers=active,
        buckets=options.buckets,
        pad_to_buckets=bool(GPU_PROVIDERS.intersection(active)),
        labels=card.labels,
        node_providers=assignment,
        provider_notes=notes,
    )
    for note in notes:
        log.warning("model %s v%d: %s", entry.name, entry.version, note)
    model.int8_exact = None if model.on_gpu else int8_exactness(card)
    if model.int8_exact is False:
        log.error(
            "MODEL %s v%d IS INT8 WITH FULL-RANGE WEIGHTS ON A CPU WITHOUT VNNI: onnxruntime's kernels saturate "
            "here, so answers can differ from what its accuracy gate measured (ResNet-20: 91.6 %% instead of "
            "99.1 %% agreement); re-export it (7-bit weights are exact on every CPU)",
            entry.name, entry.version,
        )
    if model.gpu_fallback:
        log.error(
            "MODEL %s v%d FELL BACK: asked for %s but nodes run on %s only (%s) "
            "(CUDA/cuDNN/TensorRT libraries missing, no usable GPU, or a session that failed)",
            entry.name, entry.version, requested, active, model.nodes_per_provider or "assignment unknown",
        )
    if settings.require_gpu and not model.on_gpu:
        raise ModelLoadError(f"model {entry.name}: REQUIRE_GPU is set but active providers are {active}")
    if settings.warmup:
        try:
            model.warm_up()
        except Exception as exc:  # a graph that loads but cannot run (wrong shapes inside, bad ops)
            raise ModelLoadError(f"{entry.shown}: warm-up failed: {type(exc).__name__}: {str(exc)[:300]}") from None
    model.load_seconds = time.perf_counter() - started
    log.info(
        "model %s v%d loaded: %s, %d classes, input %dx%d, providers %s, warm-up %.2fs",
        entry.name, entry.version, card.architecture, card.num_classes,
        card.preprocessing.crop_size, card.preprocessing.crop_size, active, model.warmup_seconds,
    )
    return model


def _gpu_session(
    entry: VersionFile,
    content: bytes,
    settings: Settings,
    options: RuntimeOptions,
    providers: list[str],
    card: ModelCard,
    notes: tuple[str, ...],
) -> tuple[ort.InferenceSession, tuple[str, ...]]:
    """The session on ``providers``; if it fails, without TensorRT, then on the CPU, each failure noted.

    This is onnxruntime's own fallback made explicit: its retry drops every provider option (device id
    included) and says so only on stdout."""
    attempts = [providers]
    if TENSORRT in providers and CUDA in providers:
        attempts.append([name for name in providers if name != TENSORRT])
    if providers != [CPU]:
        attempts.append([CPU])
    for index, attempt in enumerate(attempts):
        try:
            return _session(entry, content, settings, options, attempt, card), notes
        except Exception as exc:  # noqa: BLE001 (onnxruntime's Fail and EPFail derive from Exception only)
            if index == len(attempts) - 1:
                raise ModelLoadError(
                    f"{entry.shown}: onnxruntime cannot load it: {_without_paths(str(exc), entry)}"
                ) from None
            why = f"a session on {', '.join(attempt)} failed ({type(exc).__name__}: {str(exc)[:300]})"
            notes = (*notes, f"{why}; trying {', '.join(attempts[index + 1])}")
    raise AssertionError("unreachable: the last attempt returns or raises")


def _without_paths(message: str, entry: VersionFile) -> str:
    """onnxruntime's message, with the model file's absolute path (if it names it) as the repository shows it."""
    return message.replace(str(entry.path), entry.shown)


def _session(
    entry: VersionFile,
    content: bytes,
    settings: Settings,
    options: RuntimeOptions,
    providers: list[str],
    card: ModelCard | None,
    *,
    optimize: bool = True,
) -> ort.InferenceSession:
    session_opts = session_options(settings, options.intra_op_threads)
    if not optimize:
        session_opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        content,
        sess_options=session_opts,
        providers=[
            (name, provider_options(name, entry, card, cache_dir=settings.trt_cache_dir,
                                    device_id=settings.device_id, max_batch_size=options.max_batch_size)
             if card else {})
            for name in providers
        ],
        # No silent retry on other providers, at creation or in run(): _gpu_session decides and says so.
        enable_fallback=0,
    )


def _check_signature(entry: VersionFile, session: ort.InferenceSession, card: ModelCard) -> None:
    """The graph takes uint8 [N, crop, crop, 3] 'images' and gives [N, classes] 'probabilities'."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    side = card.preprocessing.crop_size
    if [i.name for i in inputs] != [INPUT_NAME] or inputs[0].type != "tensor(uint8)":
        raise ModelLoadError(f"{entry.shown}: expected one uint8 input {INPUT_NAME!r}, found {[(i.name, i.type) for i in inputs]}")
    if list(inputs[0].shape[1:]) != [side, side, 3]:
        raise ModelLoadError(f"{entry.shown}: input shape {inputs[0].shape} does not match [N, {side}, {side}, 3]")
    if OUTPUT_NAME not in [o.name for o in outputs]:
        raise ModelLoadError(f"{entry.shown}: no output named {OUTPUT_NAME!r}")

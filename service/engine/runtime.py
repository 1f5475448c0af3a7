"""onnxruntime sessions: provider choice, silent-fallback detection, throughput options and warm-up.

onnxruntime quietly drops CUDA/TensorRT when their libraries are missing and runs on the CPU; we
compare the providers a session actually uses with those we asked for and say so loudly (log,
/models, /metrics), and ``REQUIRE_GPU`` turns that into "not ready".
"""

from __future__ import annotations

import ctypes
import functools
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from servable.card import INPUT_NAME, OUTPUT_NAME, InvalidModelCard, ModelCard
from servable.layout import UnreadableFile, VersionFile, read_regular_file
from service.limits.cpus import int8_pairs_saturate
from service.settings import Settings

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = frozenset({TENSORRT, CUDA})


class ModelLoadError(Exception):
    """A model file cannot be served; the message says why (shown in /health/ready)."""


def gpu_device_present() -> bool:
    """An NVIDIA device node exists (containers get them only with a GPU attached)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def tensorrt_loadable() -> bool:
    for library in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"):
        try:
            ctypes.CDLL(library)
            return True
        except OSError:
            continue
    try:
        import tensorrt  # noqa: F401  (the wheel bundles libnvinfer where no system library is installed)

        return True
    except Exception:
        return False


def resolve_providers(setting: str, available: list[str], *, gpu_present: bool) -> list[str]:
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
        """GPU providers were asked for but the session runs without them."""
        return bool(GPU_PROVIDERS.intersection(self.requested_providers)) and not self.on_gpu

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
    if not settings.intra_op_spinning:
        # Idle inference threads sleep instead of spinning: the decode pool needs those cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def provider_options(
    provider: str, card: ModelCard, settings: Settings, max_batch_size: int | None = None
) -> dict[str, object]:
    side = card.preprocessing.crop_size
    largest = max_batch_size or settings.max_batch_size
    if provider == TENSORRT:
        cache = str(settings.trt_cache_dir.resolve())
        return {
            "device_id": settings.device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
            "trt_fp16_enable": card.export.precision == "fp16",
            # A QDQ (explicitly quantized) graph builds INT8 engines only with INT8 mode on; its scales
            # come from the Q/DQ nodes, so no calibration table is involved. Untested on a GPU here.
            "trt_int8_enable": card.export.precision == "int8",
            "trt_profile_min_shapes": f"{INPUT_NAME}:1x{side}x{side}x3",
            "trt_profile_opt_shapes": f"{INPUT_NAME}:{largest}x{side}x{side}x3",
            "trt_profile_max_shapes": f"{INPUT_NAME}:{largest}x{side}x{side}x3",
        }
    if provider == CUDA:
        return {"device_id": settings.device_id}
    return {}


_dlls_preloaded = False


def preload_gpu_libraries() -> None:
    """Let onnxruntime find CUDA/cuDNN from the nvidia-* wheels (no-op on builds without it)."""
    global _dlls_preloaded
    if _dlls_preloaded or not hasattr(ort, "preload_dlls"):
        return
    _dlls_preloaded = True
    try:
        ort.preload_dlls()
    except Exception as exc:
        log.warning("onnxruntime.preload_dlls() failed: %s", exc)


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
        if TENSORRT in requested:
            settings.trt_cache_dir.mkdir(parents=True, exist_ok=True)
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
        session = _session(content, settings, options, [CPU], None, optimize=not wants_gpu)
        card = ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)
    except InvalidModelCard as exc:
        raise ModelLoadError(f"{entry.shown}: {exc}") from None
    except Exception as exc:
        raise ModelLoadError(f"{entry.shown}: onnxruntime cannot load it: {_without_paths(str(exc), entry)}") from None
    if wants_gpu:
        try:
            session = _session(content, settings, options, requested, card)
        except Exception as exc:
            log.error("model %s: GPU session failed (%s); serving it on the CPU", entry.name, exc)
            session = _session(content, settings, options, [CPU], card)
    del content
    _check_signature(entry, session, card)
    active = session.get_providers()
    model = LoadedModel(
        entry=entry,
        card=card,
        session=session,
        requested_providers=requested,
        active_providers=active,
        buckets=options.buckets,
        pad_to_buckets=bool(GPU_PROVIDERS.intersection(active)),
        labels=card.labels,
    )
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
            "MODEL %s RUNS ON THE CPU: asked for %s but onnxruntime activated only %s "
            "(CUDA/cuDNN/TensorRT libraries missing or no usable GPU)",
            entry.name, requested, active,
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


def _without_paths(message: str, entry: VersionFile) -> str:
    """onnxruntime's message, with the model file's absolute path (if it names it) as the repository shows it."""
    return message.replace(str(entry.path), entry.shown)


def _session(
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
            (name, provider_options(name, card, settings, options.max_batch_size) if card else {})
            for name in providers
        ],
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

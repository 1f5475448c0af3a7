"""Every knob of the service, read from ``RESNET_SERVE_*`` environment variables (or CLI flags).

Defaults suit both a 2-core CPU box and a one-GPU server: batches of up to 32 images closed after
3 ms, a queue of a few seconds of work so overload turns into fast 503s rather than growing latency, and
upload/pixel caps that fit real photos but not bombs.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from servable.images import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_SCAN_PIXELS
from service.limits.cpus import CPUS_PER_AUTO_WORKER, CpuBudget, auto_workers, cpu_budget

ENV_PREFIX = "RESNET_SERVE_"


def _positive(default: int, description: str) -> Any:
    """A count of at least 1."""
    return Field(default=default, ge=1, description=description)


def _seconds(default: float, description: str) -> Any:
    """A duration in seconds, more than 0."""
    return Field(default=default, gt=0.0, description=description)

#: Read once per process: affinity and cgroup limits do not change under a running service.
_cpu_budget = cache(cpu_budget)


class Settings(BaseSettings):
    """Service configuration; each field is ``RESNET_SERVE_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Where models come from.
    model_dir: Path = Field(
        default=Path("model_repository"),
        description="Model repository: <model_dir>/<name>/<version>/model.onnx; the highest version is served.",
    )
    default_model: str | None = Field(
        default=None, description="Model used when /predict names none; unset = the only model, else required."
    )

    # Network.
    host: str = Field(default="127.0.0.1", description="Bind address (containers set 0.0.0.0).")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port of HTTP (/predict and KServe V2 REST).")
    grpc_port: int = Field(
        default=8001, ge=0, le=65535,
        description="TCP port of the KServe V2 / Triton gRPC endpoint (0 = no gRPC).",
    )
    grpc_listeners: int = Field(
        default=8, ge=1, le=64,
        description="grpc.aio servers sharing GRPC_PORT (SO_REUSEPORT): each accepts one RPC per trip through "
        "the event loop, so several keep the batches full (1 = one server, the port exclusive to it).",
    )
    limit_concurrency: int = _positive(
        1024, "Most HTTP requests in progress at once (open connections that have not sent a request do "
        "not count), and most gRPC calls in flight; beyond it 503 (HTTP) or RESOURCE_EXHAUSTED (gRPC) at once.",
    )
    max_connections: int = _positive(
        4096, "Most open connections per door (HTTP; gRPC, shared out across GRPC_LISTENERS); "
        "connections beyond it are closed as they arrive.",
    )
    header_timeout_s: float = _seconds(
        10.0, "An HTTP request head (request line and headers) must be complete this long after the "
        "connection opens (or after its first byte, on a kept-alive connection); else 408 and close, or a "
        "plain close when nothing was sent.",
    )
    keepalive_timeout_s: float = _seconds(
        5.0, "An HTTP connection idle this long between requests is closed."
    )
    forwarded_allow_ips: str | None = Field(
        default=None,
        description="Comma-separated proxy addresses (or '*') whose X-Forwarded-For/-Proto headers are trusted "
        "for the client address in logs; unset: those headers are ignored.",
    )
    grpc_message_timeout_s: float = _seconds(
        10.0, "A gRPC ModelInfer call whose request message has not fully arrived this long after the "
        "call started is ended with DEADLINE_EXCEEDED (it holds no inference slot meanwhile).",
    )
    grpc_max_streams_per_connection: int = _positive(
        100, "Concurrent gRPC calls one HTTP/2 connection may open (SETTINGS_MAX_CONCURRENT_STREAMS)."
    )
    grpc_idle_timeout_s: float = _seconds(
        300.0, "A gRPC connection with no call for this long is closed (GOAWAY; clients reconnect on "
        "their next call).",
    )
    backlog: int = _positive(2048, "Connections the kernel queues before accept().")
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field(
        default=1,
        description="Serving processes sharing PORT and GRPC_PORT (SO_REUSEPORT), each with its own sessions, "
        "batchers, event loop, limits and usable CPUs / WORKERS threads; a parent process starts them, "
        "restarts one that dies and forwards SIGTERM (docs/scaling.md). 1: one process, no parent. "
        f"auto: one per {CPUS_PER_AUTO_WORKER} usable CPUs.",
    )

    # The live model repository.
    model_control: Literal["none", "poll", "explicit"] = Field(
        default="poll",
        description="none: load MODEL_DIR once at start; poll: also follow new, changed and removed versions "
        "every REPOSITORY_POLL_S; explicit: load once, then change only through the V2 repository API.",
    )
    repository_poll_s: float = Field(
        default=5.0, ge=0.0, description="Seconds between repository scans in poll mode (0 = as none)."
    )
    model_read_timeout_s: float = _seconds(
        60.0, "A repository scan, or the read of one model file or config.toml, that takes longer "
        "(a network mount that stopped answering) is given up: the version is refused with that reason "
        "and the service keeps serving what it has.",
    )

    # Dynamic batching.
    max_batch_size: int = Field(default=32, ge=1, le=1024, description="Most images one inference call runs.")
    max_batch_delay_ms: float = Field(
        default=3.0, ge=0.0, le=1000.0,
        description="How long the oldest queued image may wait for others before its batch closes.",
    )
    max_queue_size: int | None = _positive(
        None, "Images accepted but not yet running (decoding + queued), per model; beyond it: 503. "
        "Unset: MAX_QUEUE_WAIT_S of the model's inference rate timed at warm-up (at most 1,024, 128 without "
        "warm-up; never below MAX_FILES and one batch). Set it for the same size on every replica.",
    )
    max_queue_wait_s: float = Field(
        default=5.0, gt=0.0, le=3600.0,
        description="Seconds of inference an automatically sized queue holds: a short stall is absorbed, "
        "overload beyond it still gets fast 503s instead of growing latency.",
    )
    request_timeout_s: float = _seconds(
        30.0, "A request that has not been answered after this long gets 504."
    )

    # Execution providers.
    providers: str = Field(
        default="auto",
        description="'auto' (TensorRT, CUDA when a GPU is present, then CPU) or a comma-separated list such "
        "as 'CUDAExecutionProvider,CPUExecutionProvider'.",
    )
    device_id: int = Field(default=0, ge=0, description="GPU index for CUDA/TensorRT.")
    require_gpu: bool = Field(
        default=False, description="Stay not-ready unless every model runs on a GPU provider."
    )
    trt_cache_dir: Path = Field(
        default=Path(".trt_cache"), description="TensorRT engine and timing cache directory."
    )
    intra_op_threads: int = Field(
        default=0, ge=0,
        description="CPU threads per inference (0 = usable CPUs / WORKERS / instances; usable = affinity and cgroup quota).",
    )
    intra_op_spinning: bool = Field(
        default=False,
        description="Let idle onnxruntime threads spin-wait: lowers batch-1 latency on dedicated cores, but "
        "steals CPU from decoding when cores are shared (measured 3x fewer requests/s on a busy 2-core box).",
    )
    preprocess_threads: int = Field(
        default=0, ge=0,
        description="Threads decoding and resizing uploads, per worker (0 = usable CPUs / WORKERS; usable = affinity and "
        "cgroup quota).",
    )
    warmup: bool = Field(default=True, description="Run every batch-size bucket once before turning ready.")
    allow_partial: bool = Field(
        default=False,
        description="Turn ready when at least one model loaded even if others failed (their reasons stay in "
        "/health/ready 'models'); by default one failed model keeps the whole service not ready.",
    )

    # Input limits.
    max_upload_bytes: int = _positive(20 * 1024 * 1024, "Largest request body, enforced while reading (413).")
    max_inflight_bytes: int = _positive(
        256 * 1024 * 1024, "Request-body bytes held across all connections at once; a body that does not fit is "
        "refused with 503 server_busy before it is read.",
    )
    max_image_pixels: int = _positive(
        DEFAULT_MAX_IMAGE_PIXELS, "Largest width x height, checked from the header before decoding (413)."
    )
    max_inflight_pixels: int = _positive(
        DEFAULT_MAX_IMAGE_PIXELS, "Decoded pixels held across decode threads at once (from image headers); a thread waits "
        "until its image fits, an image larger than this decodes alone.",
    )
    max_scan_pixels: int = _positive(
        DEFAULT_MAX_SCAN_PIXELS, "Largest decode work of one JPEG, as scans x pixels (each scan of a progressive JPEG is "
        "another pass over the whole image; the default is ten scans of the largest image allowed); beyond "
        "it, or beyond 500 scans, 422 image_too_costly before decoding.",
    )
    max_files: int = _positive(64, "Most images in one multipart request (413).")
    body_timeout_s: float = _seconds(
        10.0, "A request body that sends nothing for this long is cut off with 408 (a stalled upload); "
        "the whole body must also arrive within REQUEST_TIMEOUT_S.",
    )
    fast_jpeg: bool = Field(
        default=True,
        description="Decode plain JPEGs (YCbCr or grey, header segments Pillow and libjpeg read alike) with "
        "libjpeg-turbo straight into an array (simplejpeg): the same pixels as Pillow, 29 instead of 142 us to "
        "preprocess a 32x32 JPEG. false: Pillow decodes all.",
    )
    jpeg_draft: bool = Field(
        default=False,
        description="Let libjpeg downscale big JPEGs while decoding: several times faster on large photos, "
        "mean error vs torchvision < 0.5 grey level instead of exact.",
    )

    # Responses.
    default_top_k: int = _positive(5, "Predictions returned when top_k is not given.")

    # Operations.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")
    log_format: Literal["text", "json"] = Field(default="text", description="json: one object per line.")
    access_log: bool = Field(default=True, description="Log one line per HTTP request (uvicorn's access log).")
    shutdown_grace_s: float = _seconds(30.0, "On SIGTERM, how long in-flight requests may take before exit.")
    shutdown_delay_s: float = Field(
        default=0.0, ge=0.0,
        description="On SIGTERM, keep serving (not ready) this long before draining, so a load balancer that "
        "health-checks /health/ready takes the replica out first (Kubernetes: use a preStop sleep instead).",
    )
    api_key: str | None = Field(
        default=None, description="When set, /predict and /models need 'Authorization: Bearer <key>'."
    )
    playground: bool = Field(
        default=True,
        description="Serve the playground page at / (static files under /playground/, a strict CSP; it calls "
        "/models and /predict like any client, so the API key still applies).",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("default_model", "api_key", "max_queue_size", "forwarded_allow_ips", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def cpus(self) -> CpuBudget:
        """The CPUs this process may use: affinity and cgroup quota, not the host's core count."""
        return _cpu_budget()

    @property
    def worker_count(self) -> int:
        """Serving processes: WORKERS, or what ``auto`` picks for the usable CPUs."""
        return auto_workers(self.cpus.usable) if self.workers == "auto" else self.workers

    @property
    def cpu_count(self) -> int:
        """The CPUs one serving process sizes its thread pools by: the usable CPUs shared among the workers."""
        return max(1, self.cpus.usable // self.worker_count)

    @property
    def decode_threads(self) -> int:
        return self.preprocess_threads or self.cpu_count

    @property
    def inference_threads(self) -> int:
        return self.intra_op_threads or self.cpu_count

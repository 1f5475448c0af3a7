"""The effective batching and limits of one model: its ``config.toml`` over the global settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.engine.repository import ServingConfig, VersionPolicy
from service.engine.runtime import RuntimeOptions, batch_buckets
from service.settings import Settings

#: Automatic queue sizes stop here: queued crops are memory (1,024 ResNet-50 crops are 154 MB), and a
#: model fast enough to need more is on a GPU whose batches drain a thousand images in well under 5 s.
MAX_AUTO_QUEUE_SIZE = 1024
#: The queue when no throughput was measured (warm-up disabled).
UNMEASURED_QUEUE_SIZE = 128


@dataclass(frozen=True)
class ModelSettings:
    """The effective batching and limits of one model: its config.toml over the global settings."""

    max_batch_size: int
    max_batch_delay_ms: float
    max_queue_size: int | None  # None: sized from the measured throughput (:meth:`queue_size`)
    max_queue_wait_s: float
    min_queue_size: int
    instances: int
    buckets: tuple[int, ...]
    default_top_k: int
    version_policy: VersionPolicy
    intra_op_threads: int

    @classmethod
    def resolve(cls, settings: Settings, config: ServingConfig) -> ModelSettings:
        max_batch = config.max_batch_size or settings.max_batch_size
        instances = config.instances or 1
        buckets = tuple(b for b in (config.batch_buckets or batch_buckets(max_batch)) if b <= max_batch)
        if max_batch not in buckets:
            buckets = (*buckets, max_batch)
        # Several instances share the usable CPUs: each runs its batches with its share of threads.
        threads = settings.intra_op_threads or max(1, settings.cpu_count // instances)
        return cls(
            max_batch_size=max_batch,
            max_batch_delay_ms=(
                config.max_batch_delay_ms if config.max_batch_delay_ms is not None else settings.max_batch_delay_ms
            ),
            max_queue_size=config.max_queue_size or settings.max_queue_size,
            max_queue_wait_s=settings.max_queue_wait_s,
            # One multipart request may carry MAX_FILES images, and a full batch should fit behind a running one.
            min_queue_size=max(settings.max_files, max_batch),
            instances=instances,
            buckets=buckets,
            default_top_k=config.default_top_k or settings.default_top_k,
            version_policy=config.version_policy,
            intra_op_threads=threads,
        )

    def runtime(self) -> RuntimeOptions:
        return RuntimeOptions(self.max_batch_size, self.buckets, self.intra_op_threads)

    def queue_size(self, images_per_s: float | None) -> int:
        """Images this model may hold admitted: set explicitly, or ``max_queue_wait_s`` of its throughput.

        A count fits no model: 128 images are 0.3 s of CIFAR ResNet-20's serving on 2 cores and 6.5 s
        of ResNet-50's. ``images_per_s`` is one instance's rate at its largest batch, timed at warm-up
        without decoding, so the queue drains a little slower than that when uploads are decoded on the
        same cores. The floor (a full multipart request, a batch) wins over the cap.
        """
        if self.max_queue_size is not None:
            return self.max_queue_size
        wait_s = self.queue_wait_s(images_per_s)
        if wait_s is None or not images_per_s:
            return max(self.min_queue_size, UNMEASURED_QUEUE_SIZE)
        wanted = int(images_per_s * self.instances * wait_s)
        return max(self.min_queue_size, min(MAX_AUTO_QUEUE_SIZE, wanted))

    def queue_wait_s(self, images_per_s: float | None) -> float | None:
        """The wait budget that sized the queue: None where an explicit size did, or nothing was timed."""
        return self.max_queue_wait_s if self.max_queue_size is None and images_per_s else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.max_batch_size,
            "max_batch_delay_ms": self.max_batch_delay_ms,
            "max_queue_size": self.max_queue_size,
            "max_queue_wait_s": self.max_queue_wait_s,
            "instances": self.instances,
            "batch_buckets": list(self.buckets),
            "default_top_k": self.default_top_k,
            "version_policy": self.version_policy.describe(),
            "intra_op_threads": self.intra_op_threads,
        }

"""Just enough of the Prometheus text format to read the service's batch-size histogram."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match:
            labels = dict(_LABEL.findall(match.group("labels") or ""))
            found.append((match.group("name"), labels, float(match.group("value"))))
    return found


@dataclass(frozen=True)
class BatchSizes:
    """Cumulative batch-size histogram of one model at one moment."""

    count: float
    total: float
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count)

    def since(self, earlier: BatchSizes) -> BatchSizes:
        before = dict(earlier.buckets)
        return BatchSizes(
            self.count - earlier.count,
            self.total - earlier.total,
            tuple((le, value - before.get(le, 0.0)) for le, value in self.buckets),
        )

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def per_bucket(self) -> dict[str, int]:
        """Non-cumulative counts: '<=1': n, '<=2': n, ... (empty buckets left out)."""
        out: dict[str, int] = {}
        previous = 0.0
        for le, cumulative in self.buckets:
            if cumulative - previous > 0:
                out["<=" + ("inf" if le == float("inf") else f"{le:g}")] = int(cumulative - previous)
            previous = cumulative
        return out


#: Server-side stages of a request, in seconds, whose means explain where latency goes.
STAGES = {
    "server_total": "resnet_serve_request_seconds",
    "preprocess": "resnet_serve_preprocess_seconds",
    "queue_wait": "resnet_serve_queue_wait_seconds",
    "inference_per_batch": "resnet_serve_inference_seconds",
}


@dataclass(frozen=True)
class Snapshot:
    """The batch-size histogram and the stage-latency histograms of one model at one moment."""

    batch: BatchSizes
    stages: dict[str, BatchSizes]

    def since(self, earlier: Snapshot) -> Snapshot:
        return Snapshot(
            self.batch.since(earlier.batch),
            {name: hist.since(earlier.stages[name]) for name, hist in self.stages.items()},
        )

    def stage_means_ms(self) -> dict[str, float | None]:
        return {name: (None if hist.mean is None else round(1000 * hist.mean, 3)) for name, hist in self.stages.items()}


def snapshot(base_url: str, model: str) -> Snapshot:
    found = samples(httpx.get(f"{base_url}/metrics", timeout=10).text)
    return Snapshot(
        _histogram(found, model, "resnet_serve_batch_size"),
        {name: _histogram(found, model, metric) for name, metric in STAGES.items()},
    )


def batch_sizes(base_url: str, model: str, metric: str = "resnet_serve_batch_size") -> BatchSizes:
    return _histogram(samples(httpx.get(f"{base_url}/metrics", timeout=10).text), model, metric)


def _histogram(found: list[tuple[str, dict[str, str], float]], model: str, metric: str) -> BatchSizes:
    count = total = 0.0
    buckets = []
    for name, labels, value in found:
        if labels.get("model") != model:
            continue
        if name == f"{metric}_count":
            count = value
        elif name == f"{metric}_sum":
            total = value
        elif name == f"{metric}_bucket":
            buckets.append((float(labels["le"].replace("+Inf", "inf")), value))
    return BatchSizes(count, total, tuple(sorted(buckets)))

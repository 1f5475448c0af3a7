"""The Prometheus series of one served version: set when it starts serving, removed when it retires.

A version's info series carry its labels (architecture, providers); leaving them after it retires would
show a model that is gone, and two versions' worth of queue gauges would double the pod's queue.
"""

from __future__ import annotations

from prometheus_client import Gauge

from service.engine.runtime import LoadedModel
from service.metrics import Metrics


def _info_series(metrics: Metrics, model: LoadedModel) -> list[tuple[Gauge, tuple[str, ...]]]:
    card = model.card
    version = str(model.entry.version)
    return [
        (metrics.model_info, (model.name, version, card.architecture, str(card.num_classes),
                              str(card.preprocessing.crop_size))),
        (metrics.provider_info, (model.name, version, ",".join(model.requested_providers),
                                 ",".join(model.active_providers), str(model.gpu_fallback).lower())),
    ]


def publish(metrics: Metrics, model: LoadedModel) -> None:
    """The version's info series, value 1."""
    for gauge, labels in _info_series(metrics, model):
        gauge.labels(*labels).set(1)


def forget(metrics: Metrics, model: LoadedModel) -> None:
    """Every series the version left: its info series and its batcher's queue gauges."""
    version = str(model.entry.version)
    for gauge, labels in (
        *_info_series(metrics, model),
        (metrics.queue_depth, (model.name, version)),
        (metrics.inflight_images, (model.name, version)),
    ):
        metrics.forget(gauge, labels)

"""The ceiling: an in-process onnxruntime session, opened exactly as the service opens it.

The session comes from ``service.engine.runtime.load_model`` (same providers, same session options), so
the only difference from the service is everything around ``session.run``: HTTP, decoding, queueing.
Inputs are real preprocessed crops (the model's uint8 NHWC input), tiled to each batch size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.workload import BenchModel, payloads_for
from servable.images import preprocess_image
from service.engine.repository import scan_repository
from service.engine.runtime import LoadedModel, load_model
from service.settings import Settings

FULL_BATCHES = (1, 2, 4, 8, 16, 32, 64)
QUICK_BATCHES = (1, 8, 32)


def open_model(repo: Path, *, max_batch_size: int = 64) -> LoadedModel:
    """The one model in ``repo``, with the service's session builder (no warm-up: we time it ourselves)."""
    (folder,) = scan_repository(repo).values()
    entry = folder.versions[max(folder.versions)]
    return load_model(entry, Settings(model_dir=repo, max_batch_size=max_batch_size, warmup=False, providers="auto"))


def crops(model: BenchModel, loaded: LoadedModel) -> np.ndarray:
    p = loaded.card.preprocessing
    return np.stack([preprocess_image(data, p) for _, data in payloads_for(model)])


def time_batch(loaded: LoadedModel, batch: np.ndarray, *, seconds: float, min_runs: int = 3) -> dict[str, float]:
    """images/s, per-call latency (mean, p50) and CPU ms per image for one batch size, after an untimed warm-up run.

    A call slower than the whole time budget (a busy machine, batch 64) is timed once, not
    ``min_runs`` times, so the full run stays within its ten minutes.
    """
    begun = time.perf_counter()
    loaded.run(batch)
    if time.perf_counter() - begun > seconds:
        min_runs = 1
    latencies: list[float] = []
    started, cpu_started = time.perf_counter(), time.process_time()
    while len(latencies) < min_runs or time.perf_counter() - started < seconds:
        begun = time.perf_counter()
        loaded.run(batch)
        latencies.append(time.perf_counter() - begun)
    cpu = time.process_time() - cpu_started  # every thread of this process: onnxruntime's pool included
    total = sum(latencies)
    return {
        "batch": len(batch),
        "images_per_s": len(batch) * len(latencies) / total,
        "cpu_ms_per_image": 1000 * cpu / (len(batch) * len(latencies)),
        "latency_ms_mean": 1000 * total / len(latencies),
        "latency_ms_p50": 1000 * float(np.percentile(latencies, 50)),
        "runs": len(latencies),
    }


def run(model: BenchModel, repo: Path, *, quick: bool, log: Callable[[str], None] = print) -> dict[str, object]:
    loaded = open_model(repo)
    pixels = crops(model, loaded)
    rows = []
    seconds = (1.0 if quick else 3.0) if model.kind == "imagenet" else (0.5 if quick else 1.5)
    for size in QUICK_BATCHES if quick else FULL_BATCHES:
        batch = np.ascontiguousarray(np.resize(pixels, (size, *pixels.shape[1:])))
        row = time_batch(loaded, batch, seconds=seconds, min_runs=2 if quick or size >= 16 else 3)
        rows.append(row)
        log(
            f"  raw {model.name} batch {size:>2}: {row['images_per_s']:8.1f} img/s, "
            f"{row['latency_ms_mean']:8.2f} ms/call"
        )
    return {
        "model": model.name,
        "precision": model.precision,
        "weights": model.weights_note,
        "providers": loaded.active_providers,
        "intra_op_threads": Settings(model_dir=repo).inference_threads,
        "batches": rows,
    }


def fastest_batch(raw: dict[str, object], max_batch_size: int) -> dict[str, float]:
    """The raw row with the best images/s among the batch sizes the service may run (<= its max batch size)."""
    rows = [row for row in raw["batches"] if row["batch"] <= max_batch_size]  # type: ignore[union-attr]
    return max(rows, key=lambda row: row["images_per_s"])


def ceiling(raw: dict[str, object], max_batch_size: int) -> float:
    """Best raw images/s at any batch size the service may run."""
    return fastest_batch(raw, max_batch_size)["images_per_s"]


def batch1_latency_ms(raw: dict[str, object]) -> float:
    return next(row["latency_ms_p50"] for row in raw["batches"] if row["batch"] == 1)  # type: ignore[union-attr]

"""The GPU run's throughput phases: model-only images/s at batch 1-256 (host arrays as the service passes
them, and with IO binding: input and output kept on the device), and ``/predict`` end to end with JPEG
uploads at several client counts and worker counts, each row saying what bounds it."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks import loadgen, wrk
from benchmarks.gpu_checks import Mode
from benchmarks.procstat import group_cpu_seconds, server_cpu
from benchmarks.prometheus import snapshot
from benchmarks.raw import time_batch
from benchmarks.server import free_port, python, running_server
from servable.card import INPUT_NAME, OUTPUT_NAME
from service.engine.runtime import LoadedModel
from service.settings import Settings

Log = Callable[[str], None]
#: A share of a resource at or above this is called the bound of an end-to-end row.
SATURATED = 0.75


def iobinding_rate(session: ort.InferenceSession, batch: np.ndarray, device_id: int, seconds: float) -> float:
    """images/s with the batch resident on the GPU and the output left there: the device's own rate,
    without the host copies every service request pays."""
    value = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", device_id)
    binding = session.io_binding()
    binding.bind_ortvalue_input(INPUT_NAME, value)
    binding.bind_output(OUTPUT_NAME, "cuda", device_id)
    session.run_with_iobinding(binding)
    runs, started = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - started < seconds:
        session.run_with_iobinding(binding)  # returns once the device is done (onnxruntime syncs the stream)
        runs += 1
    return len(batch) * runs / (time.perf_counter() - started)


def model_only(
    label: str, model: LoadedModel, pixels: np.ndarray, batches: tuple[int, ...], *, seconds: float, mode: Mode,
    device_id: int, log: Log,
) -> list[dict[str, Any]]:
    rows = []
    for size in batches:
        batch = np.ascontiguousarray(np.resize(pixels, (size, *pixels.shape[1:])))
        row = time_batch(model, batch, seconds=seconds, min_runs=2)
        row["model"] = label
        row["iobinding_images_per_s"] = (
            iobinding_rate(model.session, batch, device_id, seconds) if mode.gpu else None
        )
        rows.append(row)
        bound = row["iobinding_images_per_s"]
        log(f"  {label} batch {size:>3}: {row['images_per_s']:10,.0f} img/s"
            + (f", IO binding {bound:10,.0f} img/s" if bound else "") + f", {row['latency_ms_p50']:.2f} ms/call")
    return rows


def ceiling_at(raw_rows: list[dict[str, Any]], batch: float) -> float | None:
    """Model-only images/s (host arrays, as the service runs) at the smallest measured batch >= ``batch``."""
    fitting = sorted((r for r in raw_rows if r["batch"] >= batch), key=lambda r: r["batch"])
    chosen = fitting[0] if fitting else max(raw_rows, key=lambda r: r["batch"], default=None)
    return None if chosen is None else float(chosen["images_per_s"])


def what_bounds(row: dict[str, Any], raw_rows: list[dict[str, Any]], usable_cpus: int, *, gpu: bool) -> dict[str, Any]:
    """Shares of each resource the row used: the model's rate at the batch size the service reached,
    decoding (server-side decode ms x images/s over the host's CPUs) and the server's CPU in all."""
    rate = float(row["images_per_s"])
    ceiling = ceiling_at(raw_rows, row.get("mean_batch_size") or 1)
    decode_ms = (row.get("server_stage_means_ms") or {}).get("preprocess")
    shares = {
        "the GPU" if gpu else "inference": rate / ceiling if ceiling else None,
        "decode": rate * decode_ms / 1000 / usable_cpus if decode_ms else None,
        "server CPU": (row.get("server_cores") or 0) / usable_cpus or None,
    }
    known = {name: share for name, share in shares.items() if share is not None}
    top = max(known, key=lambda name: known[name], default=None)
    if top is None or known[top] < SATURATED:
        bound = "nothing saturated: one event loop, HTTP or the client"
    elif top == "server CPU" and known.get("decode", 0) >= 0.5 * known[top]:
        bound = "the CPU, mostly decode"
    elif top == "server CPU":
        bound = "the CPU (HTTP, Python)"
    else:
        bound = top
    return {"bound": bound, "shares": {name: round(share, 2) for name, share in known.items()}}


def workers_supported() -> bool:
    """Whether this build has worker processes (RESNET_SERVE_WORKERS / --workers)."""
    return "workers" in Settings.model_fields


def end_to_end(
    mode: Mode, repo: Path, name: str, jpegs: list[tuple[str, bytes]], raw_rows: list[dict[str, Any]], *,
    clients: tuple[int, ...], workers: tuple[int, ...], seconds: float, max_batch: int, usable_cpus: int, log: Log,
) -> tuple[list[dict[str, Any]], list[str]]:
    """``/predict`` with one JPEG a request, closed loop, per worker count and client count; (rows, notes)."""
    rows, notes = [], []
    if not workers_supported() and any(n > 1 for n in workers):
        notes.append("this build has no RESNET_SERVE_WORKERS: only 1 worker measured")
        workers = (1,)
    body = loadgen.bodies(jpegs, 1)[0]
    for count in workers:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            "RESNET_SERVE_MODEL_DIR": str(repo), "RESNET_SERVE_HOST": "127.0.0.1", "RESNET_SERVE_PORT": str(port),
            "RESNET_SERVE_GRPC_PORT": "0", "RESNET_SERVE_PROVIDERS": mode.providers,
            "RESNET_SERVE_TRT_CACHE_DIR": str(mode.trt_cache), "RESNET_SERVE_REQUIRE_GPU": str(mode.gpu).lower(),
            "RESNET_SERVE_MAX_BATCH_SIZE": str(max_batch), "RESNET_SERVE_LOG_LEVEL": "WARNING",
            "RESNET_SERVE_ACCESS_LOG": "false",
            **({"RESNET_SERVE_WORKERS": str(count)} if workers_supported() else {}),
        }
        log_path = Path(tempfile.gettempdir()) / f"bench-gpu-{name}-{count}w-{port}.log"
        with running_server([python(), "-m", "service"], env, f"{base}/health/ready", log_path=log_path,
                            timeout_s=900) as server:
            url = f"{base}/predict?model={name}&top_k=5"
            for concurrency in clients:
                before, cpu_before = snapshot(base, name), group_cpu_seconds(server.pid)
                started = time.monotonic()
                if wrk.available():
                    row = wrk.run(url, body, concurrency=concurrency, seconds=seconds,
                                  threads=max(1, min(8, usable_cpus // 4)))
                else:
                    row = loadgen.run_closed(url, [body], concurrency=concurrency, seconds=seconds, warmup_s=0.5)
                wall = time.monotonic() - started
                delta = snapshot(base, name).since(before)
                row.update(model=name, workers=count, clients=concurrency, mean_batch_size=delta.batch.mean,
                           server_stage_means_ms=delta.stage_means_ms())
                row.update(server_cpu(cpu_before, group_cpu_seconds(server.pid), wall, delta.batch.total))
                row.update(what_bounds(row, raw_rows, usable_cpus, gpu=mode.gpu))
                rows.append(row)
                log(f"  /predict {name} {count} worker(s) {concurrency} clients: {row['images_per_s']:,.0f} img/s, "
                    f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, errors {row['errors'] or 0}, "
                    f"mean batch {row['mean_batch_size'] or 0:.1f}, bound: {row['bound']} {row['shares']}")
    return rows, notes

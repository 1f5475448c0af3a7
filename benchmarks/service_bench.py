"""The real service (``python -m service`` in a subprocess on 127.0.0.1) under closed- and open-loop load."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks import h2load, loadgen, wrk
from benchmarks import perf_analyzer as perf_analyzer_client
from benchmarks.peers import kserve
from benchmarks.phases import (
    DOOR_CONCURRENCY,
    GRPC_DOOR,
    H2LOAD_GRPC_DOOR,
    PREDICT_DOOR,
    REST_DOOR,
    Plan,
    phase_seconds,
    plan_for,
    wrk_phases,
)
from benchmarks.procstat import cpu_seconds, server_cpu
from benchmarks.prometheus import batch_sizes, snapshot
from benchmarks.server import free_port, python, running_server
from benchmarks.workload import BenchModel, payloads_for
from servable.card import OUTPUT_NAME
from service.doors.v2.protocol import ENCODED_INPUT, ENCODED_SUFFIX


def service_env(repo: Path, port: int, grpc_port: int | None = None) -> dict[str, str]:
    """The service with its defaults, except quiet logs (the benchmark is not about log I/O).

    gRPC gets a free port of its own: its default, 8001, is also Triton's (a PyTriton peer may hold it)."""
    return {
        "RESNET_SERVE_MODEL_DIR": str(repo),
        "RESNET_SERVE_HOST": "127.0.0.1",
        "RESNET_SERVE_PORT": str(port),
        "RESNET_SERVE_GRPC_PORT": str(grpc_port if grpc_port is not None else free_port()),
        "RESNET_SERVE_LOG_LEVEL": "WARNING",
        "RESNET_SERVE_ACCESS_LOG": "false",
    }


def run(
    model: BenchModel, repo: Path, *, quick: bool, duration: float | None, use_wrk: bool,
    perf_analyzer: Path | str | None = None, log: Callable[[str], None] = print,
) -> dict[str, object]:
    """Every load phase against one service process; ``perf_analyzer`` is its binary, or why it is absent."""
    plan = plan_for(model, quick=quick, duration=duration)
    port, grpc_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/predict?model={model.name}&top_k=5"
    payloads = payloads_for(model)
    runs: list[dict[str, object]] = []
    log_path = Path(tempfile.gettempdir()) / f"bench-service-{model.name}-{port}.log"
    wrk_note = None
    v2_note = None
    env = service_env(repo, port, grpc_port)
    with running_server([python(), "-m", "service"], env, f"{base}/health/ready", log_path=log_path) as server:
        single = loadgen.bodies(payloads, 1)

        def measure(row_of: Callable[[], dict[str, object]]) -> dict[str, object]:
            before = snapshot(base, model.name)
            cpu_before, started = cpu_seconds(server.pid), time.monotonic()
            row = row_of()
            cpu_after, wall = cpu_seconds(server.pid), time.monotonic() - started
            delta = snapshot(base, model.name).since(before)
            row["mean_batch_size"] = delta.batch.mean
            row["batch_sizes"] = delta.batch.per_bucket()
            row["server_stage_means_ms"] = delta.stage_means_ms()  # where the latency goes, from /metrics
            row.update(server_cpu(cpu_before, cpu_after, wall, delta.batch.total))
            runs.append(row)
            log(_line("service", model.name, row))
            return row

        saturated = None
        for concurrency in plan.single_concurrency:
            row = measure(lambda c=concurrency: loadgen.run_closed(
                url, single, concurrency=c, seconds=phase_seconds(plan, c), warmup_s=plan.warmup_s))
            if concurrency == plan.saturating:
                saturated = row
        for concurrency, per_request in plan.multi:
            measure(lambda c=concurrency, n=per_request: loadgen.run_closed(
                url, loadgen.bodies(payloads, n), concurrency=c, seconds=plan.seconds, warmup_s=plan.warmup_s))
        if saturated and saturated["requests_per_s"]:
            rate = max(1.0, plan.open_fraction * float(saturated["requests_per_s"]))  # type: ignore[arg-type]
            measure(lambda: loadgen.run_open(url, single, rate_per_s=rate, seconds=plan.seconds, warmup_s=plan.warmup_s))
        if use_wrk:  # native client for every model: the Python client eats the cores the service needs
            for concurrency, per_request in wrk_phases(plan):
                if not wrk.available():
                    wrk_note = "wrk not installed (apt-get install wrk): native-client figures skipped"
                    break
                body = loadgen.bodies(payloads, per_request)[0]
                measure(lambda c=concurrency, b=body: wrk.run(url, b, concurrency=c, seconds=phase_seconds(plan, c)))
        if use_wrk and wrk_note is None:
            rounds = 1 if quick else DOOR_ROUNDS
            v2_note = _v2_phases(model, base, grpc_port, payloads[0], plan, perf_analyzer, measure, rounds=rounds)
        whole = batch_sizes(base, model.name)
    return {
        "plan": plan.__dict__,
        "precision": model.precision,
        "runs": runs,
        "batch_histogram": whole.per_bucket(),
        "mean_batch_size": whole.mean,
        "wrk_note": wrk_note,
        "v2_note": v2_note,
    }


#: Rounds of the door comparison, whose ratios are medians of interleaved rounds: one phase per door moved
#: a ratio by 0.15 between runs on this shared box, more than the doors differ. Five, not three: with three,
#: one slow round still decided a median (the runs: benchmarks/README.md, *How the harness measures*).
DOOR_ROUNDS = 5


def _v2_phases(
    model: BenchModel, base: str, grpc_port: int, payload: tuple[str, bytes], plan: Plan,
    perf_analyzer: Path | str | None, measure: Callable[[Callable[[], dict[str, object]]], dict[str, object]], *,
    rounds: int = DOOR_ROUNDS,
) -> str | None:
    """The same JPEG (``payload``: name, bytes) through ``/predict`` (wrk), V2 REST (wrk, binary tensor
    extension) and V2 gRPC (Triton's perf_analyzer), door after door, ``rounds`` times; rows carry their ``round``.

    The V2 request is PyTriton's: the encoded image as a [1, 1] BYTES tensor of the ``-encoded`` companion
    model, FP32 probabilities back in binary. wrk drives REST as it drives ``/predict``, so that ratio
    compares doors only; gRPC needs perf_analyzer (a C++ client: a Python one would eat the cores the
    service needs), which also drives REST once so its two figures compare transports with one client.
    Where Debian's h2load is installed it drives gRPC too: perf_analyzer takes 5x wrk's CPU per request
    from the same two cores, h2load about wrk's, so that round shows what the gRPC door itself costs.
    Returns why a phase was skipped, or None."""
    seconds = phase_seconds(plan, DOOR_CONCURRENCY)
    jpeg = payload[1]
    encoded = f"{model.name}{ENCODED_SUFFIX}"
    v2 = kserve.bytes_request(ENCODED_INPUT, jpeg, output_name=OUTPUT_NAME)
    predict_body = loadgen.bodies([payload], 1)[0]  # what the stand-alone wrk phases post
    predict_url = f"{base}/predict?model={model.name}&top_k=5"
    url = f"{base}/v2/models/{encoded}/infer"
    binary = perf_analyzer if isinstance(perf_analyzer, Path) else None
    doors: list[tuple[str, Callable[[], dict[str, object]]]] = [
        (PREDICT_DOOR, lambda: wrk.run(predict_url, predict_body, concurrency=DOOR_CONCURRENCY, seconds=seconds)),
        (REST_DOOR, lambda: wrk.run(
            url, v2.body, concurrency=DOOR_CONCURRENCY, seconds=seconds, script_env=v2.wrk_env)),
    ]
    if binary is not None:
        doors.append((GRPC_DOOR, lambda b=binary: perf_analyzer_client.run(
            b, url=f"127.0.0.1:{grpc_port}", protocol="grpc", model=encoded, jpeg=jpeg,
            concurrency=DOOR_CONCURRENCY, seconds=seconds)))
    if h2load.available():
        frame = h2load.model_infer_frame(encoded, ENCODED_INPUT, OUTPUT_NAME, jpeg)
        doors.append((H2LOAD_GRPC_DOOR, lambda: h2load.run(
            "127.0.0.1", grpc_port, frame, concurrency=DOOR_CONCURRENCY, seconds=seconds,
            metrics_url=f"{base}/metrics")))
    for index in range(1, rounds + 1):
        for scenario, row_of in doors:
            measure(lambda s=scenario, r=row_of, i=index: {**r(), "scenario": s, "round": i})
    if binary is None:
        also = "; gRPC measured with h2load only" if h2load.available() else ""
        return f"V2 gRPC (perf_analyzer) not measured: {perf_analyzer or 'perf_analyzer not requested'}{also}"
    measure(lambda: perf_analyzer_client.run(
        binary, url=base.removeprefix("http://"), protocol="http", model=encoded, jpeg=jpeg,
        concurrency=DOOR_CONCURRENCY, seconds=seconds))
    return None


@contextmanager
def serving(model: BenchModel, repo: Path) -> Iterator[tuple[str, loadgen.Body, int]]:
    """The service with its defaults, running for the block: (predict URL, the single-JPEG body wrk
    posts, its process group).

    The peers are measured against it slice by slice (``benchmarks/peers/runner.py``)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.gettempdir()) / f"bench-service-paired-{model.name}-{port}.log"
    with running_server([python(), "-m", "service"], service_env(repo, port), f"{base}/health/ready",
                        log_path=log_path) as server:
        yield f"{base}/predict?model={model.name}&top_k=5", loadgen.bodies(payloads_for(model), 1)[0], server.pid


def _line(server: str, model: str, row: dict[str, object]) -> str:
    mean_batch = row.get("mean_batch_size")
    return (
        f"  {server} {model} {row['scenario']:<16} x{row['images_per_request']:<3} "
        f"{row['images_per_s']:8.1f} img/s  p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms  "
        f"errors {row['errors'] or 0}" + (f"  mean batch {mean_batch:.1f}" if mean_batch else "")
    )

"""The naive baseline (benchmarks/naive_app.py under uvicorn) under the same load phases as the service."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks import loadgen, wrk
from benchmarks.phases import phase_seconds, plan_for
from benchmarks.server import free_port, python, running_server
from benchmarks.workload import BenchModel, payloads_for


def run(
    model: BenchModel, *, quick: bool, duration: float | None, use_wrk: bool = True, log: Callable[[str], None] = print
) -> dict[str, object]:
    plan = plan_for(model, quick=quick, duration=duration)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/predict?top_k=5"
    env = {"NAIVE_ARCH": model.arch, "NAIVE_WEIGHTS": model.weights or ""}
    argv = [python(), "-m", "uvicorn", "benchmarks.naive_app:app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log"]
    log_path = Path(tempfile.gettempdir()) / f"bench-naive-{model.name}-{port}.log"
    single = loadgen.bodies(payloads_for(model), 1)
    runs: list[dict[str, object]] = []
    with running_server(argv, env, f"{base}/health", log_path=log_path):
        # Warm the model (first eager calls allocate) before anything is timed.
        loadgen.run_closed(url, single, concurrency=1, seconds=1.0, warmup_s=0.0)
        for concurrency in plan.single_concurrency:
            row = loadgen.run_closed(
                url, single, concurrency=concurrency, seconds=phase_seconds(plan, concurrency), warmup_s=plan.warmup_s
            )
            _record(runs, row, model, log)
        if use_wrk and wrk.available():  # native client: the Python one eats the same cores
            # The same native-client phases the service gets (the Python client would cap both).
            for concurrency in (1, plan.saturating):
                row = wrk.run(url, single[0], concurrency=concurrency, seconds=phase_seconds(plan, concurrency))
                _record(runs, row, model, log)
    return {"plan": plan.__dict__, "runs": runs, "server": "FastAPI + PyTorch eager, inline in the handler"}


def _record(runs: list[dict[str, object]], row: dict[str, object], model: BenchModel, log: Callable[[str], None]) -> None:
    runs.append(row)
    log(
        f"  naive {model.name} {row['scenario']:<16} {row['images_per_s']:8.1f} img/s  "
        f"p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms  errors {row['errors'] or 0}"
    )

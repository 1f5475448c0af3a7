"""A diagnosis target started as the benchmark starts it, and wrk driving it in the background."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks import wrk
from benchmarks.loadgen import bodies
from benchmarks.peers.base import SPIN_OFF, SPIN_ON, PeerRequest
from benchmarks.server import free_port, python, running_server
from benchmarks.workload import bench_models, model_repository, payloads_for

TARGETS = ("service", "pytriton", "litserve", "torchserve")


@dataclass
class Load:
    """wrk against one URL with one prebuilt request, at ``concurrency`` connections."""

    url: str
    request: PeerRequest
    concurrency: int

    @contextmanager
    def running(self, seconds: float) -> Iterator[dict[str, Any]]:
        """wrk for ``seconds`` in a thread; the dict holds its figures once the block has ended."""
        figures: dict[str, Any] = {}

        def drive() -> None:
            figures.update(wrk.run(self.url, self.request.body, concurrency=self.concurrency, seconds=seconds,
                                   script=self.request.script, script_env=self.request.script_env))

        thread = threading.Thread(target=drive, daemon=True)
        thread.start()
        try:
            yield figures
        finally:
            thread.join(timeout=seconds + 90)


@contextmanager
def start_target(target: str, model_name: str, cache_dir: Path, variant: str) -> Iterator[tuple[int, Load, str]]:
    """(process group id, load with concurrency 0 until the caller sets it, config text) for a started target."""
    (model,) = bench_models([model_name])
    repo = model_repository(model, cache_dir)
    jpeg = payloads_for(model)[0]
    log_path = Path(tempfile.gettempdir()) / f"diagnose-{target}-{model_name}.log"
    if target == "service":
        from benchmarks.service_bench import service_env

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        (body,) = bodies([jpeg], 1)
        with running_server([python(), "-m", "service"], service_env(repo, port), f"{base}/health/ready",
                            log_path=log_path) as process:
            yield process.pid, Load(f"{base}/predict?model={model.name}&top_k=5", PeerRequest(body, wrk.LUA_SCRIPT), 0), \
                "python -m service, default settings (as benchmarks/service_bench.py starts it)"
        return
    from benchmarks.peers import peer, venv
    from benchmarks.peers.runner import onnx_file

    chosen = peer(target)
    py = venv.ensure(cache_dir / "peers" / f"{target}-venv", chosen.requirements())
    spin = {"on": SPIN_ON, "off": SPIN_OFF}[variant]
    with tempfile.TemporaryDirectory(prefix=f"diagnose-{target}-") as workdir:
        launch = chosen.launch(model, onnx_file(repo, model), py, Path(workdir), spin)
        with running_server(launch.argv, launch.env, launch.ready_url, log_path=log_path, cwd=launch.cwd,
                            timeout_s=launch.timeout_s) as process:
            request = chosen.request(model, jpeg)
            _wait_answering(launch.infer_url, request)
            yield process.pid, Load(launch.infer_url, request, 0), chosen.config(spin)


def _wait_answering(url: str, request: PeerRequest, timeout_s: float = 120.0) -> None:
    """Until the peer answers one real request 200: its ready URL may answer before its model does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = httpx.post(url, content=request.body.content,
                              headers={"Content-Type": request.body.content_type, **request.headers}, timeout=60)
        if response.status_code == 200:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{url} does not answer 200")

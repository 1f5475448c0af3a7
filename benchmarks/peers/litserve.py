"""Lightning AI LitServe: a FastAPI/uvicorn API server feeding a separate inference worker process.

Configured as LitServe's documentation recommends for throughput: ``max_batch_size=32``,
``batch_timeout`` 3 ms (the service's batch delay), one worker on ``accelerator="cpu"`` (one
onnxruntime session using every core, as the service runs one), ``fast_queue=True`` (ZeroMQ
between the API server and the worker: "for hundreds of requests per second"). The request is the
service's own multipart upload (field ``file``); the answer is the top-5, as the service's.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.peers.base import Launch, MultipartPeer, Variant
from benchmarks.peers.venv import project_version, shared_requirements
from benchmarks.server import free_port
from benchmarks.workload import REPO_ROOT, BenchModel

APP = Path(__file__).with_name("apps") / "litserve_app.py"
VERSION = "0.2.19"
MAX_BATCH_SIZE = 32
BATCH_TIMEOUT_MS = 3.0


class LitServe(MultipartPeer):
    name = "litserve"

    def requirements(self) -> list[str]:
        # python-multipart: Starlette's form parser (LitServe does not depend on it; uploads need it).
        pins = [f"{name}=={project_version(name)}" if project_version(name) else name
                for name in ("numpy", "python-multipart")]
        return [f"litserve=={VERSION}", *shared_requirements(), *pins]

    def launch(self, model: BenchModel, onnx: Path, python: Path, workdir: Path, variant: Variant) -> Launch:
        port = free_port()
        argv = [str(python), str(APP), "--model-path", str(onnx), "--port", str(port),
                "--max-batch-size", str(MAX_BATCH_SIZE), "--batch-timeout-ms", str(BATCH_TIMEOUT_MS), "--fast-queue"]
        env = {**variant.env, "PYTHONPATH": str(REPO_ROOT)}
        return Launch.local(argv, env, workdir, port, ready="/health", infer="/predict")

    def settings(self) -> str:
        return (
            f"litserve {VERSION}, LitAPI max_batch_size {MAX_BATCH_SIZE}, batch_timeout {BATCH_TIMEOUT_MS:g} ms, "
            f"1 worker (accelerator=cpu), fast_queue (ZeroMQ), multipart upload, top-5 JSON"
        )


PEER = LitServe()

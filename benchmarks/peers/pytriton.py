"""NVIDIA PyTriton: Triton Inference Server 2.51's C++ HTTP frontend and dynamic batcher, Python inference.

Configured as PyTriton's documentation shows it: a ``@batch`` function bound with
``max_batch_size=32`` and a dynamic batcher queue delay of 3 ms (the service's own
``MAX_BATCH_DELAY_MS`` default, so both wait as long for company), one model instance, default HTTP
threads. The request is KServe V2 with the binary tensor extension: a [1, 1] BYTES input holding
the JPEG, the probabilities asked for as binary data (the tritonclient default).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import httpx

from benchmarks.peers import kserve
from benchmarks.peers.base import Launch, Peer, PeerRequest, Variant
from benchmarks.peers.venv import shared_requirements
from benchmarks.server import free_port
from benchmarks.workload import REPO_ROOT, BenchModel
from benchmarks.wrk import LUA_SCRIPT

APP = Path(__file__).with_name("apps") / "pytriton_app.py"
INPUT = "image"
OUTPUT = "probabilities"
MAX_BATCH_SIZE = 32
QUEUE_DELAY_US = 3000
VERSION = "0.7.0"  # ships tritonserver 2.51.0


class PyTriton(Peer):
    name = "pytriton"

    def requirements(self) -> list[str]:
        return [f"nvidia-pytriton=={VERSION}", *shared_requirements(), "numpy<2"]  # pytriton needs numpy < 2

    def launch(self, model: BenchModel, onnx: Path, python: Path, workdir: Path, variant: Variant) -> Launch:
        http, grpc, metrics = free_port(), free_port(), free_port()
        argv = [
            str(python), str(APP), "--model-path", str(onnx), "--name", model.name,
            "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
            "--max-batch-size", str(MAX_BATCH_SIZE), "--queue-delay-us", str(QUEUE_DELAY_US),
        ]
        env = {
            **variant.env,
            "PYTHONPATH": str(REPO_ROOT),
            # The python backend stub links libpython3.X.so.1.0; without this it may load the distro's
            # older one beside a newer interpreter's stdlib and fail (seen here: Debian 3.11.2 vs 3.11.7).
            "LD_LIBRARY_PATH": str(sysconfig.get_config_var("LIBDIR") or ""),
            "HOME": str(workdir),  # PyTriton writes its workspace under ~/.cache/pytriton
        }
        path = f"/v2/models/{model.name}"
        return Launch.local(argv, env, workdir, http, ready=f"{path}/ready", infer=f"{path}/infer")

    def request(self, model: BenchModel, jpeg: tuple[str, bytes]) -> PeerRequest:
        v2 = kserve.bytes_request(INPUT, jpeg[1], output_name=OUTPUT)
        return PeerRequest(v2.body, LUA_SCRIPT, v2.wrk_env, v2.headers)

    def scores(self, response: httpx.Response) -> dict[int, float]:
        length = response.headers.get(kserve.HEADER_LENGTH)
        (row,) = kserve.fp32_output(response.content, int(length) if length else None, OUTPUT)
        return {index: float(score) for index, score in enumerate(row)}

    def settings(self) -> str:
        return (
            f"nvidia-pytriton {VERSION} (tritonserver 2.51), @batch, max_batch_size {MAX_BATCH_SIZE}, "
            f"dynamic batcher max_queue_delay {QUEUE_DELAY_US} us, 1 instance, KServe V2 binary BYTES input"
        )


PEER = PyTriton()

"""nghttp2's ``h2load`` (Debian's ``nghttp2-client``) as a native gRPC load client, wrk's HTTP/2 twin.

perf_analyzer is the ecosystem's gRPC load tool and stays the door's reference figure, but on this
shared 2-core box the client's own CPU is taken from the server: measured 170 us of client CPU per
request for perf_analyzer against 33 us for wrk. h2load posts one prebuilt ModelInfer message (the
5-byte gRPC frame around the same request perf_analyzer sends) over 32 HTTP/2 connections, one
stream each, like wrk's 32 connections, so the two doors are compared with equally cheap clients.

h2load reads HTTP statuses, not gRPC's ``grpc-status`` trailer, so every run is checked against
the server's own counter of answered gRPC requests (``resnet_serve_requests_total``): a run in which
the server answered fewer OK RPCs than h2load counted, or answered any with an error, is marked failed.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import httpx
import numpy as np

from benchmarks.loadgen import client_row, failed_row
from benchmarks.prometheus import samples
from service.doors.v2.proto import inference_pb2 as pb

GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
PROTOCOL_LABEL = "v2-grpc"


def available() -> bool:
    return shutil.which("h2load") is not None


def model_infer_frame(model: str, input_name: str, output_name: str, jpeg: bytes) -> bytes:
    """One length-prefixed gRPC message: a [1, 1] BYTES input (4-byte LE length + JPEG), raw FP32 output."""
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype="BYTES", shape=[1, 1])
    request.outputs.add(name=output_name)
    request.raw_input_contents.append(struct.pack("<I", len(jpeg)) + jpeg)
    message = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def answered(metrics_url: str) -> dict[str, float]:
    """The server's gRPC prediction count by status, summed over models."""
    counts: dict[str, float] = {}
    for name, labels, value in samples(httpx.get(metrics_url, timeout=10).text):
        if name == "resnet_serve_requests_total" and labels.get("protocol") == PROTOCOL_LABEL:
            counts[labels["status"]] = counts.get(labels["status"], 0.0) + value
    return counts


def run(
    host: str, port: int, frame: bytes, *, concurrency: int, seconds: float, metrics_url: str,
) -> dict[str, object]:
    """A closed loop of ``concurrency`` connections for ``seconds``, as a row shaped like :func:`benchmarks.wrk.run`'s."""
    scenario = f"h2load grpc c={concurrency}"
    try:
        before = answered(metrics_url)
    except httpx.HTTPError as exc:
        return _failed(scenario, f"the server's metrics are unreadable: {exc}")
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        body, log = Path(tmp) / "request.bin", Path(tmp) / "requests.log"
        body.write_bytes(frame)
        argv = [
            "h2load", "-t1", f"-c{concurrency}", "-m1", f"-D{max(1, round(seconds))}", "--warm-up-time=1",
            "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"--log-file={log}", f"http://{host}:{port}{GRPC_PATH}",
        ]
        try:
            completed = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return _failed(scenario, str(exc))
        durations = _durations_ms(log)
    try:
        after = answered(metrics_url)
    except httpx.HTTPError as exc:
        return _failed(scenario, f"the server's metrics are unreadable: {exc}")
    output = completed.stdout + completed.stderr
    # "finished in" includes the warm-up; the counts and req/s are the main duration's.
    done = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", output)
    succeeded = re.search(r"(\d+) succeeded", output)
    if completed.returncode != 0 or done is None or succeeded is None or not durations:
        return _failed(scenario, f"exit {completed.returncode}: {output.strip()[-300:]}")
    ok, rate = int(succeeded.group(1)), float(done.group(1))
    served = {status: int(after[status] - before.get(status, 0.0)) for status in after}
    errors: dict[str, object] = {
        f"server status {status}": count for status, count in served.items()
        # h2load resets the streams still open when the run ends: at most one client-closed (499) each
        if count and status != "200" and not (status == "499" and count <= concurrency)
    }
    if served.get("200", 0) < ok:  # warm-up requests are served too, so the server's count is at least h2load's
        errors["unconfirmed"] = ok - served.get("200", 0)
    p50, p90, p99 = np.percentile(durations, [50, 90, 99])
    return client_row(
        scenario, requests_ok=ok, requests_per_s=rate, seconds=ok / rate if rate else 0.0,
        p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99), errors=errors,
    )


def _durations_ms(log: Path) -> list[float]:
    """Durations of the answered requests in h2load's log (start us, HTTP status, duration us; tab-separated).

    Streams that failed or were reset at the end of the run have status -1 and are left out."""
    if not log.exists():
        return []
    durations = []
    for line in log.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1] == "200" and fields[2].isdigit():
            durations.append(int(fields[2]) / 1000)
    return durations


def _failed(scenario: str, why: str) -> dict[str, object]:
    return failed_row(scenario, "h2load", why)

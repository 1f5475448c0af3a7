"""``python -m benchmarks lifecycle``: work nobody waits for is never run.

resnet50 (224x224, random weights: only the cost matters) served one image per inference
(``max_batch_size = 1`` in its config.toml: 40-50 ms an image on a 2-core box), and 40 requests sent at
once, each with a 300 ms deadline, in four ways: a gRPC deadline, the V2 REST ``timeout`` request
parameter (microseconds, Triton's), ``/predict?timeout_ms`` and a ``/predict`` client that hangs up
after 300 ms. Counted per case: the images actually inferred (``resnet_serve_batch_size_sum``), the
drops by reason, the statuses, each answer's time as the client saw it, and the server's own view (the
latency histogram bucket every request of the case ended in: a busy box delays the client too). The
goal: at most 15 of the 40 inferred, and every answer (where there is one) within twice the deadline.

``--service-root DIR`` runs the service from another checkout of the project (e.g. ``git worktree add
/tmp/main main``), so the same client measures before and after a change.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks.prometheus import samples
from benchmarks.report import table
from benchmarks.server import free_port, python, running_server
from benchmarks.service_bench import service_env
from benchmarks.workload import REPO_ROOT, BenchModel, payloads_for
from servable.card import OUTPUT_NAME
from service.doors.v2.protocol import ENCODED_INPUT, ENCODED_SUFFIX

REQUESTS = 40
DEADLINE_S = 0.3
#: The goals: images inferred of the 40 at most, answers within this many deadlines.
MAX_INFERRED = 15
MAX_ANSWER_DEADLINES = 2.0

GRPC_DEADLINE = "gRPC deadline"
V2_TIMEOUT = "V2 REST timeout"
PREDICT_TIMEOUT = "/predict?timeout_ms"
HANG_UP = "/predict hang-up"
CASES = (GRPC_DEADLINE, V2_TIMEOUT, PREDICT_TIMEOUT, HANG_UP)

#: (seconds from sending to the answer or the hang-up, outcome: an HTTP status, a gRPC code, "hung up")
Outcome = tuple[float, str]


def one_per_batch(source: Path, name: str, target: Path) -> Path:
    """A repository with ``name``'s versions linked from ``source`` and a config.toml of max_batch_size = 1."""
    folder = target / name
    folder.mkdir(parents=True)
    for version in (source / name).iterdir():
        if version.name.isdigit():
            (folder / version.name).mkdir()
            (folder / version.name / "model.onnx").symlink_to((version / "model.onnx").resolve())
    (folder / "config.toml").write_text("max_batch_size = 1\n")
    return target


def run(
    model: BenchModel, repo: Path, *, requests: int = REQUESTS, deadline_s: float = DEADLINE_S,
    service_root: Path = REPO_ROOT, log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every case against one service process (started from ``service_root``); a result row per case."""
    jpeg = payloads_for(model)[0][1]
    port, grpc_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-") as workdir:
        serving = one_per_batch(repo, model.name, Path(workdir) / "repo")
        env = service_env(serving, port, grpc_port)
        log_path = Path(workdir) / "service.log"
        with running_server([python(), "-m", "service"], env, f"{base}/health/ready", log_path=log_path,
                            cwd=service_root):
            clients = _clients(base, grpc_port, model.name, jpeg, requests, deadline_s)
            for case in CASES:
                before = _counters(base, model.name)
                outcomes = asyncio.run(clients[case]())
                after = _settled(base, model.name)
                row = _row(case, outcomes, before, after, deadline_s)
                rows.append(row)
                log(f"  lifecycle {case:<20} inferred {row['inferred']:>3.0f} of {requests}  "
                    f"answers p50 {row['answer_p50_s']} s max {row['answer_max_s']} s  {row['outcomes']}")
    return {"model": model.name, "requests": requests, "deadline_s": deadline_s,
            "service_root": str(service_root), "cases": rows}


def _clients(
    base: str, grpc_port: int, model: str, jpeg: bytes, requests: int, deadline_s: float
) -> dict[str, Callable[[], Awaitable[list[Outcome]]]]:
    predict = (jpeg, {"Content-Type": "image/jpeg"})
    v2_header = {
        "inputs": [{"name": ENCODED_INPUT, "shape": [1, 1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(jpeg) + 4}}],
        "outputs": [{"name": OUTPUT_NAME, "parameters": {"binary_data": True}}],
        "parameters": {"timeout": round(deadline_s * 1_000_000)},
    }
    return {
        GRPC_DEADLINE: lambda: _grpc(grpc_port, f"{model}{ENCODED_SUFFIX}", jpeg, requests, deadline_s),
        V2_TIMEOUT: lambda: _http(
            f"{base}/v2/models/{model}{ENCODED_SUFFIX}/infer", _v2_body(v2_header, jpeg), requests, None),
        PREDICT_TIMEOUT: lambda: _http(
            f"{base}/predict?model={model}&timeout_ms={round(deadline_s * 1000)}", predict, requests, None),
        HANG_UP: lambda: _http(f"{base}/predict?model={model}", predict, requests, deadline_s),
    }


def _v2_body(header: dict[str, Any], jpeg: bytes) -> tuple[bytes, dict[str, str]]:
    import json

    encoded = json.dumps(header, separators=(",", ":")).encode()
    return encoded + struct.pack("<I", len(jpeg)) + jpeg, {
        "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(encoded)),
    }


async def _http(url: str, request: tuple[bytes, dict[str, str]], count: int, hang_up_s: float | None) -> list[Outcome]:
    """``count`` POSTs at once, each on its own connection; with ``hang_up_s`` each client closes its
    connection after that long without an answer, as an impatient client does.

    curl's ``--parallel`` when it is installed: a Python client on the same two cores made every answer
    look 1-3 s late on a busy box (httpx's own event loop; curl saw the same server answer within 0.4 s).
    """
    if shutil.which("curl") is None:
        return await _httpx(url, request, count, hang_up_s)
    content, headers = request
    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-curl-") as folder:
        body, config = Path(folder) / "body", Path(folder) / "urls"
        body.write_bytes(content)
        config.write_text("".join(f'url = "{url}"\noutput = "/dev/null"\n' for _ in range(count)))
        command = ["curl", "--silent", "--parallel", "--parallel-immediate", "--parallel-max", str(count),
                   "--config", str(config), "--data-binary", f"@{body}", "--write-out", "%{http_code} %{time_total}\n",
                   *(argument for name, value in headers.items() for argument in ("--header", f"{name}: {value}"))]
        if hang_up_s is not None:
            command += ["--max-time", str(hang_up_s)]
        completed = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=120)
    outcomes = []
    for line in completed.stdout.splitlines():
        status, seconds = line.split()
        outcomes.append((float(seconds), "hung up" if status == "000" else status))
    return outcomes


async def _httpx(url: str, request: tuple[bytes, dict[str, str]], count: int, hang_up_s: float | None) -> list[Outcome]:
    content, headers = request
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        # Open the connections first: answer times are the service's, not TCP set-up under load.
        live = httpx.URL(url).copy_with(path="/health/live", query=None)
        await asyncio.gather(*(client.get(live) for _ in range(count)))

        async def one() -> Outcome:
            started = time.perf_counter()
            try:
                response = await asyncio.wait_for(client.post(url, content=content, headers=headers), hang_up_s)
                return time.perf_counter() - started, str(response.status_code)
            except asyncio.TimeoutError:
                return time.perf_counter() - started, "hung up"

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def _grpc(port: int, model: str, jpeg: bytes, count: int, deadline_s: float) -> list[Outcome]:
    import grpc

    from service.doors.v2.proto import inference_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=ENCODED_INPUT, datatype="BYTES", shape=[1, 1])
    request.outputs.add(name=OUTPUT_NAME)
    request.raw_input_contents.append(struct.pack("<I", len(jpeg)) + jpeg)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer", request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        await channel.channel_ready()

        async def one() -> Outcome:
            started = time.perf_counter()
            try:
                await infer(request, timeout=deadline_s)
                return time.perf_counter() - started, "OK"
            except grpc.aio.AioRpcError as error:
                return time.perf_counter() - started, error.code().name

        return list(await asyncio.gather(*(one() for _ in range(count))))


def _counters(base: str, model: str) -> dict[str, float]:
    """Images inferred, images in flight, drops by reason and requests by status, for ``model``."""
    found: Counter[str] = Counter()
    for name, labels, value in samples(httpx.get(f"{base}/metrics", timeout=10).text):
        if labels.get("model") != model:
            continue
        if name == "resnet_serve_batch_size_sum":
            found["inferred"] += value
        elif name == "resnet_serve_inflight_images":
            found["inflight"] += value
        elif name == "resnet_serve_images_dropped_total":
            found[f"dropped {labels['reason']}"] += value
        elif name == "resnet_serve_requests_total":
            found[f"status {labels['status']}"] += value
        elif name == "resnet_serve_request_seconds_bucket":
            found[f"le {labels['le']}"] += value
    return dict(found)


def _settled(base: str, model: str, timeout_s: float = 60.0) -> dict[str, float]:
    """The counters once nothing of ``model`` is in flight any more (queued work ran or was dropped)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counters = _counters(base, model)
        if counters.get("inflight", 0.0) == 0 or time.monotonic() > deadline:
            return counters
        time.sleep(0.05)


def _row(
    case: str, outcomes: list[Outcome], before: dict[str, float], after: dict[str, float], deadline_s: float
) -> dict[str, Any]:
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in set(after) | set(before)}
    answered = sorted(seconds for seconds, outcome in outcomes if outcome != "hung up")
    # The server's own view (its latency histogram): every request of the case ended within this bucket.
    buckets = sorted((float(key[3:]), value) for key, value in delta.items() if key.startswith("le "))
    served = buckets[-1][1] if buckets else 0.0
    server_max = next((le for le, value in buckets if value >= served), None) if served else None
    return {
        "case": case,
        "inferred": delta.get("inferred", 0.0),
        "outcomes": dict(Counter(outcome for _, outcome in outcomes)),
        "answer_p50_s": round(answered[len(answered) // 2], 3) if answered else None,
        "answer_max_s": round(answered[-1], 3) if answered else None,
        "server_max_s": server_max,
        "dropped": {key.split(" ", 1)[1]: value for key, value in sorted(delta.items()) if key.startswith("dropped ") and value},
        "server_statuses": {key.split(" ", 1)[1]: value for key, value in sorted(delta.items()) if key.startswith("status ") and value},
        # The goal as the server can be held to it: a busy box delays the client's own clock as well.
        "met": delta.get("inferred", 0.0) <= MAX_INFERRED
        and server_max is not None and server_max <= MAX_ANSWER_DEADLINES * deadline_s,
        "met_client_side": delta.get("inferred", 0.0) <= MAX_INFERRED
        and (not answered or answered[-1] <= MAX_ANSWER_DEADLINES * deadline_s),
    }


def render(result: dict[str, Any]) -> str:
    """The cases as a table."""
    rows = [
        [row["case"], f"{row['inferred']:.0f} of {result['requests']}", row["answer_p50_s"], row["answer_max_s"],
         f"<= {row['server_max_s']:g}" if row["server_max_s"] else "-",
         ", ".join(f"{k} {v}" for k, v in row["outcomes"].items()),
         ", ".join(f"{k} {v:.0f}" for k, v in row["dropped"].items()) or "-", row["met"], row["met_client_side"]]
        for row in result["cases"]
    ]
    title = (f"\nLIFECYCLE: {result['model']}, one image per inference, {result['requests']} requests at once with a "
             f"{result['deadline_s'] * 1000:.0f} ms deadline (goal: at most {MAX_INFERRED} inferred, answers within "
             f"{MAX_ANSWER_DEADLINES:g}x the deadline); service from {result['service_root']}")
    return title + "\n" + table(
        ["case", "inferred", "answer p50 s", "answer max s", "server s", "outcomes", "dropped (server)", "met",
         "met (client clock)"], rows
    )

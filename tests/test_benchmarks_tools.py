"""The benchmarks' tools, each on its own: peer request bodies and answer checks, diagnose's reading of
py-spy stacks, perf_analyzer and h2load inputs, /proc CPU accounting, freezing a process group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DIR, shared_path

from benchmarks import h2load


def _cifar_jpegs(count: int) -> list[bytes]:
    root = shared_path("data", "cifar10-sample")
    return [path.read_bytes() for path in sorted(root.glob("*/*.jpg"))[:count]]


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65_536])
def test_kserve_bytes_request_is_what_triton_parses(size: int) -> None:
    """JSON header of the declared length, then the BYTES element: 4-byte little-endian length + data."""
    import struct

    from benchmarks.peers import kserve

    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    body = kserve.bytes_request("image", data, output_name="probabilities")
    header = json.loads(body.content[: body.header_length])
    (tensor,) = header["inputs"]
    assert tensor == {"name": "image", "shape": [1, 1], "datatype": "BYTES",
                      "parameters": {"binary_data_size": size + 4}}
    assert header["outputs"] == [{"name": "probabilities", "parameters": {"binary_data": True}}]
    raw = body.content[body.header_length:]
    assert struct.unpack("<I", raw[:4]) == (size,) and raw[4:] == data
    assert body.headers == {"Content-Type": "application/octet-stream",
                            "Inference-Header-Content-Length": str(body.header_length)}


def test_kserve_bytes_request_carries_a_real_jpeg_unchanged() -> None:
    from benchmarks.peers import kserve

    for jpeg in _cifar_jpegs(3):
        body = kserve.bytes_request("image", jpeg, output_name="probabilities")
        assert body.content.endswith(jpeg) and len(body.content) == body.header_length + 4 + len(jpeg)


@pytest.mark.parametrize("binary", [True, False])
def test_kserve_fp32_output_reads_binary_and_json_answers(binary: bool) -> None:
    import numpy as np

    from benchmarks.peers import kserve

    row = np.array([[0.25, 0.5, 0.125, 0.125]], dtype=np.float32)
    other = {"name": "extra", "datatype": "FP32", "shape": [1, 1]}
    probabilities = {"name": "probabilities", "datatype": "FP32", "shape": [1, 4]}
    if binary:  # a preceding binary output must be skipped by its size
        other["parameters"] = {"binary_data_size": 4}
        probabilities["parameters"] = {"binary_data_size": 16}
        header = json.dumps({"outputs": [other, probabilities]}).encode()
        body, length = header + np.float32(9).tobytes() + row.astype("<f4").tobytes(), len(header)
    else:
        other["data"], probabilities["data"] = [9.0], row.ravel().tolist()
        body, length = json.dumps({"outputs": [other, probabilities]}).encode(), None
    assert np.array_equal(kserve.fp32_output(body, length, "probabilities"), row)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (json.dumps({"error": "unknown model"}).encode(), "no output"),
        (json.dumps({"outputs": [{"name": "probabilities", "datatype": "INT64", "shape": [1], "data": [1]}]}).encode(),
         "datatype INT64"),
    ],
)
def test_kserve_fp32_output_refuses_what_is_not_the_answer(body: bytes, message: str) -> None:
    from benchmarks.peers import kserve

    with pytest.raises(kserve.KServeError, match=message):
        kserve.fp32_output(body, None, "probabilities")


@pytest.mark.parametrize(
    ("scores", "problem"),
    [
        ({0: 0.7, 1: 0.2, 2: 0.1}, None),  # all classes
        ({0: 0.7, 1: 0.2}, None),  # a top-k
        ({1: 0.7, 0: 0.2}, "top-1 differs"),
        ({0: 0.6, 1: 0.2}, "scores differ"),
        ({}, "no scores"),
    ],
)
def test_check_scores_accepts_only_onnxruntimes_answer(scores: dict[int, float], problem: str | None) -> None:
    import numpy as np

    from benchmarks.peers.base import check_scores

    found = check_scores(scores, np.array([0.7, 0.2, 0.1], dtype=np.float32))
    assert found is None if problem is None else problem in found


# --- diagnose: reading py-spy's collapsed stacks -----------------------------------------------------------

_PYSPY_LINES = [  # the shapes py-spy 0.4 `record --native --threads -f raw` writes (trimmed stacks)
    ("thread (3002): infer-resnet20_0;thread_run (libpython3.11.so.1.0);_worker (concurrent/futures/thread.py:81);"
     "_queue_SimpleQueue_get_impl (_queuemodule.c:253);PyThread_acquire_lock_timed (libpython3.11.so.1.0);"
     "0x7f3f034aed90 (libc.so.6) 593"),
    ("thread (3002): infer-resnet20_0;_worker (concurrent/futures/thread.py:83);_timed (service/engine/batcher.py:50);"
     "Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:395);0x7f3ef702167b (onnxruntime/capi/x.so) 40"),
    ("thread (3002): infer-resnet20_0;_worker (concurrent/futures/thread.py:81);"
     "_queue_SimpleQueue_get_impl (_queuemodule.c:256);pthread_cond_timedwait (libc.so.6);0x7f3f034a3f16 (libc.so.6) 7"),
    ("thread (2979): MainThread;Server.run (uvicorn/server.py:86);task_step_impl (_asynciomodule.c:2704);"
     "read_multipart (service/doors/multipart.py:140);MultipartParser._internal_write (python_multipart/multipart.py:1200) 30"),
    "thread (2979): MainThread;Server.run (uvicorn/server.py:86);uv__io_poll (linux.c:1400);epoll_pwait (libc.so.6) 20",
    ("thread (15897): MainThread;_worker (concurrent/futures/thread.py:83);"
     "infer (benchmarks/peers/apps/pytriton_app.py:50);preprocess_image (servable/images.py:75) 5"),
]


def test_diagnose_reads_thread_ids_names_states_and_categories(tmp_path: Path) -> None:
    from benchmarks.diagnose import stacks

    path = tmp_path / "stacks.txt"
    path.write_text("\n".join(_PYSPY_LINES) + "\n")
    rows, names = stacks.read_collapsed(path)
    assert [tid for tid, _, _ in rows] == [3002, 3002, 3002, 2979, 2979, 15897]
    assert names == {3002: "infer-resnet20_0", 2979: "MainThread", 15897: "MainThread"}
    assert [stacks.state(frames) for _, frames, _ in rows] == ["wait", "cpu", "gil", "cpu", "wait", "cpu"]
    assert stacks.category(rows[1][1]) == "onnxruntime run"
    assert stacks.category(rows[3][1]).startswith("multipart parsing")  # innermost wins over uvicorn callers
    assert stacks.python_function(rows[3][1]) == "MultipartParser._internal_write (python_multipart/multipart.py)"
    roles = stacks.thread_roles(rows, names)
    assert roles == {3002: "inference thread", 2979: "event loop", 15897: "inference thread"}
    # Without the pool's name, the stack alone says which of the service's threads it is.
    assert stacks.thread_roles(rows[:3], {}) == {3002: "inference thread"}


@pytest.mark.parametrize(
    ("frame", "expected"),
    [  # the service's modules by their paths in its layout (ARCHITECTURE.md)
        ("_take_batch (service/engine/batcher.py:197)", "batcher (service.engine.batcher)"),
        ("read_uploads (service/doors/upload.py:63)", "multipart parsing (service.doors.upload + python-multipart)"),
        ("infer (service/pipeline/core.py:80)", "doors and pipeline (service.doors, service.pipeline)"),
        ("predict (service/doors/predict.py:40)", "doors and pipeline (service.doors, service.pipeline)"),
        ("top_k (service/doors/topk.py:20)", "JSON / response rendering"),
        ("decode (servable/jpeg.py:139)", "decode: preprocess_image"),
        ("Histogram.observe (prometheus_client/metrics.py:600)", "Prometheus metrics"),
        ("some_function (elsewhere.py:1)", "other"),
    ],
)
def test_diagnose_categories_follow_the_service_layout(frame: str, expected: str) -> None:
    from benchmarks.diagnose import stacks

    assert stacks.category(["Server.run (uvicorn/server.py:86)", frame]) == expected


def test_diagnose_flamegraph_is_svg_with_every_root(tmp_path: Path) -> None:
    from benchmarks.diagnose import stacks
    from benchmarks.diagnose.flamegraph import flamegraph_svg

    path = tmp_path / "stacks.txt"
    path.write_text("\n".join(_PYSPY_LINES) + "\n")
    rows, names = stacks.read_collapsed(path)
    svg = flamegraph_svg(rows, "test", stacks.thread_roles(rows, names))
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "inference thread (thread 3002)" in svg and "event loop (thread 2979)" in svg and "695 samples" in svg


def test_diagnose_splits_each_roles_cpu_by_its_samples(tmp_path: Path) -> None:
    """The clean window's CPU per role, split in proportion to the profiled window's running samples."""
    from benchmarks.diagnose import stacks
    from benchmarks.diagnose.report import Diagnosis, assign_roles, attribute, render

    path = tmp_path / "stacks.txt"
    path.write_text("\n".join(_PYSPY_LINES) + "\n")
    rows, names = stacks.read_collapsed(path)
    roles = stacks.thread_roles(rows, names)

    def thread(pid: int, tid: int, comm: str, process: str, us: float) -> dict[str, object]:
        return {"pid": pid, "tid": tid, "comm": comm, "process": process, "cpu_us_per_request": us,
                "cpu_percent": us / 20}

    threads = [thread(100, 3002, "infer-resnet20_0", "service", 1000.0), thread(100, 2979, "python", "service", 800.0),
               thread(200, 15897, "python", "pytriton_app.py", 100.0), thread(100, 4000, "python", "service", 300.0),
               thread(300, 5000, "ZMQbg/IO/0", "tritonserver", 50.0), thread(300, 6000, "tritonserver", "tritonserver", 9.0)]
    assign_roles(threads, roles, python_pids=[100, 200])
    assert [t["role"] for t in threads] == [
        "inference thread", "event loop", "inference thread", "native threads (onnxruntime intra-op pool)",
        "zmq I/O threads", "tritonserver (native)"]
    found = attribute(threads, rows, roles)
    assert found.roles["inference thread"] == {"cpu_us_per_request": 1100.0, "cpu_percent": 55.0, "threads": 2}
    # 40 running samples in onnxruntime, 5 decoding: the 1,100 us split 40:5; waits and GIL waits take none.
    assert found.categories["inference thread"] == pytest.approx(
        {"onnxruntime run": 1100 * 40 / 45, "decode: preprocess_image": 1100 * 5 / 45})
    assert found.categories["event loop"] == pytest.approx(
        {"multipart parsing (service.doors.upload + python-multipart)": 800.0})
    assert "native threads (onnxruntime intra-op pool)" in found.roles
    assert "native threads (onnxruntime intra-op pool)" not in found.categories  # py-spy never saw them
    assert found.thread_states["event loop"] == pytest.approx({"cpu": 60.0, "gil": 0.0, "wait": 40.0})
    assert found.thread_states["inference thread"] == pytest.approx(
        {"cpu": 100 * 45 / 645, "gil": 100 * 7 / 645, "wait": 100 * 593 / 645})
    figures = {"requests_per_s": 500.0, "p50_ms": 30.0, "p99_ms": 60.0}
    text = render(Diagnosis("service", "defaults", figures, figures, threads, found, {}, [str(path)]))
    assert "wrk clean: 500 req/s" in text and "event loop" in text and "2259 us/req" in text


def test_perf_analyzer_input_is_a_length_prefixed_bytes_element_and_the_run_is_bounded(tmp_path: Path) -> None:
    """perf_analyzer sends ``b64`` content as the tensor's raw wire bytes: the element needs its own length."""
    import base64
    import struct

    from benchmarks import perf_analyzer

    jpeg = (SHARED_DIR / "data" / "photos" / "chelsea.jpg").read_bytes() if SHARED_DIR.exists() else b"\xff\xd8x"
    (element,) = perf_analyzer.input_data("image_bytes", jpeg)["data"]
    wire = base64.b64decode(element["image_bytes"]["b64"])
    assert wire[:4] == struct.pack("<I", len(jpeg)) and wire[4:] == jpeg
    argv = perf_analyzer.command(tmp_path / "perf_analyzer", url="http://127.0.0.1:8001", protocol="grpc",
                                 model="resnet20-encoded", input_file=tmp_path / "in.json",
                                 csv_file=tmp_path / "out.csv", concurrency=32, seconds=10.0)
    assert argv[argv.index("-u") + 1] == "127.0.0.1:8001" and argv[argv.index("-i") + 1] == "grpc"
    assert argv[argv.index("--concurrency-range") + 1] == "32:32" and "--shape" in argv
    windows = int(argv[argv.index("--max-trials") + 1])
    window_ms = int(argv[argv.index("-p") + 1])
    assert 8_000 <= windows * window_ms * perf_analyzer.WINDOW_STRETCH <= 12_000  # about the phase asked for
    assert perf_analyzer.run(tmp_path / "missing", url="127.0.0.1:1", protocol="grpc", model="m", jpeg=jpeg,
                             concurrency=1, seconds=1.0)["errors"]  # a binary that is not there: a row, no raise


def test_the_h2load_grpc_frame_is_the_model_infer_request_the_service_parses() -> None:
    """h2load posts bytes it cannot check: they must be exactly one gRPC message of a valid request."""
    import struct

    from service.doors.v2.grpc_codec import parse_infer_request
    from service.doors.v2.proto import inference_pb2 as pb

    jpeg = shared_path("data", "cifar10-sample", "cat", "0000.jpg").read_bytes()
    frame = h2load.model_infer_frame("resnet20-encoded", "image_bytes", "probabilities", jpeg)
    assert frame[0] == 0 and struct.unpack(">I", frame[1:5])[0] == len(frame) - 5  # uncompressed, whole
    request = pb.ModelInferRequest.FromString(frame[5:])
    call = parse_infer_request(request)
    assert request.model_name == "resnet20-encoded" and [o.name for o in request.outputs] == ["probabilities"]
    assert len(call.inputs) == 1 and call.inputs[0].name == "image_bytes"
    assert request.raw_input_contents[0] == struct.pack("<I", len(jpeg)) + jpeg


def test_procstat_counts_this_process_cpu_and_server_cpu_divides_by_images() -> None:
    """A real busy loop shows up in /proc; the per-phase figures are plain ratios, None where unknown."""
    import time

    from benchmarks.procstat import cpu_seconds, group_cpu_seconds, group_pids, server_cpu

    before = cpu_seconds(os.getpid())
    assert before is not None
    spin_until = time.process_time() + 0.3
    while time.process_time() < spin_until:
        pass
    after = cpu_seconds(os.getpid())
    assert after is not None and after - before >= 0.2
    assert cpu_seconds(2**22 + 12345) is None  # no such process
    # A process group: this test's own (pytest leads it, or shares its parent's); it includes this process.
    group = os.getpgid(0)
    assert os.getpid() in group_pids(group)
    group_cpu = group_cpu_seconds(group)
    assert group_cpu is not None and group_cpu >= after
    assert group_cpu_seconds(2**22 + 12345) is None
    assert server_cpu(10.0, 13.4, 2.0, 1700.0) == pytest.approx(
        {"server_cores": 1.7, "server_cpu_ms_per_image": 2.0})
    assert server_cpu(None, 13.4, 2.0, 1700.0) == {"server_cores": None, "server_cpu_ms_per_image": None}
    assert server_cpu(10.0, 13.4, 2.0, 0.0)["server_cpu_ms_per_image"] is None


def test_procstat_reads_every_thread_and_names_the_process() -> None:
    """This process's own threads from /proc: the main thread's id is the pid, and its CPU so far is counted."""
    import threading
    import time

    from benchmarks.procstat import is_python, process_name, thread_cpu

    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    helper.start()
    try:
        threads = thread_cpu([os.getpid()])
    finally:
        stop.set()
        helper.join()
    assert threads[os.getpid()][0] == os.getpid() and threads[os.getpid()][2] > 0
    assert threads[helper.native_id][0] == os.getpid() and threads[helper.native_id][2] < 1.0  # it only waited
    assert thread_cpu([2**22 + 12345]) == {}
    assert is_python(os.getpid()) and not is_python(2**22 + 12345)
    assert process_name(2**22 + 12345) == "?"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)
        assert process_name(child.pid).endswith("(helper: -c import time; time.sleep(30))")
    finally:
        child.kill()
        child.wait()


def test_paused_freezes_a_process_group_and_lets_it_go_on() -> None:
    """A real busy child in its own session: frozen, it takes no CPU and shows state T; afterwards it runs."""
    import time

    from benchmarks.procstat import group_cpu_seconds, stat_fields
    from benchmarks.server import paused

    child = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    try:
        time.sleep(0.3)
        with paused(child.pid) as frozen:
            assert frozen is True
            time.sleep(0.1)  # SIGSTOP lands asynchronously
            frozen_at = group_cpu_seconds(child.pid)
            time.sleep(0.5)
            assert stat_fields(Path(f"/proc/{child.pid}/stat"))[0] == "T"
            assert group_cpu_seconds(child.pid) == frozen_at
        time.sleep(0.5)
        assert stat_fields(Path(f"/proc/{child.pid}/stat"))[0] in ("R", "S")
        resumed = group_cpu_seconds(child.pid)
        assert resumed is not None and frozen_at is not None and resumed > frozen_at
        with paused(None) as frozen:  # nothing to freeze: the block just runs
            assert frozen is False
        with paused(2**22 + 12345) as frozen:  # no such group
            assert frozen is False
    finally:
        child.kill()
        child.wait()


def _round(variant: str, rate: float, cpu: float | None) -> dict[str, object]:
    return {"variant": variant, "images_per_s": rate, "server_cpu_ms_per_image": cpu}


#: (case, rounds, expected summary rows as (variant, img/s, CPU ms, rate ratio, CPU ratio))
OVERHEAD_SUMMARIES = [
    ("medians and ratios to the first variant",
     [_round("before", 100, 2.0), _round("after", 90, 2.2), _round("before", 120, 2.0), _round("after", 96, 2.6),
      _round("before", 110, 1.0), _round("after", 99, 2.4)],
     [("before", 110, 2.0, 1.0, 1.0), ("after", 96, 2.4, 96 / 110, 1.2)]),
    ("a round without a CPU figure is left out, not counted as 0",
     [_round("before", 100, None), _round("before", 100, 2.0), _round("before", 100, 3.0), _round("after", 50, 4.0)],
     [("before", 100, 2.5, 1.0, 1.0), ("after", 50, 4.0, 0.5, 1.6)]),
    ("no baseline CPU: no CPU ratio",
     [_round("before", 100, None), _round("after", 50, 4.0)],
     [("before", 100, None, 1.0, None), ("after", 50, 4.0, 0.5, None)]),
]


@pytest.mark.parametrize(("rounds", "expected"), [c[1:] for c in OVERHEAD_SUMMARIES], ids=[c[0] for c in OVERHEAD_SUMMARIES])
def test_overhead_summary(rounds: list[dict[str, object]], expected: list[tuple[object, ...]]) -> None:
    from benchmarks.overhead import summarize

    got = [(s["variant"], s["images_per_s"], s["cpu_ms_per_image"], s["rate_ratio"], s["cpu_ratio"])
           for s in summarize(rounds)]
    assert got == [pytest.approx(row) if None not in row else row for row in expected]

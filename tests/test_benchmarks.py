"""`python -m benchmarks --quick` still runs end to end and its figures are sane (not fast: sane)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SHARED_DIR, shared_path

from benchmarks import h2load
from benchmarks.phases import GRPC_DOOR, H2LOAD_GRPC_DOOR, PREDICT_DOOR, REST_DOOR


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One exported-model cache for the runs below: a model one run exports, the next finds (the export skips)."""
    return tmp_path_factory.mktemp("bench-cache")


def run_benchmarks(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks <args>`` on the shared data, which must exit 0."""
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args], check=False, cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=timeout_s, env={**os.environ, "RESNET_SERVE_SHARED_DIR": str(SHARED_DIR)},
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed


def needs_wrk(why: str) -> None:
    from benchmarks import wrk

    if not wrk.available():
        pytest.skip(f"wrk is not installed (apt-get install wrk): {why}")


@pytest.mark.slow
def test_quick_benchmark_runs_and_reports_sane_figures(tmp_path: Path, export_cache: Path) -> None:
    shared_path("weights", "cifar10")
    shared_path("data", "photos")
    output = tmp_path / "bench.json"
    completed = run_benchmarks(
        "raw", "service", "naive", "--quick", "--models", "resnet20", "--duration", "1.5", "--no-wrk",
        "--cache-dir", str(export_cache), "--output", str(output), timeout_s=240,
    )
    assert "HEADLINE" in completed.stdout and "RAW onnxruntime" in completed.stdout
    # Not a terminal: one line as each phase starts, in the order planned.
    starts = [line for line in completed.stdout.splitlines() if line.endswith(" ...")]
    assert starts == [
        "python -m benchmarks: 4 phases ...", f"exporting resnet20 into {export_cache} (skipped when already there) ...",
        "raw resnet20 ...", "service resnet20 ...", "naive resnet20 ...",
    ]
    results = json.loads(output.read_text())

    raw_rows = results["raw"]["resnet20"]["batches"]
    assert [row["batch"] for row in raw_rows] == [1, 8, 32]
    for row in raw_rows:
        assert row["images_per_s"] > 0 and math.isfinite(row["latency_ms_mean"]) and row["runs"] >= 2
        # onnxruntime's threads are counted: at least the wall time of one call spread over the images.
        assert row["cpu_ms_per_image"] > 0.3 * row["latency_ms_mean"] / row["batch"], row

    service_runs = results["service"]["resnet20"]["runs"]
    naive_runs = results["naive"]["resnet20"]["runs"]
    assert {r["scenario"] for r in service_runs} >= {"closed c=1", "closed c=32"}
    assert [r["scenario"] for r in naive_runs] == ["closed c=1", "closed c=32"]
    for run in service_runs + naive_runs:
        assert run["errors"] == {}, run
        assert run["requests_ok"] > 0 and run["images_per_s"] > 0
        assert 0 < run["p50_ms"] <= run["p90_ms"] <= run["p99_ms"] < 60_000
    # Batching is visible in /metrics: 32 concurrent single-image clients share batches.
    saturated = next(r for r in service_runs if r["scenario"] == "closed c=32")
    assert saturated["mean_batch_size"] is not None and saturated["mean_batch_size"] >= 1.0
    # The server's own CPU during the phase: more than nothing, no more than the machine has, and a
    # resnet20 image costs it more than a microsecond and less than a tenth of a second.
    for run in service_runs:
        assert 0.05 < run["server_cores"] <= (os.cpu_count() or 1) + 0.2, run
        assert 0.001 < run["server_cpu_ms_per_image"] < 100, run
    multi = next(r for r in service_runs if r["images_per_request"] > 1)
    assert multi["mean_batch_size"] > 1.0

    figures = {line["figure"]: line for line in results["headline"]}
    assert any(name.startswith("service/naive resnet20") for name in figures)
    assert any(name.startswith("resnet20 img/s through /predict (best: resnet20,") for name in figures)
    assert results["models"]["resnet20"]["precision"] == "fp32" and results["raw"]["resnet20"]["precision"] == "fp32"


@pytest.mark.slow
def test_quick_int8_service_run_has_the_v2_rest_door_and_the_precision(tmp_path: Path, export_cache: Path) -> None:
    """The INT8 export behind its gate, served, and the same JPEG through /predict and V2 REST (wrk)."""
    needs_wrk("the V2 REST phase is driven by it")
    shared_path("weights", "cifar10")
    output = tmp_path / "bench.json"
    completed = run_benchmarks(
        "raw", "service", "--quick", "--models", "resnet20,resnet20-int8", "--duration", "1.5", "--no-perf-analyzer",
        "--cache-dir", str(export_cache), "--output", str(output), timeout_s=600,
    )
    assert "PRECISION resnet20: resnet20 (fp32) vs resnet20-int8 (int8)" in completed.stdout
    results = json.loads(output.read_text())
    assert results["models"]["resnet20-int8"]["precision"] == "int8"
    runs = {run["scenario"]: run for run in results["service"]["resnet20-int8"]["runs"]}
    for scenario in ("wrk c=32", REST_DOOR):
        assert runs[scenario]["errors"] == {} and runs[scenario]["requests_ok"] > 0, runs[scenario]
    assert "V2 gRPC (perf_analyzer) not measured" in results["service"]["resnet20-int8"]["v2_note"]
    if h2load.available():  # gRPC through h2load, confirmed by the server's own count of OK answers
        assert runs[H2LOAD_GRPC_DOOR]["errors"] == {} and runs[H2LOAD_GRPC_DOOR]["requests_ok"] > 0
        assert "V2 gRPC (h2load)/predict resnet20-int8 (c=32, 1 JPEG/req)" in {
            line["figure"] for line in results["headline"]
        }
    figures = {line["figure"] for line in results["headline"]}
    assert "raw resnet20-int8/resnet20 img/s (best batch of each)" in figures
    assert "V2 REST (wrk)/predict resnet20-int8 (c=32, 1 JPEG/req)" in figures


@pytest.mark.slow
def test_quick_int8_suite_measures_the_checkpoints_real_accuracy_through_both_paths(
    tmp_path: Path, export_cache: Path,
) -> None:
    """resnet20 in fp32 and INT8 on the 1,000 CIFAR sample JPEGs: onnxruntime and the service agree image for
    image, the fp32 file scores what its publisher reports, and the INT8 file stays within its gate."""
    shared_path("weights", "cifar10")
    shared_path("data", "cifar10-sample")
    output = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "int8", "--quick", "--cache-dir", str(export_cache), "--output", str(output)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=600,
        env={**os.environ, "RESNET_SERVE_SHARED_DIR": str(SHARED_DIR)},
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "INT8 ACCURACY" in completed.stdout and "INT8 SPEED" in completed.stdout
    int8 = json.loads(output.read_text())["int8"]
    direct, served = int8["accuracy"]
    assert (direct["model"], direct["via"], served["via"]) == ("resnet20", "onnxruntime", "HTTP")
    assert {k: v for k, v in served.items() if k != "via"} == {k: v for k, v in direct.items() if k != "via"}
    assert direct["fp32_acc"] == pytest.approx(direct["published"], abs=0.05)
    assert abs(direct["int8_acc"] - direct["fp32_acc"]) <= 1.0
    assert direct["agree_held"] >= 98.0 and direct["gate_vs_pytorch"] >= 98.0
    assert [row["batch"] for row in int8["speed"]] == [1, 8, 32, "best"]
    assert all(row["fp32"] > 0 and row["int8"] > 0 for row in int8["speed"])
    assert int8["speed"][-1]["int8"] == max(row["int8"] for row in int8["speed"][:-1])

def test_preprocess_suite_measures_pillow_exactly(tmp_path: Path) -> None:
    shared_path("reference", "preprocess", "torchvision_crops.npz")
    output = tmp_path / "bench.json"
    completed = run_benchmarks("preprocess", "--quick", "--quiet", "--output", str(output), timeout_s=120)
    # --quiet: the figures and the table, no line as a phase starts (nor a bar: nothing on stderr).
    assert completed.stderr == "" and " ...\n" not in completed.stdout and "PREPROCESS" in completed.stdout
    by_name = {d["name"]: d for d in json.loads(output.read_text())["preprocess"]["decoders"]}
    for name in ("service (exact)", "pillow only (exact)"):  # libjpeg-turbo for plain JPEGs, and Pillow for all
        exact = by_name[name]
        assert exact["parity_max_abs"] == 0 and exact["parity_exact_fraction"] == 1.0, name
        assert exact["images_per_s_500x375"] > 0
    draft = by_name["pillow + draft"]
    assert 0 < draft["large_vs_exact_mean_abs"] < 1.0  # draft really decoded at reduced scale, and stayed close


# --- peers: the KServe V2 body, answer checks, ratios; the peers themselves are opt-in ------------------

PEERS_ENV = "RESNET_SERVE_BENCH_PEERS"


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


def _wrk_row(scenario: str, images_per_s: float, **extra: object) -> dict[str, object]:
    return {"scenario": scenario, "images_per_request": 1, "images_per_s": images_per_s, "requests_ok": 10,
            "errors": {}, **extra}


def test_headline_ratio_is_against_the_peers_best_variant_each_with_its_own_service_slices() -> None:
    from benchmarks.headline import peer_ratios

    def run(scenario: str, peer: float, service: float, variant: str) -> dict[str, object]:
        return _wrk_row(scenario, peer, variant=variant, service=_wrk_row(scenario, service))

    results = {"peers": {"pytriton": {"resnet20": {"runs": [
        run("wrk c=1", 100.0, 400.0, "spin on"), run("wrk c=32", 800.0, 1000.0, "spin on"),
        run("wrk c=1", 80.0, 360.0, "spin off"), run("wrk c=32", 900.0, 990.0, "spin off"),
    ]}}}}
    lines = {line["figure"]: line for line in peer_ratios(results)}
    c1 = lines["service/pytriton resnet20 (wrk c=1, 1 img/req, interleaved), vs pytriton [spin on]"]
    c32 = lines["service/pytriton resnet20 (wrk c=32, 1 img/req, interleaved), vs pytriton [spin off]"]
    assert c1["value"] == pytest.approx(4.0) and c1["met"] is True
    assert c32["value"] == pytest.approx(1.1) and c32["goal"] == ">= 1.1" and c32["met"] is True


def _raw(*rates: tuple[int, float]) -> dict[str, object]:
    return {"batches": [{"batch": batch, "images_per_s": rate, "latency_ms_p50": 1000 * batch / rate}
                         for batch, rate in rates]}


def test_headline_int8_v2_and_resnet20_goals_come_from_the_same_runs() -> None:
    from benchmarks.headline import headline

    predict = _wrk_row("wrk c=32", 20.0, requests_per_s=20.0, p50_ms=5.0)
    results = {
        "models": {"resnet50": {"arch": "resnet50", "precision": "fp32"},
                   "resnet50-int8": {"arch": "resnet50", "precision": "int8"}},
        "raw": {"resnet50": _raw((1, 15.0), (32, 22.0)), "resnet50-int8": _raw((1, 40.0), (32, 60.0)),
                "resnet20": _raw((1, 900.0), (32, 1900.0)), "resnet20-int8": _raw((1, 1200.0), (32, 2600.0))},
        "service": {
            "resnet50-int8": {"runs": [
                {**predict, "images_per_s": 55.0}, _wrk_row(PREDICT_DOOR, 55.0, round=1),
                _wrk_row(REST_DOOR, 53.0, round=1), _wrk_row(GRPC_DOOR, 50.0, round=1),
            ]},
            "resnet20": {"runs": [_wrk_row("wrk c=32", 700.0, requests_per_s=700.0),
                                  _wrk_row("wrk c=4", 1600.0, requests_per_s=100.0, images_per_request=16)]},
            "resnet20-int8": {"runs": [_wrk_row("wrk c=32", 800.0, requests_per_s=800.0),
                                       _wrk_row("wrk c=4", 1400.0, requests_per_s=90.0, images_per_request=16)]},
        },
    }
    lines = {line["figure"]: line for line in headline(results)}
    int8 = lines["raw resnet50-int8/resnet50 img/s (best batch of each)"]
    assert int8["value"] == pytest.approx(60 / 22) and int8["goal"] == ">= 2.5" and int8["met"] is True
    assert lines["raw resnet20-int8/resnet20 img/s (best batch of each)"]["met"] is None
    served = lines["service/raw resnet50-int8 (wrk c=32, JPEG, 1 img/req)"]
    assert served["value"] == pytest.approx(55 / 60) and served["met"] is True
    rest = lines["V2 REST (wrk)/predict resnet50-int8 (c=32, 1 JPEG/req)"]
    assert rest["value"] == pytest.approx(53 / 55) and rest["goal"] == ">= 0.95" and rest["met"] is True
    grpc = lines["V2 gRPC (perf_analyzer)/predict resnet50-int8 (c=32, 1 JPEG/req)"]
    assert grpc["value"] == pytest.approx(50 / 55) and grpc["met"] is False
    best = lines["resnet20 img/s through /predict (best: resnet20, wrk c=4, 16 img/req)"]
    assert best["value"] == 1600.0 and best["met"] is True
    rps = lines["resnet20 req/s through /predict (wrk c=32, 1 JPEG/req, best: resnet20-int8)"]
    assert rps["value"] == 800.0 and rps["met"] is True


@pytest.mark.parametrize(
    ("predict", "grpc", "failed_round", "expected"),
    [
        # One slow round of a door (the box was busy) moves the median, not the verdict.
        ((1000.0, 1100.0, 900.0), (950.0, 700.0, 960.0), None, 950.0 / 1000.0),
        ((1000.0, 1000.0, 1000.0), (880.0, 890.0, 870.0), None, 0.88),
        # A round with errors is left out of that door's median.
        ((1000.0, 1000.0, 1000.0), (950.0, 990.0, 10.0), 3, 970.0 / 1000.0),
    ],
)
def test_door_ratios_are_medians_of_the_interleaved_rounds(
    predict: tuple[float, ...], grpc: tuple[float, ...], failed_round: int | None, expected: float,
) -> None:
    from benchmarks.headline import headline
    from benchmarks.report import door_rounds

    runs = [_wrk_row("wrk c=32", 5000.0, requests_per_s=5000.0)]  # not what the doors are compared with
    for index, (p, g) in enumerate(zip(predict, grpc, strict=True), start=1):
        # The server's CPU per image: 2 ms through /predict; through gRPC 2.0, 3.0 and 2.5 ms, or 10 ms in
        # the failed (third) round: counted, it would move the median from 2.5 to 3.0.
        runs.append(_wrk_row(PREDICT_DOOR, p, requests_per_s=p, round=index, server_cores=1.7,
                             server_cpu_ms_per_image=2.0))
        errors = {"perf_analyzer": "exit 1"} if index == failed_round else {}
        cost = 10.0 if index == failed_round else (2.0, 3.0, 2.5)[index - 1]
        runs.append({**_wrk_row(GRPC_DOOR, g, round=index, server_cores=1.6, server_cpu_ms_per_image=cost),
                     "errors": errors})
    lines = {line["figure"]: line for line in headline({"service": {"resnet20": {"runs": runs}}})}
    rounds = 2 if failed_round else 3
    grpc_line = lines[f"V2 gRPC (perf_analyzer)/predict resnet20 (c=32, 1 JPEG/req, median of {rounds} interleaved rounds)"]
    assert grpc_line["value"] == pytest.approx(expected)
    assert grpc_line["met"] is (expected >= 0.9)
    cpu_line = next(line for figure, line in lines.items() if figure.startswith("  images per server CPU-second, V2 gRPC"))
    assert cpu_line["value"] == pytest.approx(2.0 / 2.5) and cpu_line["met"] is None
    report = "\n".join(door_rounds({"service": {"resnet20": {"runs": runs}}}))
    grpc_row = next(line for line in report.splitlines() if "V2 gRPC" in line)
    assert ("failed" in grpc_row) is (failed_round is not None)
    # The last columns: median/predict, the cores per round, CPU ms per image and /predict's over it.
    assert grpc_row.split()[-8:] == [f"{expected:.2f}", "1.60", "/", "1.60", "/", "1.60", "2.50", "0.80"], grpc_row


def test_report_puts_fp32_and_int8_side_by_side() -> None:
    from benchmarks.report import precision_side_by_side

    results = {
        "models": {"resnet20": {"arch": "resnet20", "precision": "fp32"},
                   "resnet20-int8": {"arch": "resnet20", "precision": "int8"}},
        "raw": {"resnet20": _raw((1, 1000.0), (8, 2000.0)), "resnet20-int8": _raw((1, 1500.0), (8, 3000.0))},
        "service": {  # V2 REST in rounds: its median (800 and 1,000), not its first round, is compared
            "resnet20": {"runs": [_wrk_row("wrk c=32", 800.0), *(_wrk_row(REST_DOOR, r, round=i + 1)
                                                                 for i, r in enumerate((700.0, 900.0, 800.0)))]},
            "resnet20-int8": {"runs": [_wrk_row("wrk c=32", 1000.0), *(_wrk_row(REST_DOOR, r, round=i + 1)
                                                                      for i, r in enumerate((1100.0, 1000.0, 900.0)))]},
        },
    }
    text = "\n".join(precision_side_by_side(results))
    assert "resnet20 (fp32) vs resnet20-int8 (int8)" in text
    rows = [line.split() for line in text.splitlines() if line.startswith(("raw", "service"))]
    assert [row[-1] for row in rows] == ["1.50", "1.50", "1.25", "1.25"]


def test_headline_says_why_a_peer_was_not_measured() -> None:
    from benchmarks.headline import peer_ratios

    results = {
        "peers": {"torchserve": {"resnet50": {"runs": [], "skipped": "TorchServe needs Java 17+", "failures": {}}},
                  "litserve": {"resnet50": {"runs": [
                      _wrk_row("wrk c=1", 0.0, requests_ok=0, variant="spin on", service=_wrk_row("wrk c=1", 20.0)),
                  ], "skipped": None, "failures": {"spin off": "ServerFailed: exited with 1"}}}},
    }
    lines = peer_ratios(results)
    assert len(lines) == 4 and all(line["value"] is None and "not measured" in line["figure"] for line in lines)
    assert sum("TorchServe needs Java 17+" in line["figure"] for line in lines) == 2
    assert sum("exited with 1" in line["figure"] for line in lines) == 2  # a phase with no answer gives no ratio


def test_interleaved_slices_merge_into_one_row() -> None:
    from benchmarks.peers.runner import merge_slices

    slices = [
        {**_wrk_row("wrk c=32", 0.0), "seconds": 5.0, "requests_ok": 500, "requests_per_s": 100.0,
         "p50_ms": 10.0, "p90_ms": 20.0, "p99_ms": 30.0, "load_average_1m": 1.5},
        {**_wrk_row("wrk c=32", 0.0), "seconds": 5.0, "requests_ok": 1500, "requests_per_s": 300.0,
         "p50_ms": 20.0, "p90_ms": 25.0, "p99_ms": 50.0, "errors": {"timeout": 2}, "load_average_1m": 2.5},
    ]
    row = merge_slices(slices)
    assert row["images_per_s"] == pytest.approx(200.0) and row["requests_ok"] == 2000 and row["seconds"] == 10.0
    assert row["p50_ms"] == 15.0 and row["p99_ms"] == 50.0 and row["errors"] == {"timeout": 2}
    assert row["slices"] == 2 and row["load_average_1m"] == 2.5
    assert row["server_cores"] is None and row["beside_cores"] is None  # slices without CPU readings


@pytest.mark.parametrize(
    ("cpu_s", "beside_cpu_s", "expected"),
    [
        # 9 s of CPU over 5 s of slices and 2,000 images: 1.8 cores, 4.5 ms an image; the idle peer 0.4 cores.
        ((4.0, 5.0), (1.0, 1.0), {"server_cores": 1.8, "server_cpu_ms_per_image": 4.5, "beside_cores": 0.4}),
        # One slice could not read the idle server (no such group any more): that figure only is unknown.
        ((4.0, 5.0), (1.0, None), {"server_cores": 1.8, "server_cpu_ms_per_image": 4.5, "beside_cores": None}),
        ((None, 5.0), (1.0, 1.0), {"server_cores": None, "server_cpu_ms_per_image": None, "beside_cores": 0.4}),
    ],
)
def test_slices_merge_their_cpu_over_their_wall_time(
    cpu_s: tuple[float | None, ...], beside_cpu_s: tuple[float | None, ...], expected: dict[str, float | None],
) -> None:
    from benchmarks.peers.runner import merge_slices

    slices = [
        {**_wrk_row("wrk c=32", 0.0), "seconds": 2.5, "requests_ok": ok, "p50_ms": 10.0, "p90_ms": 20.0,
         "p99_ms": 30.0, "wall_s": 2.5, "cpu_s": cpu, "beside_cpu_s": beside}
        for ok, cpu, beside in zip((1000, 1000), cpu_s, beside_cpu_s, strict=True)
    ]
    row = merge_slices(slices)
    assert {key: row[key] for key in expected} == pytest.approx(expected)


def test_the_peer_headline_adds_cpu_per_image_and_what_the_idle_server_took() -> None:
    from benchmarks.headline import peer_ratios

    run = _wrk_row("wrk c=32", 18.0, variant="spin on", server_cpu_ms_per_image=110.0, beside_cores=0.05,
                   service=_wrk_row("wrk c=32", 15.0, server_cpu_ms_per_image=88.0, beside_cores=0.35))
    lines = peer_ratios({"peers": {"litserve": {"resnet50": {"runs": [run]}}}})
    cpu = next(line for line in lines if line["figure"].startswith("  images per server CPU-second"))
    assert cpu["value"] == pytest.approx(110.0 / 88.0) and cpu["met"] is None
    assert "ms/img: litserve 110.00, service 88.00; idle litserve took 0.35 cores in the service's slices, " \
        "the idle service 0.05" in cpu["figure"]


@pytest.mark.parametrize(
    ("argv", "phases"),
    [
        (["raw", "naive", "--models", "resnet20,resnet20-int8"],
         ["exporting resnet20", "exporting resnet20-int8", "raw resnet20", "raw resnet20-int8", "naive resnet20"]),
        (["service", "--models", "resnet20"], ["exporting resnet20", "perf_analyzer", "service resnet20"]),
        (["service", "--models", "resnet20", "--no-wrk"], ["exporting resnet20", "service resnet20"]),
        (["preprocess", "int8"], ["preprocess", "int8"]),
        (["workers", "--models", "resnet20"], ["exporting resnet20", "workers: 1 against 2 worker processes"]),
        (["lifecycle", "overhead"], ["lifecycle resnet50", "overhead resnet20"]),
        (["pytriton", "litserve", "--models", "resnet20,resnet20-int8"],
         ["exporting resnet20", "exporting resnet20-int8", "pytriton, litserve resnet20"]),
    ],
)
def test_the_phases_are_planned_before_any_runs(argv: list[str], phases: list[str], tmp_path: Path) -> None:
    """Progress counts phases ("3 of 9"), so the run is planned first; planning runs nothing."""
    from benchmarks.__main__ import _phases, build_parser, selected_suites
    from benchmarks.workload import bench_models

    shared_path("weights", "cifar10")
    args = build_parser().parse_args([*argv, "--cache-dir", str(tmp_path)])
    planned = _phases(args, selected_suites(args), bench_models(args.models.split(",")), {}, lambda line: None)
    assert [name.split(" (")[0].replace(f" into {tmp_path}", "") for name, _ in planned] == phases
    assert list(tmp_path.iterdir()) == [], "nothing ran"


def test_every_plan_gives_the_service_the_peers_wrk_phases() -> None:
    from benchmarks.phases import PEER_CONCURRENCY, plan_for, wrk_phases
    from benchmarks.workload import BenchModel

    for kind in ("imagenet", "cifar"):
        for quick in (True, False):
            plan = plan_for(BenchModel("m", "resnet20", None, kind), quick=quick, duration=None)
            phases = wrk_phases(plan)
            assert phases[: len(PEER_CONCURRENCY)] == [(c, 1) for c in PEER_CONCURRENCY]
            assert (plan.saturating, 1) in phases and len(phases) == len(set(phases))


def test_a_peer_that_cannot_be_installed_is_reported_not_raised(tmp_path: Path) -> None:
    """pip refuses a malformed requirement locally (no registry asked); the reason reaches the caller."""
    from benchmarks.peers.venv import PeerUnavailable, ensure

    with pytest.raises(PeerUnavailable, match="pip install"):
        ensure(tmp_path / "broken-venv", ["not a valid requirement!!"], log=lambda line: None)
    assert not (tmp_path / "broken-venv" / ".bench-requirements").exists()  # next run tries again


@pytest.mark.slow
@pytest.mark.parametrize("peer", ["pytriton", "litserve", "torchserve"])
def test_peer_quick_run_matches_onnxruntime_and_reports_ratios(peer: str, tmp_path: Path) -> None:
    """Opt-in: installs the peer into .cache/bench/peers (minutes the first time) and drives it with wrk."""
    import shutil

    wanted = {name.strip() for name in os.environ.get(PEERS_ENV, "").split(",")}
    if peer not in wanted and "all" not in wanted:
        pytest.skip(f"opt-in: set {PEERS_ENV}={peer} (or all) to install and run the {peer} peer")
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk): peers are measured with wrk only")
    shared_path("weights", "cifar10")
    output = tmp_path / "bench.json"
    run_benchmarks(peer, "--quick", "--models", "resnet20", "--duration", "1.5", "--output", str(output), timeout_s=1800)
    results = json.loads(output.read_text())
    figures = results["peers"][peer]["resnet20"]
    assert figures["skipped"] is None and figures["failures"] == {}, figures
    assert [r["scenario"] for r in figures["runs"]] == ["wrk c=1", "wrk c=32"]
    for run in figures["runs"]:
        for row in (run, run["service"]):  # the peer, and the service in the slices interleaved with it
            assert row["errors"] == {} and row["images_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    ratios = [line for line in results["headline"] if line["figure"].startswith(f"service/{peer} resnet20")]
    assert len(ratios) == 2 and all(line["value"] and line["value"] > 0 for line in ratios)


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

@pytest.mark.parametrize(
    ("raw_rows", "service_ms", "expected"),
    [
        # The fastest batch the service may run (<= 32) sets the raw cost: batch 16 here, not 64.
        ([(8, 70.0, 27.0), (16, 78.0, 25.0), (64, 80.0, 24.0)], 31.25, 25.0 / 31.25),
        ([(1, 50.0, 40.0)], 40.0, 1.0),
        ([(16, 78.0, None)], 31.25, None),  # results from before raw recorded its CPU
        ([(16, 78.0, 25.0)], None, None),
    ],
)
def test_service_raw_cpu_ratio_uses_the_fastest_raw_batch(
    raw_rows: list[tuple[int, float, float | None]], service_ms: float | None, expected: float | None,
) -> None:
    from benchmarks.headline import headline

    raw = {"batches": [{"batch": b, "images_per_s": rate, "latency_ms_mean": 1.0, "latency_ms_p50": 1.0,
                        "cpu_ms_per_image": cpu, "runs": 3} for b, rate, cpu in raw_rows]}
    service = _wrk_row("wrk c=32", 60.0, requests_per_s=60.0, server_cpu_ms_per_image=service_ms)
    lines = headline({"raw": {"resnet50-int8": raw}, "service": {"resnet50-int8": {"runs": [service]}}})
    found = [line for line in lines if line["figure"].startswith("  CPU per image: raw best batch's over the service's")]
    if expected is None:
        assert found == []
    else:
        assert [line["value"] for line in found] == [pytest.approx(expected)]


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


@pytest.mark.slow
def test_quick_workers_run_compares_one_and_two_workers_and_projects(tmp_path: Path, export_cache: Path) -> None:
    """``python -m benchmarks workers``: both models' 1 and 2 worker figures, and the projection from them."""
    needs_wrk("the workers suite measures with it")
    shared_path("weights", "cifar10")
    output = tmp_path / "bench.json"
    completed = run_benchmarks(
        "workers", "--quick", "--models", "resnet20", "--duration", "1", "--cache-dir", str(export_cache),
        "--output", str(output), timeout_s=400,
    )
    assert "WORKERS: 1 against 2" in completed.stdout and "PROJECTION" in completed.stdout
    section = json.loads(output.read_text())["workers"]
    assert set(section["models"]) == {"resnet20", "nearfree"}
    for name, figures in section["models"].items():
        cells = figures["summary"]["cells"]
        assert set(cells) == {"1w c=1", "1w c=32", "2w c=1", "2w c=32"}, name
        for cell in cells.values():
            assert cell["errors"] == 0 and cell["images_per_s"] > 0, (name, cell)
            assert 0 < cell["loop_cpu_ms_per_request"] <= cell["server_cpu_ms_per_image"] * 1.5, (name, cell)
        ratios = {"2w c=1 img/s", "2w c=1 p50", "2w c=32 img/s", "2w c=32 p50"}
        assert set(figures["summary"]["over_one_worker"]) == ratios, name
    plan = section["projection"]
    assert plan["loop_ceiling_requests_per_s"] > 0
    assert plan["models"]["resnet20"]["64 cores"]["workers"] >= plan["models"]["resnet20"]["16 cores"]["workers"] >= 1


def cell(**figures: float) -> dict:
    return {"summary": {"cells": {"1w c=32": figures}}}


@pytest.mark.parametrize(("cpu_ms", "on_16", "on_64"), [(2.0, 5, 20), (100.0, 1, 1), (0.5, 20, 80)])
def test_the_projection_keeps_each_loop_under_its_ceiling(cpu_ms: float, on_16: int, on_64: int) -> None:
    """A loop taking 0.5 ms a request carries 2,000 req/s, planned at 80 %: 1,600 img/s per worker. A model
    costing ``cpu_ms`` a image gives 1000 / cpu_ms img/s per core, so C cores need C x that / 1,600 workers."""
    from benchmarks.workers_bench import NEAR_FREE, projection

    plan = projection({NEAR_FREE: cell(loop_cpu_ms_per_request=0.5, images_per_s=900.0),
                       "m": cell(server_cpu_ms_per_image=cpu_ms)})
    assert plan["loop_ceiling_requests_per_s"] == 2000.0
    row = plan["models"]["m"]
    assert (row["16 cores"]["workers"], row["64 cores"]["workers"]) == (on_16, on_64)
    assert row["cores_one_loop_feeds"] == pytest.approx(1600 / (1000 / cpu_ms))

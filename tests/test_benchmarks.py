"""`python -m benchmarks --quick` still runs end to end and its figures are sane (not fast: sane)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, SHARED_DIR, shared_path

from benchmarks import h2load
from benchmarks.phases import H2LOAD_GRPC_DOOR, REST_DOOR


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


def quick_run(
    tmp_path: Path, *args: str, timeout_s: float, cache: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """:func:`run_benchmarks` with ``--quick`` (and ``--cache-dir cache``): what it printed, and its JSON."""
    output = tmp_path / "bench.json"
    cache_args = ("--cache-dir", str(cache)) if cache is not None else ()
    completed = run_benchmarks(*args, "--quick", *cache_args, "--output", str(output), timeout_s=timeout_s)
    return completed, json.loads(output.read_text())


def needs_wrk(why: str) -> None:
    from benchmarks import wrk

    if not wrk.available():
        pytest.skip(f"wrk is not installed (apt-get install wrk): {why}")


@pytest.mark.slow
def test_quick_benchmark_runs_and_reports_sane_figures(tmp_path: Path, export_cache: Path) -> None:
    shared_path("weights", "cifar10")
    shared_path("data", "photos")
    completed, results = quick_run(
        tmp_path, "raw", "service", "naive", "--models", "resnet20", "--duration", "1.5", "--no-wrk",
        cache=export_cache, timeout_s=240,
    )
    assert "HEADLINE" in completed.stdout and "RAW onnxruntime" in completed.stdout
    # Not a terminal: one line as each phase starts, in the order planned.
    starts = [line for line in completed.stdout.splitlines() if line.endswith(" ...")]
    assert starts == [
        "python -m benchmarks: 4 phases ...", f"exporting resnet20 into {export_cache} (skipped when already there) ...",
        "raw resnet20 ...", "service resnet20 ...", "naive resnet20 ...",
    ]

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
    completed, results = quick_run(
        tmp_path, "raw", "service", "--models", "resnet20,resnet20-int8", "--duration", "1.5", "--no-perf-analyzer",
        cache=export_cache, timeout_s=600,
    )
    assert "PRECISION resnet20: resnet20 (fp32) vs resnet20-int8 (int8)" in completed.stdout
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
    completed, results = quick_run(tmp_path, "int8", cache=export_cache, timeout_s=600)
    assert "INT8 ACCURACY" in completed.stdout and "INT8 SPEED" in completed.stdout
    int8 = results["int8"]
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
    completed, results = quick_run(tmp_path, "preprocess", "--quiet", timeout_s=120)
    # --quiet: the figures and the table, no line as a phase starts (nor a bar: nothing on stderr).
    assert completed.stderr == "" and " ...\n" not in completed.stdout and "PREPROCESS" in completed.stdout
    by_name = {d["name"]: d for d in results["preprocess"]["decoders"]}
    for name in ("service (exact)", "pillow only (exact)"):  # libjpeg-turbo for plain JPEGs, and Pillow for all
        exact = by_name[name]
        assert exact["parity_max_abs"] == 0 and exact["parity_exact_fraction"] == 1.0, name
        assert exact["images_per_s_500x375"] > 0
    draft = by_name["pillow + draft"]
    assert 0 < draft["large_vs_exact_mean_abs"] < 1.0  # draft really decoded at reduced scale, and stayed close


# --- peers: the KServe V2 body, answer checks, ratios; the peers themselves are opt-in ------------------

PEERS_ENV = "RESNET_SERVE_BENCH_PEERS"


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
    _, results = quick_run(tmp_path, peer, "--models", "resnet20", "--duration", "1.5", timeout_s=1800)
    figures = results["peers"][peer]["resnet20"]
    assert figures["skipped"] is None and figures["failures"] == {}, figures
    assert [r["scenario"] for r in figures["runs"]] == ["wrk c=1", "wrk c=32"]
    for run in figures["runs"]:
        for row in (run, run["service"]):  # the peer, and the service in the slices interleaved with it
            assert row["errors"] == {} and row["images_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    ratios = [line for line in results["headline"] if line["figure"].startswith(f"service/{peer} resnet20")]
    assert len(ratios) == 2 and all(line["value"] and line["value"] > 0 for line in ratios)


@pytest.mark.slow
def test_quick_workers_run_compares_one_and_two_workers_and_projects(tmp_path: Path, export_cache: Path) -> None:
    """``python -m benchmarks workers``: both models' 1 and 2 worker figures, and the projection from them."""
    needs_wrk("the workers suite measures with it")
    shared_path("weights", "cifar10")
    completed, results = quick_run(
        tmp_path, "workers", "--models", "resnet20", "--duration", "1", cache=export_cache, timeout_s=400
    )
    assert "WORKERS: 1 against 2" in completed.stdout and "PROJECTION" in completed.stdout
    section = results["workers"]
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

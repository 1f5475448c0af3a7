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


@pytest.mark.slow
def test_quick_benchmark_runs_and_reports_sane_figures(tmp_path: Path) -> None:
    shared_path("weights", "cifar10")
    shared_path("data", "photos")
    output = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "raw", "service", "naive", "--quick", "--models", "resnet20",
         "--duration", "1.5", "--no-wrk", "--cache-dir", str(tmp_path / "cache"), "--output", str(output)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "RESNET_SERVE_SHARED_DIR": str(SHARED_DIR)},
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "HEADLINE" in completed.stdout and "RAW onnxruntime" in completed.stdout
    results = json.loads(output.read_text())

    raw_rows = results["raw"]["resnet20"]["batches"]
    assert [row["batch"] for row in raw_rows] == [1, 8, 32]
    for row in raw_rows:
        assert row["images_per_s"] > 0 and math.isfinite(row["latency_ms_mean"]) and row["runs"] >= 2

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
    multi = next(r for r in service_runs if r["images_per_request"] > 1)
    assert multi["mean_batch_size"] > 1.0

    figures = {line["figure"]: line for line in results["headline"]}
    assert any(name.startswith("service/naive resnet20") for name in figures)
    assert "resnet20 img/s through /predict (best)" in figures


def test_preprocess_suite_measures_pillow_exactly(tmp_path: Path) -> None:
    shared_path("reference", "preprocess", "torchvision_crops.npz")
    output = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "preprocess", "--quick", "--output", str(output)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "RESNET_SERVE_SHARED_DIR": str(SHARED_DIR)},
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    by_name = {d["name"]: d for d in json.loads(output.read_text())["preprocess"]["decoders"]}
    exact = by_name["pillow (service, exact)"]
    assert exact["parity_max_abs"] == 0 and exact["parity_exact_fraction"] == 1.0
    assert exact["images_per_s_500x375"] > 0
    draft = by_name["pillow + draft"]
    assert 0 < draft["large_vs_exact_mean_abs"] < 1.0  # draft really decoded at reduced scale, and stayed close

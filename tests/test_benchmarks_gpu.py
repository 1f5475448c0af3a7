"""`python -m benchmarks gpu`: on this CPU host its quick run goes through every step on the CPU provider
(and says so), and the pieces a GPU run depends on decide correctly on real sessions and tables."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, SHARED_DIR, shared_path
from server import link_repository

from benchmarks.gpu_checks import Mode, check_strict_session, cpu_probabilities, variant_with_other_weights
from benchmarks.gpu_load import what_bounds
from service.engine.providers import CPU, CUDA, TENSORRT
from service.engine.repository import scan_repository
from service.engine.runtime import LoadedModel, load_model
from service.settings import Settings

CHECKS = ["libraries", "strict session resnet20", "buckets resnet20", "two versions, one cache",
          "service answers as on CPU"]


@pytest.mark.slow
def test_quick_gpu_run_on_the_cpu_goes_through_every_step(tmp_path: Path) -> None:
    shared_path("weights", "cifar10")
    output = tmp_path / "gpu.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "gpu", "--quick", "--cpu", "--cache-dir", str(tmp_path / "cache"),
         "--output", str(output)],
        check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "RESNET_SERVE_SHARED_DIR": str(SHARED_DIR)},
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-3000:]
    assert "CPU run (no GPU here" in completed.stdout and "CPUExecutionProvider" in completed.stdout
    results = json.loads(output.read_text())
    assert results["gpu"] is False and results["quick"] is True
    checks = {check["name"]: check for check in results["checks"]}
    assert list(checks) == CHECKS
    assert checks["libraries"]["ok"] is None, "a CPU run cannot pass or fail the GPU libraries"
    assert all(checks[name]["ok"] is True for name in CHECKS[1:]), checks
    assert results["tests"]["files"] == ["test_gpu.py"] and results["tests"]["skipped"] == results["tests"]["tests"] > 0
    assert [row["batch"] for row in results["raw"]] == [1, 8, 32]
    assert all(row["images_per_s"] > 0 and row["iobinding_images_per_s"] is None for row in results["raw"])
    assert [(row["workers"], row["clients"]) for row in results["e2e"]] == [(1, 64), (1, 256)]
    for row in results["e2e"]:
        assert row["errors"] == {} and row["images_per_s"] > 0 and row["bound"], row
    assert [goal["met"] for goal in results["goals"]] == [None, None], "goals are judged on a GPU only"
    assert "/predict JPEG" in completed.stdout and "model-only" in completed.stdout


@pytest.fixture(scope="module")
def resnet20(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    repo = link_repository(model_repo, tmp_path_factory.mktemp("gpu_bench_repo"), "resnet20")
    return load_model(scan_repository(repo)["resnet20"].versions[1], Settings(model_dir=repo, warmup=False))


def test_the_variant_has_other_weights_in_the_same_graph(resnet20: LoadedModel, tmp_path: Path) -> None:
    """Rotating the classifier's rows by one class moves every image's top-1 class by exactly one."""
    pixels = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    variant = variant_with_other_weights(resnet20.entry.path, tmp_path / "v2" / "model.onnx")
    original, rotated = cpu_probabilities(resnet20.entry.path, pixels), cpu_probabilities(variant, pixels)
    np.testing.assert_allclose(np.roll(original, 1, axis=1), rotated, atol=1e-6)
    assert variant.read_bytes() != resnet20.entry.path.read_bytes()


GPU_MODE = Mode(True, "a test GPU", f"{TENSORRT},{CUDA},{CPU}", Path("/nonexistent"))
CPU_MODE = dataclasses.replace(GPU_MODE, gpu=False, providers=CPU)


@pytest.mark.parametrize(
    ("mode", "requested", "assignment", "notes", "ok"),
    [
        (GPU_MODE, [TENSORRT, CUDA, CPU], [("c", "Conv", TENSORRT), ("s", "Shape", CPU)], (), True),
        (GPU_MODE, [TENSORRT, CUDA, CPU], [("c", "Conv", CUDA)], (), False),  # TensorRT not active
        (GPU_MODE, [TENSORRT, CUDA, CPU], [("c", "Conv", TENSORRT), ("g", "Gemm", CPU)], (), False),
        (GPU_MODE, [CUDA, CPU], [("c", "Conv", CUDA)], ("TensorRT engine cache unusable",), False),
        (CPU_MODE, [CPU], [("c", "Conv", CPU)], (), True),
    ],
)
def test_strict_session_check_fails_on_any_fallback(
    resnet20: LoadedModel, mode: Mode, requested: list[str], assignment: list[tuple[str, str, str]],
    notes: tuple[str, ...], ok: bool,
) -> None:
    from service.engine.providers import active_providers

    model = dataclasses.replace(
        resnet20, requested_providers=requested, node_providers=tuple(assignment), provider_notes=notes,
        active_providers=active_providers(tuple(assignment), requested),
    )
    lines: list[str] = []
    check = check_strict_session("m", model, mode, lines.append)
    assert check.ok is ok, check.detail
    assert len(lines) == 1 + len(assignment), "every node's provider is printed"


RAW = [{"batch": 1, "images_per_s": 1000.0}, {"batch": 64, "images_per_s": 20_000.0}, {"batch": 256, "images_per_s": 30_000.0}]


@pytest.mark.parametrize(
    ("row", "bound"),
    [
        ({"images_per_s": 18_000.0, "mean_batch_size": 50.0, "server_stage_means_ms": {"preprocess": 0.1},
          "server_cores": 4.0}, "the GPU"),
        ({"images_per_s": 5_000.0, "mean_batch_size": 50.0, "server_stage_means_ms": {"preprocess": 2.5},
          "server_cores": 15.0}, "the CPU, mostly decode"),
        ({"images_per_s": 5_000.0, "mean_batch_size": 50.0, "server_stage_means_ms": {"preprocess": 0.5},
          "server_cores": 15.0}, "the CPU (HTTP, Python)"),
        ({"images_per_s": 2_000.0, "mean_batch_size": 8.0, "server_stage_means_ms": {"preprocess": 0.5},
          "server_cores": 1.1}, "nothing saturated: one event loop, HTTP or the client"),
    ],
)
def test_what_bounds_an_end_to_end_row(row: dict[str, object], bound: str) -> None:
    assert what_bounds(row, RAW, 16, gpu=True)["bound"] == bound

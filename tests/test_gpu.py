"""On a real GPU: TensorRT and CUDA run the whole graph, each version gets its own engine, engines are
reused and profiles hold, and the service with REQUIRE_GPU serves on the GPU. Marked ``gpu``; without an
NVIDIA device and onnxruntime's CUDA provider every test here skips, saying so. ``python -m benchmarks
gpu`` runs them (``pytest -m gpu``) after its checks.

No timing is asserted: a rebuilt engine shows as a rewritten engine file, not as a slow call.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from conftest import cifar_checkpoint, cifar_sample
from PIL import Image
from server import metric_value, run_server

from benchmarks.gpu_checks import agreement, cpu_probabilities, variant_with_other_weights
from service.engine.providers import CPU, CUDA, TENSORRT, cpu_compute_nodes, gpu_device_present
from service.engine.repository import scan_repository
from service.engine.runtime import LoadedModel, load_model
from service.settings import Settings

GPU = CUDA in ort.get_available_providers() and gpu_device_present()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not GPU, reason="no GPU: needs an NVIDIA device (/dev/nvidia*) and onnxruntime-gpu's CUDA provider"),
]
TENSORRT_FIRST = f"{TENSORRT},{CUDA},{CPU}"
MAX_BATCH = 16


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet20 with its trained weights as ``twin`` v1, and v2 with the classifier rows rotated."""
    from export import export_model

    repo = tmp_path_factory.mktemp("gpu_repo")
    export_model("resnet20", str(cifar_checkpoint("resnet20")), model_dir=repo, name="twin", version=1,
                 log=lambda line: None)
    variant_with_other_weights(repo / "twin" / "1" / "model.onnx", repo / "twin" / "2" / "model.onnx")
    return repo


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One engine cache for the module, as a pod has: each engine is built once."""
    return tmp_path_factory.mktemp("trt_cache")


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.stack([np.asarray(Image.open(path).convert("RGB")) for path, _ in cifar_sample()[::25]])


def load(repo: Path, version: int, providers: str, cache: Path) -> LoadedModel:
    entry = scan_repository(repo)["twin"].versions[version]
    return load_model(entry, Settings(model_dir=repo, providers=providers, trt_cache_dir=cache,
                                      max_batch_size=MAX_BATCH))


def engine_files(cache: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in cache.glob("*.engine")}


def test_tensorrt_runs_every_node_and_each_version_gets_its_own_engine(
    repo: Path, pixels: np.ndarray, cache: Path
) -> None:
    answers = {}
    for version in (1, 2):
        model = load(repo, version, TENSORRT_FIRST, cache)
        assert model.active_providers[0] == TENSORRT and not model.gpu_fallback, model.nodes_per_provider
        assert not model.provider_notes and not cpu_compute_nodes(model.node_providers)
        answers[version] = model.run(pixels[:MAX_BATCH])
        top1, diff = agreement(answers[version], cpu_probabilities(model.entry.path, pixels[:MAX_BATCH]))
        assert top1 >= 0.98 and diff < 0.02, (version, top1, diff)
    engines = engine_files(cache)
    assert any(name.startswith("twin_v1_") for name in engines) and any(name.startswith("twin_v2_") for name in engines)
    assert agreement(answers[1], answers[2])[0] < 0.5, "v2 answered with v1's engine"


def test_a_second_load_reuses_the_engine_and_every_bucket_reruns_without_a_rebuild(
    repo: Path, pixels: np.ndarray, cache: Path
) -> None:
    load(repo, 1, TENSORRT_FIRST, cache).close()  # builds the engine unless an earlier test did; warms every bucket
    built = engine_files(cache)
    model = load(repo, 1, TENSORRT_FIRST, cache)
    for size in model.buckets:
        model.run(pixels[:size])
    assert engine_files(cache) == built, "an engine was rebuilt: a profile did not hold or the cache missed"


def test_cuda_alone_runs_every_compute_node_on_the_gpu(repo: Path, pixels: np.ndarray, tmp_path: Path) -> None:
    model = load(repo, 1, f"{CUDA},{CPU}", tmp_path)
    assert model.active_providers[0] == CUDA and not model.gpu_fallback
    assert not cpu_compute_nodes(model.node_providers), model.nodes_per_provider
    top1, _ = agreement(model.run(pixels[:8]), cpu_probabilities(model.entry.path, pixels[:8]))
    assert top1 >= 0.98


def test_service_with_require_gpu_serves_on_tensorrt(repo: Path, cache: Path) -> None:
    env = {"RESNET_SERVE_REQUIRE_GPU": "true", "RESNET_SERVE_PROVIDERS": TENSORRT_FIRST,
           "RESNET_SERVE_TRT_CACHE_DIR": str(cache), "RESNET_SERVE_MAX_BATCH_SIZE": str(MAX_BATCH)}
    with run_server(repo, env=env, timeout_s=600) as server:
        (info,) = httpx.get(server.url("/models"), timeout=10).json()["models"]
        assert info["active_providers"][0] == TENSORRT and info["gpu_fallback"] is False, info
        assert info["nodes_per_provider"].get(TENSORRT, 0) > 0 and not info["provider_notes"]
        assert metric_value(server, "resnet_serve_provider_info", model="twin", gpu_fallback="false") >= 1
        (path, _) = cifar_sample()[0]
        answer = httpx.post(server.url("/predict?model=twin"), files={"file": ("x.jpg", path.read_bytes())}, timeout=60)
        assert answer.status_code == 200, answer.text

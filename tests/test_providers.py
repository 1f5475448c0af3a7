"""The GPU path's decisions, each checked on the CPU: engine-cache keys, provider options and plans, the
libraries TensorRT needs, sessions without onnxruntime's silent fallback, and where nodes really run.

Sessions here are real onnxruntime sessions on the `model_repo` fixture's resnet20. Where the installed
onnxruntime is the GPU build (it lists TensorrtExecutionProvider) on a host without a GPU, asking for
TensorRT fails for real, which is how the explicit fallback is exercised; elsewhere those tests skip.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from server import link_repository

from servable.card import ModelCard
from servable.layout import VersionFile
from service.engine import providers
from service.engine.providers import (
    CPU,
    CUDA,
    RECORD_ASSIGNMENT,
    TENSORRT,
    active_providers,
    cpu_compute_nodes,
    engine_cache_prefix,
    plan_providers,
    provider_options,
)
from service.engine.repository import scan_repository
from service.engine.runtime import LoadedModel, ModelLoadError, load_model
from service.settings import Settings

GPU_BUILD = TENSORRT in ort.get_available_providers()
NO_GPU = not providers.gpu_device_present()
ALL_GPU = f"{TENSORRT},{CUDA},{CPU}"


@pytest.fixture(scope="module")
def repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return link_repository(model_repo, tmp_path_factory.mktemp("providers_repo"), "resnet20")


@pytest.fixture(scope="module")
def entry(repo: Path) -> VersionFile:
    return scan_repository(repo)["resnet20"].versions[1]


@pytest.fixture(scope="module")
def cpu_model(entry: VersionFile, repo: Path) -> LoadedModel:
    return load_model(entry, Settings(model_dir=repo, max_batch_size=4, warmup=False))


@pytest.fixture(scope="module")
def card(cpu_model: LoadedModel) -> ModelCard:
    return cpu_model.card


def with_precision(card: ModelCard, precision: str) -> ModelCard:
    """The card as another precision would write it (only ``export.precision`` is read by the plans)."""
    return card.model_copy(update={"export": card.export.model_copy(update={"precision": precision})})


# --- the engine cache key ------------------------------------------------------------------------------

BASE = VersionFile("resnet20", 1, Path("/m/resnet20/1/model.onnx"), (11, 1000, 5))


@pytest.mark.parametrize(
    ("changed", "other", "batch"),
    [
        ("name (same architecture, other weights)", dataclasses.replace(BASE, name="resnet20-b"), 32),
        ("version", dataclasses.replace(BASE, version=2), 32),
        ("file republished under the same version", dataclasses.replace(BASE, fingerprint=(12, 1000, 6)), 32),
        ("largest batch (another profile)", BASE, 64),
    ],
)
def test_engine_cache_prefix_differs_for_every_engine_it_must_not_share(
    card: ModelCard, changed: str, other: VersionFile, batch: int
) -> None:
    assert engine_cache_prefix(BASE, card, 32) != engine_cache_prefix(other, card, batch), changed


def test_engine_cache_prefix_is_stable_readable_and_file_name_safe(card: ModelCard) -> None:
    dotted = dataclasses.replace(BASE, name="res.net-20")
    assert engine_cache_prefix(BASE, card, 32) == engine_cache_prefix(dataclasses.replace(BASE), card, 32)
    assert engine_cache_prefix(BASE, card, 32) != engine_cache_prefix(BASE, with_precision(card, "fp16"), 32)
    prefix = engine_cache_prefix(dotted, card, 32)
    assert re.fullmatch(r"res_net_20_v1_[0-9a-f]{16}", prefix), prefix


@pytest.mark.parametrize(("precision", "fp16"), [("fp32", False), ("fp16", True)])
def test_tensorrt_options_carry_the_prefix_caches_and_profile(
    card: ModelCard, tmp_path: Path, precision: str, fp16: bool
) -> None:
    options = provider_options(
        TENSORRT, BASE, with_precision(card, precision), cache_dir=tmp_path, device_id=1, max_batch_size=16
    )
    assert options["trt_engine_cache_prefix"] == engine_cache_prefix(BASE, with_precision(card, precision), 16)
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(tmp_path.resolve())
    assert options["trt_engine_cache_enable"] is options["trt_timing_cache_enable"] is True
    assert options["trt_fp16_enable"] is fp16 and "trt_int8_enable" not in options
    assert options["trt_profile_max_shapes"] == "images:16x32x32x3" and options["device_id"] == 1
    assert provider_options(CUDA, BASE, card, cache_dir=tmp_path, device_id=1, max_batch_size=16) == {"device_id": 1}


# --- which providers a file gets ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "cache_ok", "session", "expected", "note"),
    [
        ("fp32", True, [TENSORRT, CUDA, CPU], [TENSORRT, CUDA, CPU], None),
        ("fp16", True, [TENSORRT, CUDA, CPU], [TENSORRT, CUDA, CPU], None),
        # INT8 stays off TensorRT on purpose: not expected there, so not a fallback.
        ("int8", True, [CUDA, CPU], [CUDA, CPU], "INT8"),
        # An unusable engine cache costs TensorRT, not the model; TensorRT stays expected: a fallback.
        ("fp32", False, [CUDA, CPU], [TENSORRT, CUDA, CPU], "engine cache"),
    ],
)
def test_plan_keeps_int8_off_tensorrt_and_survives_an_unusable_engine_cache(
    card: ModelCard, tmp_path: Path, precision: str, cache_ok: bool, session: list[str], expected: list[str],
    note: str | None,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cache = tmp_path / "cache" if cache_ok else blocker / "cache"
    plan = plan_providers([TENSORRT, CUDA, CPU], with_precision(card, precision), cache)
    assert (plan.session, plan.expected) == (session, expected)
    assert (note is None) == (not plan.notes) and (note is None or note in plan.notes[0])
    assert cache.is_dir() is (TENSORRT in session), "the cache folder is made only for TensorRT"


def test_tensorrt_needs_its_onnx_parser_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """libnvinfer loading is not enough: a missing libnvonnxparser.so.10 also keeps TensorRT out of 'auto'."""
    loaded: list[str] = []

    def load(name: str) -> None:
        loaded.append(name)
        if name == "libnvonnxparser.so.10":
            raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(providers, "load_library", load)
    assert providers.tensorrt_loadable() is False
    assert loaded == ["libnvinfer.so.10", "libnvonnxparser.so.10"]
    chosen = providers.resolve_providers("auto", [TENSORRT, CUDA, CPU], gpu_present=True)
    assert chosen == [CUDA, CPU]


def test_tensorrt_library_list_matches_what_the_installed_provider_links() -> None:
    """Read the NEEDED entries of onnxruntime's TensorRT provider library: an upgrade that links other
    TensorRT libraries fails here instead of on the first GPU host."""
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so"
    if not library.is_file():
        pytest.skip(f"{library.name} is not in this onnxruntime build (the CPU wheel)")
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    dynamic = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic))
    assert {name for name in needed if name.startswith("libnv")} == set(providers.TENSORRT_LIBRARIES)
    assert {"libcudart.so.13", "libcudnn.so.9", "libcublas.so.13"} <= needed
    cuda = {name for name in needed if name.startswith(("libcud", "libcubl"))}
    assert cuda <= set(providers.CUDA_LIBRARIES), cuda - set(providers.CUDA_LIBRARIES)


# --- where nodes run ----------------------------------------------------------------------------------


def test_sessions_record_node_providers_and_refuse_silent_fallback(cpu_model: LoadedModel) -> None:
    session = cpu_model.session
    assert session.get_session_options().get_session_config_entry(RECORD_ASSIGNMENT) == "1"
    assert session._enable_fallback is False  # onnxruntime exposes it no other way
    counts = cpu_model.nodes_per_provider
    assert set(counts) == {CPU} and counts[CPU] == len(cpu_model.node_providers) > 20
    assert {op for _, op, _ in cpu_model.node_providers} >= {"Conv", "Softmax"}
    assert cpu_model.active_providers == [CPU] and cpu_model.gpu_fallback is False


@pytest.mark.parametrize(
    ("requested", "active", "fallback"),
    [
        ([TENSORRT, CUDA, CPU], [TENSORRT, CPU], False),  # TensorRT takes every node: CUDA unused is no loss
        ([TENSORRT, CUDA, CPU], [TENSORRT, CUDA, CPU], False),
        ([TENSORRT, CUDA, CPU], [CUDA, CPU], True),  # TensorRT asked for, not active
        ([TENSORRT, CUDA, CPU], [CPU], True),
        ([CUDA, CPU], [CPU], True),
        ([CPU], [CPU], False),
    ],
)
def test_gpu_fallback_is_the_preferred_gpu_provider_running_no_node(
    cpu_model: LoadedModel, requested: list[str], active: list[str], fallback: bool
) -> None:
    model = dataclasses.replace(cpu_model, requested_providers=requested, active_providers=active)
    assert model.gpu_fallback is fallback


@pytest.mark.parametrize(
    ("assignment", "registered", "active", "cpu_nodes"),
    [
        ((("a", "Conv", TENSORRT), ("b", "Shape", CPU)), [TENSORRT, CUDA, CPU], [TENSORRT, CPU], []),
        ((("a", "Conv", CUDA), ("b", "Gemm", CPU)), [CUDA, CPU], [CUDA, CPU], [("b", "Gemm")]),
        ((), [CUDA, CPU], [CUDA, CPU], []),  # unknown: trust the registration
    ],
)
def test_active_providers_come_from_node_assignment(
    assignment: providers.NodeAssignment, registered: list[str], active: list[str], cpu_nodes: list[tuple[str, str]]
) -> None:
    assert active_providers(assignment, registered) == active
    assert cpu_compute_nodes(assignment) == cpu_nodes


# --- the explicit fallback, for real where TensorRT cannot start (GPU build, no GPU) -----------------

needs_failing_tensorrt = pytest.mark.skipif(
    not (GPU_BUILD and NO_GPU), reason="needs onnxruntime-gpu on a host without a GPU (TensorRT then fails for real)"
)


@needs_failing_tensorrt
def test_a_failed_tensorrt_session_is_retried_without_it_and_reported(entry: VersionFile, tmp_path: Path) -> None:
    model = load_model(entry, Settings(model_dir=tmp_path, providers=ALL_GPU, trt_cache_dir=tmp_path / "trt",
                                       max_batch_size=4, warmup=False))
    assert model.requested_providers == [TENSORRT, CUDA, CPU]
    assert model.active_providers == [CPU] and model.gpu_fallback is True
    assert "TensorrtExecutionProvider" in model.provider_notes[0] and "trying CUDAExecutionProvider" in model.provider_notes[0]
    assert model.session._enable_fallback is False
    assert model.run(np.zeros((3, 32, 32, 3), np.uint8)).shape == (3, 10)


@needs_failing_tensorrt
def test_an_unusable_engine_cache_does_not_refuse_the_model(entry: VersionFile, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    model = load_model(entry, Settings(model_dir=tmp_path, providers=ALL_GPU, trt_cache_dir=blocker / "trt",
                                       max_batch_size=4, warmup=False))
    assert "engine cache" in model.provider_notes[0] and model.gpu_fallback is True
    with pytest.raises(ModelLoadError, match="REQUIRE_GPU"):
        load_model(entry, Settings(model_dir=tmp_path, providers=ALL_GPU, trt_cache_dir=blocker / "trt",
                                   require_gpu=True, warmup=False))


def test_engine_cache_problem_names_the_reason(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert providers.engine_cache_problem(tmp_path / "ok" / "nested") is None
    problem = providers.engine_cache_problem(tmp_path / "file" / "sub")
    assert problem is not None and "NotADirectoryError" in problem
    if os.geteuid() != 0:
        (tmp_path / "locked").mkdir(mode=0o500)
        assert providers.engine_cache_problem(tmp_path / "locked" / "sub") is not None

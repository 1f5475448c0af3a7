"""The first minute of ``python -m benchmarks gpu``: proof that the GPU providers really run, before any
figure is taken. On a host without a GPU the same checks run on the CPU provider (so CI exercises them);
what only a GPU can fail is then said to be not applicable, never passed.

1. The libraries the providers link load (CUDA 13 runtime, cuBLAS(Lt), cuDNN 9, TensorRT 10 and its ONNX parser).
2. A strict session per model (onnxruntime's fallback off) and every node's provider printed; a node
   that computes on the CPU fails the check (shape-only ops are onnxruntime's choice and are listed).
3. Every batch bucket warmed, then re-run: a re-run that costs an engine build means the profile did not hold.
4. Two versions of one architecture with different weights through one engine-cache folder each agree
   with a CPU session (a stale engine would answer for the wrong weights), and disagree with each other.
5. The service with ``REQUIRE_GPU=true`` answers ``/predict`` as a CPU session does.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.server import free_port, python, running_server
from servable.card import INPUT_NAME, OUTPUT_NAME
from servable.images import preprocess_image
from service.engine import providers
from service.engine.repository import scan_repository
from service.engine.runtime import LoadedModel, load_model
from service.settings import Settings

Log = Callable[[str], None]
#: Probability and agreement a GPU session must reach against a CPU session of the same file. TensorRT
#: computes fp32 convolutions in TF32 by default (10-bit mantissa), so probabilities move by up to ~1e-2.
MAX_PROBABILITY_DIFF = {"fp32": 0.02, "fp16": 0.05}
MIN_TOP1_AGREEMENT = 0.98
#: A re-run of a warmed bucket slower than this (plus 3x its share of the largest batch) built an engine.
RERUN_SLACK_MS = 50.0


@dataclass
class Check:
    """One check's outcome: ok True/False, or None where it cannot apply on this host."""

    name: str
    ok: bool | None
    detail: str
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Mode:
    """How this run executes: on the GPU providers, or the same steps on the CPU provider."""

    gpu: bool
    device: str
    providers: str
    trt_cache: Path

    @property
    def label(self) -> str:
        return f"GPU run on {self.device}" if self.gpu else f"CPU run (no GPU here: the CPU provider on {self.device})"

    def settings(self, repo: Path, max_batch_size: int, **extra: Any) -> Settings:
        return Settings(model_dir=repo, providers=self.providers, trt_cache_dir=self.trt_cache,
                        max_batch_size=max_batch_size, warmup=False, **extra)


def detect_mode(cache_dir: Path, *, force_cpu: bool = False) -> Mode:
    gpu = (not force_cpu and providers.CUDA in ort.get_available_providers() and providers.gpu_device_present())
    if gpu:
        listed = f"{providers.TENSORRT},{providers.CUDA},{providers.CPU}"
        return Mode(True, gpu_name(), listed, cache_dir / "trt-cache")
    return Mode(False, cpu_name(), providers.CPU, cache_dir / "trt-cache")


def gpu_name() -> str:
    if shutil.which("nvidia-smi") is None:
        return "an NVIDIA GPU (nvidia-smi absent)"
    query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader", "-i", "0"]
    done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip() or f"an NVIDIA GPU (nvidia-smi: {done.stderr.strip()[:100]})"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {len(os.sched_getaffinity(0))} CPUs"
    except OSError:
        pass
    return platform.processor() or "an unknown CPU"


def timed(run: Callable[[], Check]) -> Check:
    started = time.perf_counter()
    check = run()
    check.seconds = time.perf_counter() - started
    return check


def open_version(repo: Path, name: str, version: int, settings: Settings) -> LoadedModel:
    return load_model(scan_repository(repo)[name].versions[version], settings)


# --- 1. libraries -------------------------------------------------------------------------------------


def check_libraries(mode: Mode) -> Check:
    with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime prints each missing library; we list them
        providers.preload_gpu_libraries()
    wanted = (*providers.CUDA_LIBRARIES, *providers.TENSORRT_LIBRARIES)
    problems = providers.library_problems(wanted)
    loaded = [name for name in wanted if name not in problems]
    detail = f"loaded {', '.join(loaded) or 'none'}" + (f"; missing {', '.join(problems)}" if problems else "")
    return Check("libraries", (not problems) if mode.gpu else None, detail, data={"missing": problems, "loaded": loaded})


# --- 2. strict sessions -------------------------------------------------------------------------------


def check_strict_session(label: str, model: LoadedModel, mode: Mode, log: Log) -> Check:
    """Print where every node runs; fail on a fallback, a note, or a node computing on the CPU."""
    log(f"  {label}: {len(model.node_providers)} nodes, {model.nodes_per_provider}")
    for name, op, provider in model.node_providers:
        log(f"    {provider:<26} {op:<20} {name}")
    problems = [*model.provider_notes]
    if mode.gpu:
        if model.gpu_fallback:
            problems.append(f"fallback: asked for {model.requested_providers}, active {model.active_providers}")
        cpu_nodes = providers.cpu_compute_nodes(model.node_providers)
        if cpu_nodes:
            problems.append(f"{len(cpu_nodes)} nodes compute on the CPU: {cpu_nodes[:5]}")
    elif model.active_providers != [providers.CPU]:
        problems.append(f"a CPU run activated {model.active_providers}")
    shape_only = [op for _, op, provider in model.node_providers if provider == providers.CPU] if mode.gpu else []
    detail = "; ".join(problems) or (
        f"every node on {', '.join(model.active_providers)}"
        + (f" ({len(shape_only)} shape-only ops on the CPU)" if shape_only else "")
    )
    return Check(f"strict session {label}", not problems, detail, data={"nodes": model.nodes_per_provider})


# --- 3. buckets ---------------------------------------------------------------------------------------


def check_buckets(label: str, model: LoadedModel) -> Check:
    """Warm every bucket once, then re-run each: a re-run must cost its share of the largest batch."""
    side = model.card.preprocessing.crop_size
    first, again = {}, {}
    for size in model.buckets:
        batch = np.zeros((size, side, side, 3), np.uint8)
        started = time.perf_counter()
        model.run(batch)
        first[size] = 1000 * (time.perf_counter() - started)
    for size in model.buckets:
        batch = np.zeros((size, side, side, 3), np.uint8)
        started = time.perf_counter()
        model.run(batch)
        again[size] = 1000 * (time.perf_counter() - started)
    largest = model.buckets[-1]
    per_image = again[largest] / largest
    slow = {size: round(ms, 1) for size, ms in again.items() if ms > 3 * size * per_image + RERUN_SLACK_MS}
    detail = (f"re-run ms {', '.join(f'{s}: {again[s]:.1f}' for s in model.buckets)}; first runs took "
              f"{sum(first.values()) / 1000:.1f} s in all") + (f"; SLOW (profile not held?) {slow}" if slow else "")
    return Check(f"buckets {label}", not slow, detail, data={"first_ms": first, "rerun_ms": again})


# --- 4. two versions, one cache ----------------------------------------------------------------------


def variant_with_other_weights(source: Path, target: Path) -> Path:
    """``source`` with the classifier's rows rotated by one class: the same graph, tensor names and
    card, other weights. onnxruntime's engine id cannot tell the two apart; only our prefix can."""
    model = onnx.load(str(source))
    gemm = next(node for node in reversed(model.graph.node) if node.op_type in ("Gemm", "MatMul"))
    weights = {init.name: init for init in model.graph.initializer}
    for name in gemm.input[1:]:
        if name not in weights:
            continue
        array = onnx.numpy_helper.to_array(weights[name])
        transposed = gemm.op_type == "Gemm" and any(a.name == "transB" and a.i for a in gemm.attribute)
        axis = 0 if (array.ndim == 1 or transposed) else 1
        weights[name].CopyFrom(onnx.numpy_helper.from_array(np.roll(array, 1, axis=axis), name))
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


def cpu_probabilities(path: Path, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=[providers.CPU])
    return session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0]


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement, max |probability difference|) of two answers to the same images."""
    return float(np.mean(a.argmax(1) == b.argmax(1))), float(np.abs(a - b).max())


def check_two_versions(source: Path, workdir: Path, mode: Mode, pixels: np.ndarray, max_batch: int) -> Check:
    """v1 = ``source``, v2 = its variant; both loaded through one fresh engine-cache folder."""
    repo = workdir / "twin-repo"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "twin" / "1").mkdir(parents=True)
    shutil.copyfile(source, repo / "twin" / "1" / "model.onnx")
    variant_with_other_weights(source, repo / "twin" / "2" / "model.onnx")
    cache = Path(tempfile.mkdtemp(prefix="twin-trt-", dir=workdir))
    settings = Mode(mode.gpu, mode.device, mode.providers, cache).settings(repo, max_batch)
    answers, problems, figures = {}, [], {}
    for version in (1, 2):
        model = open_version(repo, "twin", version, settings)
        path = repo / "twin" / str(version) / "model.onnx"
        answers[version] = model.run(pixels)
        top1, diff = agreement(answers[version], cpu_probabilities(path, pixels))
        figures[f"v{version}"] = {"top1_vs_cpu": top1, "max_diff_vs_cpu": diff, "active": model.active_providers}
        if top1 < MIN_TOP1_AGREEMENT or diff > MAX_PROBABILITY_DIFF[model.card.export.precision]:
            problems.append(f"v{version} disagrees with its CPU session (top-1 {top1:.1%}, max |dp| {diff:.3g})")
        model.close()
    across, _ = agreement(answers[1], answers[2])
    if across > 0.5:
        problems.append(f"v1 and v2 agree on {across:.0%} of images: the variant's weights are not in use")
    engines = sorted(p.name for p in cache.glob("*.engine"))
    versions = {v for v in (1, 2) if any(e.startswith(f"twin_v{v}_") for e in engines)}
    if mode.gpu and providers.TENSORRT in mode.providers and versions != {1, 2}:
        problems.append(f"expected engines of two versions in {cache}, found {engines}")
    detail = "; ".join(problems) or (
        f"v1/v2 each agree with the CPU (top-1 {figures['v1']['top1_vs_cpu']:.0%}/{figures['v2']['top1_vs_cpu']:.0%}), "
        f"with each other on {across:.0%}; engines {engines or 'none (no TensorRT)'}"
    )
    return Check("two versions, one cache", not problems, detail, data={**figures, "engines": engines})


# --- 5. the service with REQUIRE_GPU ------------------------------------------------------------------


def check_service(
    repo: Path, name: str, mode: Mode, jpegs: list[tuple[str, bytes]], workdir: Path, max_batch: int
) -> Check:
    """``python -m service`` (REQUIRE_GPU=true on a GPU) answers /predict as a CPU session does; with the
    strict check's largest batch, so it loads the engine that check built."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "RESNET_SERVE_MODEL_DIR": str(repo), "RESNET_SERVE_HOST": "127.0.0.1", "RESNET_SERVE_PORT": str(port),
        "RESNET_SERVE_GRPC_PORT": str(free_port()), "RESNET_SERVE_PROVIDERS": mode.providers,
        "RESNET_SERVE_TRT_CACHE_DIR": str(mode.trt_cache), "RESNET_SERVE_REQUIRE_GPU": str(mode.gpu).lower(),
        "RESNET_SERVE_MAX_BATCH_SIZE": str(max_batch), "RESNET_SERVE_LOG_LEVEL": "WARNING",
        "RESNET_SERVE_ACCESS_LOG": "false",
    }
    entry = max(scan_repository(repo)[name].versions.items())[1]
    model = load_model(entry, Settings(model_dir=repo, providers=providers.CPU, warmup=False))
    problems = []
    with running_server([python(), "-m", "service"], env, f"{base}/health/ready",
                        log_path=workdir / f"gpu-check-service-{port}.log", timeout_s=600) as _:
        info = httpx.get(f"{base}/models", timeout=10).json()["models"][0]
        if mode.gpu and (info["gpu_fallback"] or providers.CPU == info["active_providers"][0]):
            problems.append(f"/models: active {info['active_providers']}, fallback {info['gpu_fallback']}")
        for filename, data in jpegs:
            answer = httpx.post(f"{base}/predict?model={name}&top_k=3", files={"file": (filename, data)}, timeout=60)
            if answer.status_code != 200:
                problems.append(f"{filename}: HTTP {answer.status_code} {answer.text[:200]}")
                continue
            got = answer.json()["predictions"]
            expected = model.run(preprocess_image(data, model.card.preprocessing)[None])[0]
            top = int(expected.argmax())
            if got[0]["index"] != top or abs(got[0]["score"] - float(expected[top])) > MAX_PROBABILITY_DIFF["fp16"]:
                problems.append(f"{filename}: service {got[0]['index']} ({got[0]['score']:.3f}), CPU {top} "
                                f"({expected[top]:.3f})")
    model.close()
    detail = "; ".join(problems[:4]) or (
        f"{len(jpegs)} JPEGs answered as on the CPU (REQUIRE_GPU={env['RESNET_SERVE_REQUIRE_GPU']}, "
        f"active {info['active_providers']}) from {name} v{entry.version}"
    )
    return Check("service answers as on CPU", not problems, detail, data={"active": info["active_providers"]})

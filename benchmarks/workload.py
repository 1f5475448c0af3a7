"""What every benchmark runs on: the exported models (cached between runs) and real JPEG payloads."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("RESNET_SERVE_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "bench"

#: ImageNet's typical photo size (the median ImageNet image is about 500x375).
IMAGENET_PHOTO_SIZE = (500, 375)
PHOTO_FILES = ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg", "motorcycle_left.jpg")


@dataclass(frozen=True)
class BenchModel:
    """One model under test: how to export it and which uploads it gets."""

    name: str
    arch: str
    weights: str | None  # checkpoint path, or None for the exporter's seeded random init
    kind: str  # "imagenet" (500x375 photos) or "cifar" (32x32 CIFAR sample JPEGs)
    int8: bool = False  # static INT8 (QDQ) export of the same weights, behind the exporter's accuracy gate
    fp16: bool = False  # half-precision network inside the same uint8-in, float32-out graph

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.fp16 else "fp32"

    @property
    def weights_note(self) -> str:
        return "random init (seed 0): no internet for torchvision weights" if self.weights is None else "real"


class MissingSharedData(RuntimeError):
    """../shared (weights, photos) is absent; the benchmark cannot run on real data."""


def shared_path(*parts: str) -> Path:
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        raise MissingSharedData(f"{path} is absent: benchmarks need the ../shared folder (or RESNET_SERVE_SHARED_DIR)")
    return path


def cifar_checkpoint(arch: str) -> str:
    folder = shared_path("weights", "cifar10")
    matches = sorted(folder.glob(f"{arch}-*.th"))
    if not matches:
        raise MissingSharedData(f"no {arch} checkpoint in {folder}")
    return str(matches[0])


#: Every model a run may cover, fp32 first: a ``-int8`` name is the same weights through ``--int8``.
BENCH_MODEL_NAMES = ("resnet50", "resnet20", "resnet50-int8", "resnet20-int8")


def bench_models(names: list[str]) -> list[BenchModel]:
    """resnet50 (224x224, random weights) and the real CIFAR resnet20, each in fp32 and INT8."""
    known = {
        "resnet50": lambda: BenchModel("resnet50", "resnet50", None, "imagenet"),
        "resnet20": lambda: BenchModel("resnet20", "resnet20", cifar_checkpoint("resnet20"), "cifar"),
        "resnet50-int8": lambda: BenchModel("resnet50-int8", "resnet50", None, "imagenet", int8=True),
        "resnet20-int8": lambda: BenchModel("resnet20-int8", "resnet20", cifar_checkpoint("resnet20"), "cifar", int8=True),
        # For the GPU run (python -m benchmarks gpu); not in the default list.
        "resnet50-fp16": lambda: BenchModel("resnet50-fp16", "resnet50", None, "imagenet", fp16=True),
        "resnet20-fp16": lambda: BenchModel("resnet20-fp16", "resnet20", cifar_checkpoint("resnet20"), "cifar", fp16=True),
    }
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown benchmark models {unknown}; choose from {sorted(known)}")
    return [known[name]() for name in names]


def model_repository(model: BenchModel, cache_dir: Path) -> Path:
    """A one-model repository ``<cache>/repos/<name>`` exported once; later runs reuse it (export skips)."""
    from export import export_model  # torch is only needed here, not for the load generator

    repo = cache_dir / "repos" / model.name
    repo.mkdir(parents=True, exist_ok=True)
    export_model(model.arch, model.weights, model_dir=repo, name=model.name, log=lambda line: None,
                 fp16=model.fp16, **_int8_options(model))
    return repo


def _int8_options(model: BenchModel) -> dict[str, Any]:
    """How the INT8 file is calibrated and gated (the same recipe as docs/int8.md's table).

    CIFAR: the first 300 sample JPEGs calibrate, the other 700 are the held-out gate (>= 98 % top-1
    agreement with fp32). resnet50 has random weights here (no internet for torchvision's), whose
    near-uniform outputs make agreement meaningless, so the gate is off and the card says so: the
    file is only for speed.
    """
    if not model.int8:
        return {}
    if model.kind == "cifar":
        return {"int8": True, "calibration": shared_path("data", "cifar10-sample")}
    return {"int8": True, "calibration": shared_path("data", "photos"), "min_agreement": 0.0}


def photo_jpegs(size: tuple[int, int] = IMAGENET_PHOTO_SIZE, quality: int = 90) -> list[tuple[str, bytes]]:
    """The shared photos resized to an ImageNet-typical 500x375 and re-encoded as JPEG."""
    folder = shared_path("data", "photos")
    payloads = []
    for name in PHOTO_FILES:
        with Image.open(folder / name) as image:
            resized = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        resized.save(buffer, format="JPEG", quality=quality)
        payloads.append((name, buffer.getvalue()))
    return payloads


def cifar_jpegs(limit: int = 200) -> list[tuple[str, bytes]]:
    """Real CIFAR-10 test JPEGs (32x32) from the shared sample, spread over the ten classes."""
    root = shared_path("data", "cifar10-sample")
    files = sorted(root.glob("*/*.jpg"))
    step = max(1, len(files) // limit)
    return [(f"{path.parent.name}_{path.name}", path.read_bytes()) for path in files[::step][:limit]]


def payloads_for(model: BenchModel) -> list[tuple[str, bytes]]:
    return photo_jpegs() if model.kind == "imagenet" else cifar_jpegs()

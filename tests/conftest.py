"""Shared fixtures: the ../shared data folder and a model repository exported once per session."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("RESNET_SERVE_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()

#: CIFAR-10 checkpoints shipped in ../shared/weights/cifar10 and the accuracy that README states for them.
CIFAR_SAMPLE_ACCURACY = {"resnet20": 80.4, "resnet32": 84.0, "resnet44": 82.1, "resnet56": 82.5}


def quiet(_line: str) -> None:
    """Export log sink for tests that do not look at the printed lines."""


def session_for(path: Path) -> Any:
    """A CPU onnxruntime session on an exported file (onnxruntime imported here only when asked for)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def card_of(path: Path) -> Any:
    """The model card inside an exported file, as the service reads it."""
    from servable.card import ModelCard

    return ModelCard.from_metadata(session_for(path).get_modelmeta().custom_metadata_map)


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the calling test with a reason when it is not there."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: tests on real weights and images need the ../shared folder")
    return path


def cifar_checkpoint(arch: str) -> Path:
    """The shipped CIFAR-10 checkpoint file for ``arch`` (e.g. resnet20-12fca82f.th)."""
    folder = shared_path("weights", "cifar10")
    matches = sorted(folder.glob(f"{arch}-*.th"))
    if not matches:
        pytest.skip(f"no {arch} checkpoint in {folder}")
    return matches[0]


def cifar_sample() -> list[tuple[Path, int]]:
    """Every image of ../shared/data/cifar10-sample with its class index, in a stable order."""
    root = shared_path("data", "cifar10-sample")
    classes = shared_path("labels", "cifar10.txt").read_text().split()
    return [(image, index) for index, name in enumerate(classes) for image in sorted((root / name).glob("*.jpg"))]


@dataclass
class CountingProgress:
    """A ``models.progress.Progress`` that keeps, per step name, its announced total and unit and how much
    the work counted on it: what a bar would have shown."""

    steps: dict[str, tuple[float | None, str, float]] = field(default_factory=dict)

    @contextmanager
    def step(self, what: str, total: float | None = None, unit: str = "") -> Iterator[Callable[[float], None]]:
        counted: list[float] = []
        yield counted.append
        self.steps[what] = (total, unit, sum(counted))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return shared_path()


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository exported once per test session, as `python -m export` writes it.

    Holds the four real CIFAR-10 ResNets (resnet20/32/44/56, names as the architectures) and
    ``resnet18`` with random weights (an ImageNet-shaped model: 1000 classes, 224x224 input).
    """
    from export import export_model

    repo = tmp_path_factory.mktemp("model_repository")
    for arch in CIFAR_SAMPLE_ACCURACY:
        export_model(arch, str(cifar_checkpoint(arch)), model_dir=repo)
    export_model("resnet18", None, model_dir=repo)
    return repo

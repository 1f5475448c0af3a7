"""What a peer is: how to install it, start it on a model, build its request, and read its answer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks.loadgen import Body, bodies
from benchmarks.workload import BenchModel
from benchmarks.wrk import LUA_SCRIPT

#: Every peer's server process gets at most this long to load the model and answer its ready URL.
START_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class Variant:
    """One configuration of a peer, passed to its server as environment variables."""

    label: str
    env: dict[str, str]


#: onnxruntime's idle intra-op threads spin by default; the issue says the peer's do. Both are measured.
SPIN_ON = Variant("spin on", {"PEER_ORT_SPINNING": "1"})
SPIN_OFF = Variant("spin off", {"PEER_ORT_SPINNING": "0"})


@dataclass(frozen=True)
class Launch:
    """A peer server ready to be started: its command line, and where it answers."""

    argv: list[str]
    env: dict[str, str]
    ready_url: str
    infer_url: str
    cwd: Path
    timeout_s: float = START_TIMEOUT_S

    @classmethod
    def local(cls, argv: list[str], env: dict[str, str], workdir: Path, port: int, *, ready: str, infer: str) -> Launch:
        """A server answering on 127.0.0.1:``port``; ``ready`` and ``infer`` are paths there."""
        base = f"http://127.0.0.1:{port}"
        return cls(argv, env, f"{base}{ready}", f"{base}{infer}", cwd=workdir)


@dataclass(frozen=True)
class PeerRequest:
    """What wrk posts (one image), with the lua script that speaks the peer's protocol."""

    body: Body
    script: Path
    script_env: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # the same headers, for the Python check


class Peer(ABC):
    """A serving framework configured to serve the benchmark's ONNX file as its users would."""

    name: str
    variants: tuple[Variant, ...] = (SPIN_ON, SPIN_OFF)

    @abstractmethod
    def requirements(self) -> list[str]:
        """pip requirements of the peer's own venv."""

    @abstractmethod
    def launch(self, model: BenchModel, onnx: Path, python: Path, workdir: Path, variant: Variant) -> Launch:
        """The server command for ``onnx``; ``workdir`` is an empty folder it may use."""

    @abstractmethod
    def request(self, model: BenchModel, jpeg: tuple[str, bytes]) -> PeerRequest:
        """One single-image request for ``jpeg`` (filename, bytes)."""

    @abstractmethod
    def scores(self, response: httpx.Response) -> dict[int, float]:
        """Class index -> probability from the peer's answer (all classes, or its top-k)."""

    @abstractmethod
    def settings(self) -> str:
        """The peer's version, batching and protocol, in words."""

    def config(self, variant: Variant) -> str:
        """What the peer was configured with, in words (printed and stored with its figures)."""
        return f"{self.settings()}; onnxruntime defaults, {variant.label}"


class MultipartPeer(Peer, ABC):
    """A peer that takes the service's own multipart upload and answers its top-5 JSON (LitServe, TorchServe)."""

    def request(self, model: BenchModel, jpeg: tuple[str, bytes]) -> PeerRequest:
        (body,) = bodies([jpeg], 1)
        return PeerRequest(body, LUA_SCRIPT)

    def scores(self, response: httpx.Response) -> dict[int, float]:
        return {int(p["index"]): float(p["score"]) for p in response.json()["predictions"]}


def check_scores(scores: dict[int, float], expected: np.ndarray, *, tolerance: float = 1e-3) -> str | None:
    """None when the peer's answer matches in-process onnxruntime on the same crop, else why not."""
    if not scores:
        return "the answer holds no scores"
    best = int(np.argmax(expected))
    if best not in scores or max(scores, key=scores.__getitem__) != best:
        return f"top-1 differs: peer {max(scores, key=scores.__getitem__)}, onnxruntime {best}"
    worst = max(abs(score - float(expected[index])) for index, score in scores.items())
    if worst > tolerance:
        return f"scores differ from onnxruntime's by up to {worst:.2g} (tolerance {tolerance:g})"
    return None

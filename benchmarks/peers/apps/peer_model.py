"""What every peer server runs: the benchmark's ONNX file in onnxruntime and the service's preprocessing.

Imported by the peer apps inside their own virtual environments (``PYTHONPATH`` = the repository root,
so ``servable.images`` and ``servable.card`` are the very code the service runs). Nothing here
imports the benchmark package: the peer venvs have no httpx, no torch unless the peer needs it.

The session is opened the way a user of each peer would open it: ``ort.InferenceSession(path,
providers=["CPUExecutionProvider"])`` with onnxruntime's defaults (all optimisations, one intra-op
thread per physical core, idle threads spinning), unless ``PEER_ORT_SPINNING`` / ``PEER_ORT_THREADS``
say otherwise (the benchmark measures both spinning settings).
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from servable.card import INPUT_NAME, OUTPUT_NAME, ModelCard
from servable.images import preprocess_image


def _spinning_from_env() -> bool | None:
    value = os.environ.get("PEER_ORT_SPINNING", "").strip().lower()
    if value in ("", "default"):
        return None
    return value in ("1", "true", "on", "yes")


class PeerModel:
    """One onnxruntime session on the CPU plus the model card read from the file's metadata."""

    def __init__(self, path: str, *, spinning: bool | None = None, threads: int = 0) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if spinning is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.card = ModelCard.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        self.spinning = spinning
        self.threads = threads

    @classmethod
    def from_env(cls, path: str) -> PeerModel:
        return cls(path, spinning=_spinning_from_env(), threads=int(os.environ.get("PEER_ORT_THREADS", "0") or 0))

    def decode(self, data: bytes) -> np.ndarray:
        """(crop, crop, 3) uint8, exactly as the service decodes an upload."""
        return preprocess_image(data, self.card.preprocessing)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """(N, crop, crop, 3) uint8 -> (N, classes) float32 probabilities."""
        (probabilities,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: pixels})
        return probabilities

    def warm_up(self, max_batch_size: int) -> None:
        """One call per batch size a batcher may form, as the service's warm-up does."""
        side = self.card.preprocessing.crop_size
        for size in sorted({1, 2, 4, 8, 16, max_batch_size}):
            if size <= max_batch_size:
                self.run(np.zeros((size, side, side, 3), np.uint8))

    def describe(self) -> str:
        spin = {None: "default (on)", True: "on", False: "off"}[self.spinning]
        return f"onnxruntime {ort.__version__}, intra-op threads {self.threads or 'default'}, spinning {spin}"

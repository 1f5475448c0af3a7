"""The TorchServe peer's custom handler: onnxruntime on the ONNX file with the service's preprocessing.

A TorchServe handler module with one class (``initialize(context)`` once per worker, ``handle(data,
context)`` per batch), as TorchServe's custom-handler guide writes it. Each request row holds the
multipart field ``file`` (the service's own upload body); the answer is the top-5 as the service's.
``peer_config.json`` beside it (written by the benchmark into the archive) names the ONNX file, the
repository root (for ``servable.images``) and the onnxruntime settings of the variant.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

TOP_K = 5


class OnnxClassifierHandler:
    def __init__(self) -> None:
        self.model: Any = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, "peer_config.json")) as file:
            config = json.load(file)
        sys.path.insert(0, config["repo_root"])
        os.environ.update(config["env"])
        from peer_model import PeerModel  # an extra file of the archive, in model_dir

        self.model = PeerModel.from_env(config["model_path"])
        self.model.warm_up(int(config["max_batch_size"]))
        self.labels = self.model.card.labels
        self.initialized = True
        print(f"torchserve peer ready: {self.model.describe()}", flush=True)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        pixels = np.stack([self.model.decode(bytes(_image(row))) for row in data])
        outputs = self.model.run(pixels)
        answers = []
        for row in outputs:
            best = np.argsort(-row, kind="stable")[:TOP_K]
            answers.append({
                "predictions": [{"label": self.labels[i], "index": int(i), "score": float(row[i])} for i in best.tolist()]
            })
        return answers


def _image(row: dict[str, Any]) -> bytes | bytearray:
    """The upload: multipart field ``file``, or a raw body (``data``/``body``) as TorchServe names it."""
    for key in ("file", "data", "body"):
        if row.get(key) is not None:
            return row[key]
    raise ValueError(f"no image in the request (fields {sorted(row)})")

"""The LitServe peer: Lightning AI's LitServe (FastAPI/uvicorn front, inference worker process) on the ONNX file.

Written as LitServe's documentation shows it: a ``LitAPI`` with ``max_batch_size`` and a batch
timeout, ``decode_request`` reading the uploaded file (multipart field ``file``, the same body the
service gets) and decoding it with the service's ``preprocess_image``, ``batch`` stacking the crops,
``predict`` running onnxruntime, ``encode_response`` answering the top-5 like the service does.
Run inside the peer venv::

    PYTHONPATH=<repo> python benchmarks/peers/apps/litserve_app.py --model-path m.onnx --port 8000
"""

# No ``from __future__ import annotations``: LitServe reads decode_request's ``request`` annotation at
# run time to build its endpoint, and a string there is not ``Request``.
import argparse

import litserve as ls
import numpy as np
from peer_model import PeerModel
from starlette.requests import Request

TOP_K = 5


class OnnxClassifier(ls.LitAPI):
    def __init__(self, model_path: str, *, max_batch_size: int, batch_timeout_s: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout_s)
        self.model_path = model_path
        self.max_batch = max_batch_size

    def setup(self, device: str) -> None:
        self.model = PeerModel.from_env(self.model_path)
        self.labels = self.model.card.labels
        self.model.warm_up(self.max_batch)

    def decode_request(self, request: Request) -> np.ndarray:
        upload = request["file"]  # LitServe hands over the parsed form (files kept in memory)
        return self.model.decode(upload.file.read())

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.run(x)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict:
        best = np.argsort(-output, kind="stable")[:TOP_K]
        return {
            "predictions": [
                {"label": self.labels[i], "index": int(i), "score": float(output[i])} for i in best.tolist()
            ]
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-ms", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--fast-queue", action="store_true", help="ZeroMQ between the API server and the worker")
    args = parser.parse_args()
    api = OnnxClassifier(args.model_path, max_batch_size=args.max_batch_size, batch_timeout_s=args.batch_timeout_ms / 1000)
    server = ls.LitServer(
        api, accelerator="cpu", workers_per_device=args.workers, fast_queue=args.fast_queue, timeout=60,
    )
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()

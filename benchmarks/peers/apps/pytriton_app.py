"""The PyTriton peer: NVIDIA PyTriton (Triton's C++ HTTP frontend and dynamic batcher) serving the ONNX file.

Written as PyTriton's documentation shows it: a Python ``@batch`` inference function bound to Triton
with ``max_batch_size`` and a dynamic batcher queue delay. The input is a KServe V2 ``BYTES`` tensor
holding the encoded JPEG; the function decodes each image with the service's ``preprocess_image``,
stacks them and runs onnxruntime. Run inside the peer venv::

    PYTHONPATH=<repo> python benchmarks/peers/apps/pytriton_app.py --model-path m.onnx --name resnet20 \
        --http-port 8000 --grpc-port 8001 --metrics-port 8002
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
from peer_model import PeerModel
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--queue-delay-us", type=int, default=3000)
    parser.add_argument("--instances", type=int, default=1, help="inference callables bound (model instances)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    logging.basicConfig(level=logging.WARNING)
    model = PeerModel.from_env(args.model_path)
    model.warm_up(args.max_batch_size)

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        # image: (N, 1) object array of bytes, one encoded JPEG per request row.
        pixels = np.stack([model.decode(bytes(row[0])) for row in image])
        return {"probabilities": model.run(pixels)}

    config = TritonConfig(
        http_address="127.0.0.1", http_port=args.http_port,
        grpc_address="127.0.0.1", grpc_port=args.grpc_port,
        metrics_address="127.0.0.1", metrics_port=args.metrics_port,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=args.name,
            infer_func=[infer] * args.instances,
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us),
            ),
            strict=False,
        )
        print(f"pytriton peer ready: {model.describe()}, max_batch_size {args.max_batch_size}, "
              f"queue delay {args.queue_delay_us} us, instances {args.instances}", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()

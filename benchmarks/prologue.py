"""``python -m benchmarks.prologue``: what the order of the graph's first two nodes costs on the CPU.

The exporter casts the uint8 pixels to float before the NHWC->NCHW transpose, because TensorRT takes a
UINT8 input only when it feeds a Cast directly (NVIDIA/TensorRT#3985). The older order transposed the
uint8 tensor first (a quarter of the bytes to move). This times both orders of the same exported file,
interleaved, with onnxruntime's CPU provider, as CPU time per image (``benchmarks/README.md`` has the figures).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.report import table
from benchmarks.workload import DEFAULT_CACHE_DIR, bench_models, model_repository
from servable.card import INPUT_NAME, OUTPUT_NAME


class PrologueNotFound(ValueError):
    """The graph does not start with Cast(images) -> Transpose."""


def transpose_first(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose prologue is Transpose(uint8 images) -> Cast, the order before the change.

    Cast and Transpose commute, so the copy computes the same probabilities; only the tensor the
    transpose moves differs (uint8 instead of float32)."""
    swapped = onnx.ModelProto()
    swapped.CopyFrom(model)
    graph = swapped.graph
    cast = next((n for n in graph.node if n.op_type == "Cast" and list(n.input) == [INPUT_NAME]), None)
    if cast is None:
        raise PrologueNotFound(f"no Cast reads {INPUT_NAME!r} directly")
    transpose = next((n for n in graph.node if n.op_type == "Transpose" and list(n.input) == [cast.output[0]]), None)
    if transpose is None:
        raise PrologueNotFound("the Cast of the input is not followed by a Transpose")
    between, after = f"{transpose.output[0]}_uint8", transpose.output[0]
    stale = {cast.output[0], transpose.output[0]}
    kept_info = [info for info in graph.value_info if info.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    transpose.input[0], transpose.output[0] = INPUT_NAME, between
    cast.input[0], cast.output[0] = between, after
    others = [n for n in graph.node if n is not cast and n is not transpose]
    nodes = [onnx.NodeProto(), onnx.NodeProto()]
    nodes[0].CopyFrom(transpose)
    nodes[1].CopyFrom(cast)
    for node in others:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        nodes.append(copy)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(swapped)
    return swapped


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def compare(model: onnx.ModelProto, batch: int, *, rounds: int, seconds: float, threads: int) -> dict[str, float]:
    """Median CPU milliseconds per image of each order over ``rounds`` interleaved slices of ``seconds``
    (process CPU time: on a shared box it moves far less than images/s), their ratio, and images/s."""
    side = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    pixels = np.random.default_rng(0).integers(0, 256, (batch, side, side, 3), dtype=np.uint8)
    sessions = {"cast_first": _session(model, threads), "transpose_first": _session(transpose_first(model), threads)}
    outputs = {name: s.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0] for name, s in sessions.items()}
    cpu_ms: dict[str, list[float]] = {name: [] for name in sessions}
    rates: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            runs, started, cpu_started = 0, time.perf_counter(), time.process_time()
            while runs < 2 or time.perf_counter() - started < seconds:
                session.run([OUTPUT_NAME], {INPUT_NAME: pixels})
                runs += 1
            cpu_ms[name].append(1000 * (time.process_time() - cpu_started) / (batch * runs))
            rates[name].append(batch * runs / (time.perf_counter() - started))
    new, old = statistics.median(cpu_ms["cast_first"]), statistics.median(cpu_ms["transpose_first"])
    return {
        "batch": batch,
        "cast_first_cpu_ms_per_image": new,
        "transpose_first_cpu_ms_per_image": old,
        "cpu_ratio": new / old,
        "cast_first_images_per_s": statistics.median(rates["cast_first"]),
        "transpose_first_images_per_s": statistics.median(rates["transpose_first"]),
        "max_abs_diff": float(np.abs(outputs["cast_first"] - outputs["transpose_first"]).max()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prologue", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet50")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timed slice")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: CPU time is the work)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args(argv)
    rows = []
    for bench in bench_models([name.strip() for name in args.models.split(",")]):
        repo = model_repository(bench, args.cache_dir)
        (path,) = sorted(repo.glob("*/*/model.onnx"))[-1:]
        model = onnx.load(str(path))
        for batch in (int(b) for b in args.batches.split(",")):
            figures = compare(model, batch, rounds=args.rounds, seconds=args.seconds, threads=args.threads)
            rows.append([bench.name, batch, figures["transpose_first_cpu_ms_per_image"],
                         figures["cast_first_cpu_ms_per_image"], figures["cpu_ratio"],
                         figures["transpose_first_images_per_s"], figures["cast_first_images_per_s"],
                         f"{figures['max_abs_diff']:.1e}"])
            print(f"  {bench.name} batch {batch}: CPU per image, cast first / transpose first "
                  f"{figures['cpu_ratio']:.3f}", flush=True)
    print(table(["model", "batch", "transpose first cpu ms/img", "cast first cpu ms/img", "ratio",
                 "transpose first img/s", "cast first img/s", "max |diff|"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

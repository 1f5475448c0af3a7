"""ONNX classifiers made for the import tests: a small PyTorch CNN exported by torch.onnx.export, and
graphs written with the onnx helper API in whatever shape or type a refusal test needs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from export.presets import PreprocessingSpec

LABELS = ("apple", "bear", "cloud", "dune")
MEAN = (0.45, 0.4, 0.35)
STD = (0.25, 0.26, 0.27)

SPEC = PreprocessingSpec(resize=72, crop=64, interpolation="bicubic", mean=MEAN, std=STD)


class Tiny(nn.Module):
    """A small CNN classifier over 64x64 RGB: logits, or probabilities with ``softmax``."""

    def __init__(self, softmax: bool = False, pin_batch: bool = False) -> None:
        super().__init__()
        self.softmax, self.pin_batch = softmax, pin_batch
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, len(LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x)
        y = y.reshape(1, -1) if self.pin_batch else y.flatten(1)
        logits = self.head(y) * 40.0  # peaked: probability differences then mean something
        return logits.softmax(1) if self.softmax else logits


def torch_to_onnx(network: nn.Module, path: Path, *, side: int, dynamic: bool) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network.eval(),
            (torch.zeros(1, 3, side, side),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["pixel_values"],
            output_names=["scores"],
            dynamic_axes={"pixel_values": {0: "n"}, "scores": {0: "n"}} if dynamic else None,
        )
    return path


def make_files(folder: Path) -> dict[str, Path]:
    """The three Tiny variants (fixed batch with logits, probabilities, a batch pinned inside) and labels."""
    torch.manual_seed(0)
    made = {
        "fixed": torch_to_onnx(Tiny(), folder / "tiny-fixed.onnx", side=64, dynamic=False),
        "probs": torch_to_onnx(Tiny(softmax=True), folder / "tiny-probs.onnx", side=64, dynamic=True),
        "pinned": torch_to_onnx(Tiny(pin_batch=True), folder / "tiny-pinned.onnx", side=64, dynamic=False),
    }
    labels = folder / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    made["labels"] = labels
    return made


def helper_model(
    path: Path,
    *,
    inputs: list[tuple[str, int, list[object]]] | None = None,
    outputs: tuple[str, ...] = ("y",),
    output_shape: list[object] | None = None,
) -> Path:
    """GlobalAveragePool -> Flatten -> Gemm over a float NCHW input: shapes and types as asked."""
    inputs = inputs or [("x", TensorProto.FLOAT, ["n", 3, 32, 32])]
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), "w")
    nodes = [
        helper.make_node("GlobalAveragePool", [inputs[0][0]], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w"], [outputs[0]]),
    ]
    nodes += [helper.make_node("Identity", [outputs[0]], [extra]) for extra in outputs[1:]]
    graph = helper.make_graph(
        nodes,
        "helper",
        [helper.make_tensor_value_info(name, kind, shape) for name, kind, shape in inputs],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, output_shape or ["n", 4])
            for name in outputs
        ],
        [weight],
    )
    # ir_version 9: onnx 1.23 writes IR 14 by default, newer than onnxruntime 1.31 reads (13).
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path

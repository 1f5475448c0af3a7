"""Command line: ``python -m export ARCH --weights SPEC ...`` or ``python -m export --config models.toml``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from export.config import ExportRequest, load_config
from export.errors import ExportError
from export.exporter import ExportResult, export_model
from export.graph import DEFAULT_OPSET

MODEL_DIR_ENV = "RESNET_SERVE_MODEL_DIR"
RANDOM_WEIGHTS = "random"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a ResNet checkpoint to a verified, self-describing ONNX file"
        " in a model repository.",
    )
    parser.add_argument("arch", nargs="?", help="architecture name (e.g. resnet50, resnet20)")
    parser.add_argument(
        "--weights",
        metavar="SPEC",
        help="checkpoint: a path, https://...#sha256=HEX, torchvision:ARCH:TAG, cifar10:ARCH, hf:REPO;"
        f" '{RANDOM_WEIGHTS}' for seeded random weights (tests only)",
    )
    parser.add_argument(
        "--config", type=Path, metavar="TOML", help="export every [[model]] listed in this file"
    )
    parser.add_argument("--name", help="model name in the repository (default: the architecture)")
    parser.add_argument("--version", type=int, help="version number (default: the next free one)")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(os.environ.get(MODEL_DIR_ENV, "model_repository")),
        help=f"model repository root (default: ${MODEL_DIR_ENV} or ./model_repository)",
    )
    parser.add_argument("--labels", type=Path, metavar="FILE", help="class names, one per line")
    parser.add_argument(
        "--num-classes", type=int, help="classes of the head (default: checkpoint's or registry's)"
    )
    parser.add_argument("--fp16", action="store_true", help="half-precision weights and compute (for GPUs)")
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime vs PyTorch comparison")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        if args.arch or args.weights:
            parser.error("--config exports what the file lists: do not also give ARCH or --weights")
        return _export_config(args.config, args.model_dir)
    if not args.arch or not args.weights:
        parser.error(f"give ARCH and --weights SPEC (or --weights {RANDOM_WEIGHTS}), or --config FILE")
    request = ExportRequest(
        arch=args.arch,
        weights=None if args.weights == RANDOM_WEIGHTS else args.weights,
        name=args.name or args.arch,
        version=args.version,
        labels_file=args.labels,
        fp16=args.fp16,
        opset=args.opset,
        verify=not args.no_verify,
        num_classes=args.num_classes,
    )
    try:
        _run(request, args.model_dir)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(request: ExportRequest, model_dir: Path) -> ExportResult:
    return export_model(request.arch, request.weights, model_dir=model_dir, **request.as_kwargs())


def _export_config(config: Path, model_dir: Path) -> int:
    """Export every entry; one failure does not stop the others, but makes the exit status 1."""
    try:
        requests = load_config(config)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{config}: {len(requests)} model(s) -> {model_dir}")
    outcomes: list[str] = []
    failed = 0
    for request in requests:
        try:
            result = _run(request, model_dir)
        except ExportError as exc:
            failed += 1
            print(f"error: [{request.name}] {exc}", file=sys.stderr)
            outcomes.append(f"  {request.name:<24} FAILED")
            continue
        state = "unchanged" if result.skipped else "exported"
        outcomes.append(
            f"  {request.name:<24} version {result.version:<3} {state:<9} {result.size_bytes / 1e6:7.1f} MB"
        )
    print("summary:")
    print("\n".join(outcomes))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

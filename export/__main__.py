"""Command line: ``python -m export ARCH --weights SPEC ...``, ``python -m export --onnx FILE ...``
(import an existing ONNX classifier) or ``python -m export --config models.toml``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path

from export.config import ExportRequest, ImportRequest, load_config
from export.errors import ExportError
from export.graph import DEFAULT_OPSET
from export.int8 import Int8Options
from export.onnx_import import OUTPUT_KINDS
from export.presets import PRESETS, PreprocessingSpec
from export.progress import Terminal, terminal
from servable.layout import clear_export_failure, record_export_failure, scan_versions

MODEL_DIR_ENV = "RESNET_SERVE_MODEL_DIR"
RANDOM_WEIGHTS = "random"

#: The INT8 options after ``--int8``, one per :class:`Int8Options` field: flag -> (type, metavar, help).
_INT8_OPTIONS: dict[str, tuple[type, str, str]] = {
    "--calibration": (Path, "DIR", "images to calibrate on (required with --int8)"),
    "--calibration-count": (
        int,
        "N",
        "calibration images from DIR (default %(default)s; at most half of DIR without --holdout)",
    ),
    "--holdout": (Path, "DIR", "held-out images for the gate (default: DIR's images not calibrated on)"),
    "--holdout-count": (int, "N", "held-out images used (default 1000 small, 200 224px)"),
    "--min-agreement": (
        float,
        "F",
        "least top-1 agreement with fp32 on held-out images (default %(default)s); 0 = no gate (random weights)",
    ),
}
#: Their defaults are Int8Options' own.
_INT8_DEFAULTS = {field.name: field.default for field in fields(Int8Options) if field.default is not MISSING}


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
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="with --config: exit 0 when some models failed but at least one model of the config has a"
        " version to serve (`make serve`: offline, the embedded CIFAR model is served and the rest reported)",
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
        "--opset", type=int, help=f"ONNX opset (default {DEFAULT_OPSET}; an imported file keeps its own)"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime vs PyTorch comparison")
    parser.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress bars and no line as each long step starts: one result line per step"
        " (bars show only on a terminal; elsewhere each long step prints one line as it starts)",
    )

    int8 = parser.add_argument_group(
        "INT8", "static INT8 (onnxruntime QDQ, per-channel) with an accuracy gate; see docs/int8.md"
    )
    int8.add_argument(
        "--int8", action="store_true", help="quantize to INT8 (CPU serving: ~3x fp32 ResNet-50)"
    )
    for flag, (kind, metavar, help_text) in _INT8_OPTIONS.items():
        dest = flag[2:].replace("-", "_")
        int8.add_argument(flag, type=kind, metavar=metavar, default=_INT8_DEFAULTS.get(dest), help=help_text)

    imported = parser.add_argument_group(
        "ONNX import", "wrap an existing float32 NCHW ONNX classifier instead of ARCH/--weights"
    )
    imported.add_argument("--onnx", type=Path, metavar="FILE", help="the ONNX file to import")
    imported.add_argument(
        "--preset", choices=sorted(PRESETS), help="preprocessing preset (or give --mean and --std)"
    )
    imported.add_argument("--resize", type=int, metavar="PX", help="shorter side before the centre crop")
    imported.add_argument(
        "--crop", type=int, metavar="PX", help="centre crop (default: the model's input size)"
    )
    imported.add_argument("--crop-pct", type=float, metavar="F", help="resize = floor(crop / F), timm style")
    imported.add_argument("--interpolation", choices=["nearest", "bilinear", "bicubic"])
    imported.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="on 0..1 pixels")
    imported.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="on 0..1 pixels")
    imported.add_argument(
        "--outputs",
        choices=OUTPUT_KINDS,
        default="auto",
        help="what the model emits (auto: checked on real inputs); softmax is added only for logits",
    )
    imported.add_argument("--output", metavar="NAME", help="the output to serve when the model has several")
    return parser


_IMPORT_ONLY = ("preset", "resize", "crop", "crop_pct", "interpolation", "mean", "std", "output")
_INT8_ONLY = ("calibration", "holdout", "holdout_count")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    report = terminal(quiet=args.quiet)
    if args.config is not None:
        if args.arch or args.weights or args.onnx:
            parser.error("--config exports what the file lists: do not also give ARCH, --weights or --onnx")
        return _export_config(args.config, args.model_dir, report, allow_partial=args.allow_partial)
    given = [f"--{key.replace('_', '-')}" for key in _INT8_ONLY if getattr(args, key) is not None]
    if given and not args.int8:
        parser.error(f"{', '.join(given)} only apply with --int8")
    try:
        request = _import_request(parser, args) if args.onnx else _export_request(parser, args)
        request.run(args.model_dir, report.log, report.progress)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _int8_options(args: argparse.Namespace) -> Int8Options:
    return Int8Options(**{field.name: getattr(args, field.name) for field in fields(Int8Options)})


def _export_request(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ExportRequest:
    if not args.arch or not args.weights:
        parser.error(
            f"give ARCH and --weights SPEC (or --weights {RANDOM_WEIGHTS}), --onnx FILE, or --config FILE"
        )
    given = [f"--{key.replace('_', '-')}" for key in _IMPORT_ONLY if getattr(args, key) is not None]
    if given:
        parser.error(f"{', '.join(given)} only apply with --onnx (ARCH brings its own preprocessing)")
    return ExportRequest(
        arch=args.arch,
        weights=None if args.weights == RANDOM_WEIGHTS else args.weights,
        name=args.name or args.arch,
        version=args.version,
        labels_file=args.labels,
        fp16=args.fp16,
        opset=args.opset or DEFAULT_OPSET,
        verify=not args.no_verify,
        num_classes=args.num_classes,
        int8=args.int8,
        int8_options=_int8_options(args),
    )


def _import_request(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ImportRequest:
    clashes = [
        flag
        for flag, value in (
            ("ARCH", args.arch),
            ("--weights", args.weights),
            ("--fp16", args.fp16 or None),
            ("--num-classes", args.num_classes),
            ("--opset", args.opset),
            ("--no-verify", args.no_verify or None),
        )
        if value is not None
    ]
    if clashes:
        parser.error(f"--onnx imports a finished graph: {', '.join(clashes)} do not apply")
    return ImportRequest(
        onnx=args.onnx,
        name=args.name or args.onnx.stem,
        preprocessing=PreprocessingSpec(
            preset=args.preset,
            resize=args.resize,
            crop=args.crop,
            crop_pct=args.crop_pct,
            interpolation=args.interpolation,
            mean=tuple(args.mean) if args.mean else None,
            std=tuple(args.std) if args.std else None,
        ),
        version=args.version,
        labels_file=args.labels,
        outputs=args.outputs,
        output_name=args.output,
        int8=args.int8,
        int8_options=_int8_options(args),
    )


def _export_config(config: Path, model_dir: Path, report: Terminal, *, allow_partial: bool = False) -> int:
    """Export every entry; one failure does not stop the others, but makes the exit status 1 (with
    ``allow_partial``: only when no model of the config has a version to serve). Each failure is also
    recorded in the repository (``servable.layout.EXPORT_FAILURE_FILE``) for the service to report."""
    try:
        requests = load_config(config)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report.log(f"{config}: {len(requests)} model(s) -> {model_dir}")
    outcomes: list[str] = []
    failed: list[str] = []
    for request in requests:
        try:
            result = request.run(model_dir, report.log, report.progress)
        except ExportError as exc:
            failed.append(request.name)
            print(f"error: [{request.name}] {exc}", file=sys.stderr)
            try:
                record_export_failure(model_dir, request.name, str(exc))
            except OSError as write_error:  # often why the export failed too (a full or read-only disk)
                print(f"warning: [{request.name}] could not record the failure: {write_error}", file=sys.stderr)
            outcomes.append(f"  {request.name:<24} FAILED (not exported: the error above says why and what to do)")
            continue
        clear_export_failure(model_dir, request.name)
        state = "unchanged" if result.skipped else "exported"
        outcomes.append(
            f"  {request.name:<24} version {result.version:<3} {state:<9} {result.size_bytes / 1e6:7.1f} MB"
        )
    report.log("summary:")
    report.log("\n".join(outcomes))
    if not failed:
        return 0
    servable = [r.name for r in requests if scan_versions(model_dir / r.name, r.name)]
    if allow_partial and servable:
        report.log(f"serving {', '.join(servable)} without {', '.join(failed)} (reported in /models and /health/ready)")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())

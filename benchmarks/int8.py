"""INT8 against fp32: CIFAR accuracy and agreement (onnxruntime and HTTP), raw CPU speed by batch.

``python -m benchmarks int8 [--quick]`` (opt-in: not in ``all``), or on its own with finer switches:
``python -m benchmarks.int8 [--quick] [--skip-accuracy] [--skip-http] [--skip-speed] [--runs N]``.

The ``raw`` and ``service`` suites measure the speed of the two benchmark models' INT8 files; this suite
measures what an INT8 file costs in accuracy, on all four CIFAR ResNets with the ../shared weights
(``--quick``: resnet20 only). Each is exported in fp32 and INT8 as the other suites export theirs
(:func:`benchmarks.workload.model_repository`: INT8 calibrated on the first 300 of the 1,000-image
sample in the exporter's class-interleaved order, gated on the other 700; reused from the cache while
nothing changed), plus ResNet-50 with seeded random weights (calibrated on the photos, gate off: speed
only). Then:

* accuracy on all 1,000 images and on the 700 held out, and top-1 agreement with the fp32 file, through
  onnxruntime directly and through a real ``python -m service`` (``POST /predict``, 25 images a request);
* raw images/s at each batch size with the service's own session (:func:`benchmarks.raw.open_model`):
  batch / the fastest of N calls, fp32 and INT8 calls alternating one by one, so that on a shared box
  both precisions see the same load, and the fastest call is the one least disturbed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from benchmarks.peers.runner import onnx_file
from benchmarks.raw import crops, open_model
from benchmarks.server import free_port, python, running_server
from benchmarks.workload import (
    DEFAULT_CACHE_DIR,
    REPO_ROOT,
    BenchModel,
    MissingSharedData,
    cifar_checkpoint,
    model_repository,
    shared_path,
)
from servable.card import INPUT_NAME, OUTPUT_NAME, ModelCard
from servable.images import preprocess_image
from service.settings import Settings

#: Top-1 % on the CIFAR-10 test set that each checkpoint's publisher reports (the README's table).
PUBLISHED_ACCURACY = {"resnet20": 80.4, "resnet32": 84.0, "resnet44": 82.1, "resnet56": 82.5}
QUICK_ARCHS = ("resnet20",)
#: The exporter's default: the first 300 sample JPEGs calibrate, the rest are the held-out gate.
CALIBRATION_COUNT = 300
REQUEST_IMAGES = 25
BATCHES = (1, 2, 4, 8, 16, 32)
QUICK_BATCHES = (1, 8, 32)
RUNS, QUICK_RUNS = 9, 2

Log = Callable[[str], None]


def pair(arch: str) -> tuple[BenchModel, BenchModel]:
    """(fp32, INT8) of one architecture, named as the other suites name theirs (``resnet20``, ``resnet20-int8``)."""
    if arch in PUBLISHED_ACCURACY:
        weights = cifar_checkpoint(arch)
        return BenchModel(arch, arch, weights, "cifar"), BenchModel(f"{arch}-int8", arch, weights, "cifar", int8=True)
    return BenchModel(arch, arch, None, "imagenet"), BenchModel(f"{arch}-int8", arch, None, "imagenet", int8=True)


def run(
    cache_dir: Path, *, quick: bool, log: Log = print, accuracy: bool = True, http: bool = True,
    speed: bool = True, runs: int | None = None,
) -> dict[str, Any]:
    """The accuracy and speed tables (each None when skipped), with what they were measured with."""
    archs = QUICK_ARCHS if quick else tuple(PUBLISHED_ACCURACY)
    speed_archs = QUICK_ARCHS if quick else ("resnet50", "resnet20")
    wanted = {*(archs if accuracy else ()), *(speed_archs if speed else ())}
    repos: dict[str, Path] = {}
    for arch in sorted(wanted):
        for model in pair(arch):
            log(f"int8: exporting {model.name} into {cache_dir} (skipped when already there) ...")
            repos[model.name] = model_repository(model, cache_dir)
    calls = runs or (QUICK_RUNS if quick else RUNS)
    return {
        "accuracy": accuracy_table(archs, repos, http=http, log=log) if accuracy else None,
        "speed": speed_table(speed_archs, repos, calls, QUICK_BATCHES if quick else BATCHES, log=log) if speed else None,
        "speed_runs": calls,
        "intra_op_threads": Settings(model_dir=cache_dir).inference_threads,
    }


def cifar_files() -> tuple[list[Path], np.ndarray]:
    """The sample in the exporter's order (calibration = the first 300) and the true classes."""
    from export.calibration import list_images  # the exporter's order; export loads torch, so not for --help

    classes = shared_path("labels", "cifar10.txt").read_text().split()
    files = list_images(shared_path("data", "cifar10-sample"), "CIFAR sample")
    return files, np.array([classes.index(path.parent.name) for path in files])


def accuracy_table(archs: Sequence[str], repos: dict[str, Path], *, http: bool, log: Log) -> list[dict[str, Any]]:
    """One row per architecture and path (onnxruntime, HTTP): accuracy, held-out accuracy, agreement, gate."""
    files, truth = cifar_files()
    held = slice(CALIBRATION_COUNT, None)
    files_of = {model.name: onnx_file(repos[model.name], model) for arch in archs for model in pair(arch)}
    top1 = {(name, "onnxruntime"): _session_top1(path, files) for name, path in files_of.items()}
    if http:
        with serve(files_of) as url:
            for name in files_of:
                log(f"int8: {name} through POST /predict ...")
                top1[(name, "HTTP")] = http_top1(url, name, files)
    rows = []
    for arch in archs:
        gate = _card(files_of[f"{arch}-int8"]).export.quantization  # an INT8 file carries its gate's figures
        for via in ("onnxruntime", "HTTP") if http else ("onnxruntime",):
            fp32, int8 = top1[(arch, via)], top1[(f"{arch}-int8", via)]
            rows.append({
                "model": arch, "via": via, "published": PUBLISHED_ACCURACY[arch],
                "fp32_acc": _percent(fp32 == truth), "int8_acc": _percent(int8 == truth),
                "fp32_acc_held": _percent(fp32[held] == truth[held]), "int8_acc_held": _percent(int8[held] == truth[held]),
                "agree_all": _percent(fp32 == int8), "agree_held": _percent(fp32[held] == int8[held]),
                "gate_vs_pytorch": 100 * gate.top1_agreement if gate else None,
            })
    return rows


def _percent(hits: np.ndarray) -> float:
    return 100 * float(np.mean(hits))


def _session_top1(path: Path, files: list[Path]) -> np.ndarray:
    """Top-1 of each file through onnxruntime directly, cropped as the file's card says."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    card = ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)
    pixels = np.stack([preprocess_image(p.read_bytes(), card.preprocessing) for p in files])
    rows = [session.run([OUTPUT_NAME], {INPUT_NAME: pixels[i : i + 250]})[0] for i in range(0, len(pixels), 250)]
    return np.concatenate(rows).argmax(1)


def _card(path: Path) -> ModelCard:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)


@contextmanager
def serve(files: dict[str, Path]) -> Iterator[str]:
    """A real ``python -m service`` over one repository linking every file (as version 1 of its name)."""
    from benchmarks.service_bench import service_env

    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        root = Path(tmp)
        for name, path in files.items():
            (root / name / "1").mkdir(parents=True)
            (root / name / "1" / "model.onnx").symlink_to(path.resolve())
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with running_server([python(), "-m", "service"], service_env(root, port), f"{url}/health/ready",
                            log_path=root.with_name(f"{root.name}.log")):
            yield url


def http_top1(url: str, name: str, files: list[Path]) -> np.ndarray:
    classes = shared_path("labels", "cifar10.txt").read_text().split()
    answers: list[int] = []
    with httpx.Client(timeout=60) as client:
        for start in range(0, len(files), REQUEST_IMAGES):
            chunk = files[start : start + REQUEST_IMAGES]
            response = client.post(
                f"{url}/predict?model={name}&top_k=1",
                files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in chunk],
            )
            response.raise_for_status()
            answers += [classes.index(r["predictions"][0]["label"]) for r in response.json()["results"]]
    return np.array(answers)


def speed_table(
    archs: Sequence[str], repos: dict[str, Path], runs: int, batches: Sequence[int], *, log: Log,
) -> list[dict[str, Any]]:
    """images/s = batch / fastest of ``runs`` calls (x5 for the CIFAR nets); fp32 and INT8 alternate call by call."""
    rows: list[dict[str, Any]] = []
    for arch in archs:
        fp32_model, int8_model = pair(arch)
        loaded = {"fp32": open_model(repos[fp32_model.name], max_batch_size=32),
                  "int8": open_model(repos[int8_model.name], max_batch_size=32)}
        images = crops(fp32_model, loaded["fp32"])
        calls = runs if fp32_model.kind == "imagenet" else runs * 5
        for batch in batches:
            data = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
            fastest = {precision: float("inf") for precision in loaded}
            least_cpu = {precision: float("inf") for precision in loaded}
            for session in loaded.values():
                session.run(data)  # first call at a new shape: not timed
            for _ in range(calls):
                for precision, session in loaded.items():
                    begun, cpu = time.perf_counter(), time.process_time()
                    session.run(data)
                    fastest[precision] = min(fastest[precision], time.perf_counter() - begun)
                    least_cpu[precision] = min(least_cpu[precision], time.process_time() - cpu)
            fp32, int8 = batch / fastest["fp32"], batch / fastest["int8"]
            # CPU time (threads sleep when idle: spinning is off) is what other jobs disturb least.
            rows.append({"model": arch, "batch": batch, "fp32": fp32, "int8": int8, "ratio": int8 / fp32,
                         "cpu_ms_fp32": 1000 * least_cpu["fp32"] / batch, "cpu_ms_int8": 1000 * least_cpu["int8"] / batch})
            log(f"int8: raw {arch} batch {batch:>2}: fp32 {fp32:8.1f}, int8 {int8:8.1f} img/s")
        mine = [row for row in rows if row["model"] == arch]
        top = {p: max(row[p] for row in mine) for p in ("fp32", "int8")}
        rows.append({"model": arch, "batch": "best", "fp32": top["fp32"], "int8": top["int8"],
                     "ratio": top["int8"] / top["fp32"], "cpu_ms_fp32": None, "cpu_ms_int8": None})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet20 only, three batch sizes, fewer calls")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-http", action="store_true", help="accuracy through onnxruntime only")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--runs", type=int, default=None, help=f"timed calls per batch size (default {RUNS}, "
                        f"--quick {QUICK_RUNS}; x5 for resnet20)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="exported models are kept here")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default bench-results/int8-<time>.json)")
    args = parser.parse_args(argv)
    from benchmarks import report

    started = time.perf_counter()
    try:
        results = {"int8": run(args.cache_dir, quick=args.quick, accuracy=not args.skip_accuracy,
                               http=not args.skip_http, speed=not args.skip_speed, runs=args.runs)}
    except MissingSharedData as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output = args.output or REPO_ROOT / "bench-results" / f"int8-{datetime.now():%Y%m%d-%H%M%S}.json"
    report.write_json(results, output)
    print("\n".join(report.int8_tables(results["int8"])))
    print(f"\nwrote {output} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure INT8 against fp32: CIFAR accuracy and agreement (onnxruntime and HTTP), raw CPU speed by batch.

``python -m benchmarks.int8 [--out DIR] [--skip-http] [--skip-speed] [--skip-accuracy] [--runs N]``

A measuring script, not part of the exporter (nothing in export/ imports it; it belongs with
benchmarks/ once the benchmark suite grows INT8 rows). It exports, into ``--out``, the four CIFAR
ResNets with the ../shared weights in fp32 and INT8 (calibrated on the first 300 of the 1,000-image
sample in class-interleaved order, gated on the other 700) and ResNet-50 with seeded random weights in
fp32 and INT8 (calibrated on 4 of the 8 photos, ``--min-agreement 0``: random weights, speed only), then:

* accuracy on all 1,000 images and on the 700 held out, and top-1 agreement with the fp32 file, through
  onnxruntime directly and through a real ``python -m service`` (POST /predict, 25 images a request);
* raw images/s at batch 1..32 with the service's own session builder (``service.engine.runtime.load_model``,
  as benchmarks/raw.py does): batch / the fastest of N calls, fp32 and INT8 calls alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export import export_model
from export.calibration import list_images
from export.verify import shared_data_dir
from servable.card import INPUT_NAME, OUTPUT_NAME
from servable.images import preprocess_image
from servable.preprocessing import Preprocessing
from service.engine.repository import scan_repository
from service.engine.runtime import LoadedModel, load_model
from service.settings import Settings

CIFAR = {"resnet20": 80.4, "resnet32": 84.0, "resnet44": 82.1, "resnet56": 82.5}
BATCHES = (1, 2, 4, 8, 16, 32)
CALIBRATION_COUNT = 300
REQUEST_IMAGES = 25


def quiet(_line: str) -> None:
    """Export log sink."""


def shared() -> Path:
    data = shared_data_dir()
    if data is None:
        sys.exit("../shared/data is absent: this script measures on the real CIFAR sample and photos")
    return data.parent


def export_all(out: Path) -> dict[str, Path]:
    """fp32 and INT8 repositories, one model each (so ``scan_repository`` finds exactly one)."""
    root = shared()
    sample = root / "data" / "cifar10-sample"
    photos = root / "data" / "photos"
    repos: dict[str, Path] = {}
    for arch in CIFAR:
        weights = str(next((root / "weights" / "cifar10").glob(f"{arch}-*.th")))
        for precision in ("fp32", "int8"):
            repo = out / f"{arch}-{precision}"
            int8 = precision == "int8"
            result = export_model(
                arch,
                weights,
                model_dir=repo,
                name=f"{arch}-{precision}",
                int8=int8,
                calibration=sample if int8 else None,
                calibration_count=CALIBRATION_COUNT,
                log=quiet,
            )
            repos[result.name] = repo
    for precision in ("fp32", "int8"):
        repo = out / f"resnet50-{precision}"
        int8 = precision == "int8"
        result = export_model(
            "resnet50",
            None,
            model_dir=repo,
            name=f"resnet50-{precision}",
            int8=int8,
            calibration=photos if int8 else None,
            min_agreement=0.0,
            log=quiet,
        )
        repos[result.name] = repo
    return repos


def cifar_files() -> tuple[list[Path], np.ndarray]:
    """The sample in the exporter's order (calibration = the first 300) and the true classes."""
    root = shared()
    classes = (root / "labels" / "cifar10.txt").read_text().split()
    files = list_images(root / "data" / "cifar10-sample", "CIFAR sample")
    return files, np.array([classes.index(path.parent.name) for path in files])


def onnx_top1(path: Path, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = [
        session.run([OUTPUT_NAME], {INPUT_NAME: pixels[i : i + 250]})[0] for i in range(0, len(pixels), 250)
    ]
    return np.concatenate(rows).argmax(1)


def accuracy_table(repos: dict[str, Path], http: bool) -> list[dict[str, object]]:
    files, truth = cifar_files()
    pixels = np.stack(
        [preprocess_image(p.read_bytes(), Preprocessing(resize_size=32, crop_size=32)) for p in files]
    )
    held = slice(CALIBRATION_COUNT, None)
    top1: dict[tuple[str, str], np.ndarray] = {}
    for name, repo in repos.items():
        if name.startswith("resnet50"):
            continue
        top1[(name, "onnxruntime")] = onnx_top1(repo / name / "1" / "model.onnx", pixels)
    if http:
        cifar_repos = {name: repo for name, repo in repos.items() if not name.startswith("resnet50")}
        with serve(cifar_repos) as url:
            for name in cifar_repos:
                top1[(name, "HTTP")] = http_top1(url, name, files)
    rows = []
    for arch, readme in CIFAR.items():
        for via in ("onnxruntime", "HTTP") if http else ("onnxruntime",):
            fp32, int8 = top1[(f"{arch}-fp32", via)], top1[(f"{arch}-int8", via)]
            card = json.loads(
                _metadata(repos[f"{arch}-int8"] / f"{arch}-int8" / "1" / "model.onnx")["export"]
            )
            rows.append(
                {
                    "model": arch,
                    "via": via,
                    "readme": readme,
                    "fp32_acc": 100 * float(np.mean(fp32 == truth)),
                    "int8_acc": 100 * float(np.mean(int8 == truth)),
                    "fp32_acc_held": 100 * float(np.mean(fp32[held] == truth[held])),
                    "int8_acc_held": 100 * float(np.mean(int8[held] == truth[held])),
                    "agree_all": 100 * float(np.mean(fp32 == int8)),
                    "agree_held": 100 * float(np.mean(fp32[held] == int8[held])),
                    "gate_vs_pytorch": 100 * card["quantization"]["top1_agreement"],
                }
            )
    return rows


def _metadata(path: Path) -> dict[str, str]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.get_modelmeta().custom_metadata_map


@contextmanager
def serve(repos: dict[str, Path]) -> Iterator[str]:
    """A real ``python -m service`` over one repository linking every model (version 1)."""
    with tempfile.TemporaryDirectory(prefix="measure-int8-") as tmp:
        root = Path(tmp)
        for name, repo in repos.items():
            (root / name / "1").mkdir(parents=True)
            (root / name / "1" / "model.onnx").symlink_to((repo / name / "1" / "model.onnx").resolve())
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESNET_SERVE_")}
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "--model-dir",
                str(root),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            import httpx

            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            else:
                raise RuntimeError("service not ready in 180 s")
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def http_top1(url: str, name: str, files: list[Path]) -> np.ndarray:
    import httpx

    classes = (shared() / "labels" / "cifar10.txt").read_text().split()
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


def speed_table(repos: dict[str, Path], runs: int) -> list[dict[str, object]]:
    """images/s = batch / fastest of ``runs`` calls; fp32 and INT8 calls alternate one by one.

    On a shared 2-core box other jobs come and go within seconds; alternating single calls exposes
    both precisions to the same load, and the fastest call is the one least disturbed.
    """
    photos = sorted(p for p in (shared() / "data" / "photos").glob("*.jpg"))
    rows = []
    for model in ("resnet50", "resnet20"):
        loaded = {p: _open(repos[f"{model}-{p}"]) for p in ("fp32", "int8")}
        card = loaded["fp32"].card.preprocessing
        images = np.stack([preprocess_image(p.read_bytes(), card) for p in photos])
        best: dict[tuple[str, int], float] = {}
        for batch in BATCHES:
            data = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
            fastest = {precision: float("inf") for precision in loaded}
            least_cpu = {precision: float("inf") for precision in loaded}
            for precision, session in loaded.items():
                session.run(data)  # first call at a new shape: not timed
            calls = runs if model == "resnet50" else runs * 5
            for _ in range(calls):
                for precision, session in loaded.items():
                    begun, cpu = time.perf_counter(), time.process_time()
                    session.run(data)
                    fastest[precision] = min(fastest[precision], time.perf_counter() - begun)
                    least_cpu[precision] = min(least_cpu[precision], time.process_time() - cpu)
            for precision in loaded:
                best[(precision, batch)] = batch / fastest[precision]
            fp32, int8 = best[("fp32", batch)], best[("int8", batch)]
            rows.append(
                {
                    "model": model,
                    "batch": batch,
                    "fp32": fp32,
                    "int8": int8,
                    "ratio": int8 / fp32,
                    # CPU time (threads sleep when idle: spinning is off) is what other jobs disturb least.
                    "cpu_ms_fp32": 1000 * least_cpu["fp32"] / batch,
                    "cpu_ms_int8": 1000 * least_cpu["int8"] / batch,
                }
            )
        top = {p: max(best[(p, b)] for b in BATCHES) for p in loaded}
        rows.append(
            {
                "model": model,
                "batch": "best",
                "fp32": top["fp32"],
                "int8": top["int8"],
                "ratio": top["int8"] / top["fp32"],
            }
        )
    return rows


def _open(repo: Path) -> LoadedModel:
    (folder,) = scan_repository(repo).values()
    entry = folder.versions[max(folder.versions)]
    return load_model(entry, Settings(model_dir=repo, max_batch_size=32, warmup=False, providers="auto"))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/int8"), help="model repositories")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--runs", type=int, default=9, help="timed calls per batch size (x5 for resnet20)")
    args = parser.parse_args()
    started = time.perf_counter()
    repos = export_all(args.out)
    print(f"exported into {args.out} in {time.perf_counter() - started:.0f} s")
    if not args.skip_accuracy:
        print("\nCIFAR-10 sample, top-1 %: all 1,000 images / the 700 held out (not calibrated on)")
        print(
            f"{'model':<9} {'via':<12} {'README':>6} {'fp32':>6} {'int8':>6} {'fp32h':>6} {'int8h':>6}"
            f" {'agree':>6} {'agreeh':>6} {'gate':>6}"
        )
        for row in accuracy_table(repos, http=not args.skip_http):
            print(
                f"{row['model']:<9} {row['via']:<12} {row['readme']:>6.1f} {row['fp32_acc']:>6.1f}"
                f" {row['int8_acc']:>6.1f}"
                f" {row['fp32_acc_held']:>6.1f} {row['int8_acc_held']:>6.1f} {row['agree_all']:>6.1f}"
                f" {row['agree_held']:>6.1f} {row['gate_vs_pytorch']:>6.1f}"
            )
    if not args.skip_speed:
        threads = Settings(model_dir=args.out).inference_threads
        print(
            f"\nraw onnxruntime CPU images/s (service session options, {threads} threads),"
            f" fastest of {args.runs} alternating calls"
        )
        print(
            f"{'model':<9} {'batch':>5} {'fp32':>9} {'int8':>9} {'x':>6}"
            f"  {'cpu ms/img fp32':>15} {'int8':>6} {'x':>6}"
        )
        for row in speed_table(repos, args.runs):
            print(
                f"{row['model']:<9} {row['batch']!s:>5} {row['fp32']:>9.1f} {row['int8']:>9.1f}"
                f" {row['ratio']:>6.2f}"
                + (
                    f"  {row['cpu_ms_fp32']:>15.2f} {row['cpu_ms_int8']:>6.2f}"
                    f" {row['cpu_ms_fp32'] / row['cpu_ms_int8']:>6.2f}"
                    if "cpu_ms_fp32" in row
                    else ""
                )
            )


if __name__ == "__main__":
    main()

"""Triton's native ``perf_analyzer`` as the load client for the KServe V2 doors (gRPC, and REST to compare).

wrk speaks HTTP/1.1 only, and a Python gRPC client would eat the two cores the service runs on; perf_analyzer
is C++ and costs about 0.6 s of CPU for a 6 s run at c=32 (measured here). It comes only from package
registries: the ``tritonclient==2.50.0`` wheel ships the binary (later releases dropped it), which links
``libcudart.so.12`` even for CPU-side use (the ``nvidia-cuda-runtime-cu12`` wheel, found through
``LD_LIBRARY_PATH``) and ``libb64.so.0d`` (Debian's ``libb64-0d``). It lives in a venv of its own under
``<cache_dir>/perf-analyzer/venv``, never in the project's environment.
"""

from __future__ import annotations

import base64
import csv
import glob
import io
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from benchmarks.loadgen import client_row, failed_row
from benchmarks.peers.venv import PeerUnavailable, ensure, run_checked

#: The last tritonclient wheel on PyPI with ``bin/perf_analyzer``; the runtime pin is the one tried here.
REQUIREMENTS = ("tritonclient==2.50.0", "nvidia-cuda-runtime-cu12==12.9.79")
DEBIAN_PACKAGE = "libb64-0d"
INSTALL_TIMEOUT_S = 600
#: perf_analyzer needs three windows before it calls a measurement stable, and each window lasts about
#: 1.2 x ``-p`` (``-p 2000`` gave 7.2 s of measured requests).
WINDOWS = 3
WINDOW_STRETCH = 1.2
#: Stability is not what we ask of it (the machine is shared): so large a threshold makes the first three
#: windows stable whatever the noise, so a run takes ``seconds`` and never loops until --max-trials.
STABILITY_PERCENT = 100_000

Protocol = Literal["grpc", "http"]


def venv_dir(cache_dir: Path) -> Path:
    return cache_dir / "perf-analyzer" / "venv"


def library_path(binary: Path) -> str:
    """``LD_LIBRARY_PATH`` with the venv's ``libcudart.so.12`` first (the binary will not load without it)."""
    venv = binary.parent.parent
    found = sorted(glob.glob(str(venv / "lib" / "python*" / "site-packages" / "nvidia" / "cuda_runtime" / "lib")))
    return os.pathsep.join([*found, *filter(None, [os.environ.get("LD_LIBRARY_PATH")])])


def _environment(binary: Path) -> dict[str, str]:
    return {**os.environ, "LD_LIBRARY_PATH": library_path(binary)}


def ensure_installed(cache_dir: Path, log: Callable[[str], None] = print) -> Path | str:
    """The perf_analyzer binary, installed on first use; or why it is not available (never raises for that,
    so ``python -m benchmarks`` prints the reason and measures the rest)."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"not available: the tritonclient wheel's perf_analyzer is linux x86_64 only (here {sys.platform} " \
               f"{platform.machine()})"
    venv = venv_dir(cache_dir)
    binary = venv / "bin" / "perf_analyzer"
    try:
        # --no-deps: only the binary is wanted, not tritonclient's Python side (numpy, grpcio, ...).
        ensure(venv, ["--no-deps", *REQUIREMENTS], log=log, timeout_s=INSTALL_TIMEOUT_S)
        if not binary.exists():
            return f"not available: {REQUIREMENTS[0]} installed no {binary}"
        missing = _missing_libraries(binary)
        if any("libb64" in name for name in missing):
            _install_libb64(log)
            missing = _missing_libraries(binary)
        if missing:
            return f"not available: {binary} cannot load {', '.join(missing)}"
        run_checked([str(binary), "--version"], what="perf_analyzer --version", env=_environment(binary), timeout_s=30)
    except PeerUnavailable as exc:
        return f"not available: {exc}"
    return binary


def _missing_libraries(binary: Path) -> list[str]:
    """Shared libraries the dynamic loader cannot find for ``binary`` (``ldd``'s "not found" lines)."""
    if shutil.which("ldd") is None:
        return []  # the --version probe will tell
    output = run_checked(["ldd", str(binary)], what="ldd perf_analyzer", env=_environment(binary), timeout_s=30)
    return [line.split("=>")[0].strip() for line in output.splitlines() if "not found" in line]


def _install_libb64(log: Callable[[str], None]) -> None:
    """Debian's libb64 through apt, the one system package perf_analyzer needs (root only)."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise PeerUnavailable(f"perf_analyzer needs libb64.so.0d: run `apt-get install -y {DEBIAN_PACKAGE}` as root")
    log(f"  apt-get install -y {DEBIAN_PACKAGE} (perf_analyzer links libb64)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", DEBIAN_PACKAGE]
    try:
        run_checked(install, what=f"apt-get install {DEBIAN_PACKAGE}", env=env, timeout_s=INSTALL_TIMEOUT_S)
    except PeerUnavailable:  # a fresh image has no package lists yet
        run_checked(["apt-get", "update"], what="apt-get update", env=env, timeout_s=INSTALL_TIMEOUT_S)
        run_checked(install, what=f"apt-get install {DEBIAN_PACKAGE}", env=env, timeout_s=INSTALL_TIMEOUT_S)


def input_data(input_name: str, jpeg: bytes) -> dict[str, object]:
    """perf_analyzer's ``--input-data`` JSON for one BYTES element.

    ``b64`` content is the tensor's raw wire bytes, so a BYTES element carries its own 4-byte little-endian
    length first (without it the service answers 400: "element 0 claims 3774863615 bytes", the JPEG magic).
    """
    wire = struct.pack("<I", len(jpeg)) + jpeg
    return {"data": [{input_name: {"b64": base64.b64encode(wire).decode("ascii")}}]}


def command(
    binary: Path, *, url: str, protocol: Protocol, model: str, input_file: Path, csv_file: Path, concurrency: int,
    seconds: float, input_name: str = "image_bytes",
) -> list[str]:
    """The argv: a closed loop of ``concurrency`` synchronous workers, each request one [1, 1] BYTES tensor."""
    window_ms = max(200, round(seconds * 1000 / (WINDOWS * WINDOW_STRETCH)))
    return [
        str(binary), "-m", model, "-u", url.removeprefix("http://"), "-i", protocol,
        "-b", "1", "--shape", f"{input_name}:1", "--input-data", str(input_file),
        # --sync: one thread per request in flight, like wrk's connections (async was no faster: 423
        # against 470 infer/s at c=32).
        "--sync", "--concurrency-range", f"{concurrency}:{concurrency}",
        "--measurement-mode", "time_windows", "-p", str(window_ms),
        "--max-trials", str(WINDOWS), "-s", str(STABILITY_PERCENT), "--percentile=99",
        "-f", str(csv_file),
    ]


def run(
    binary: Path, *, url: str, protocol: Protocol, model: str, jpeg: bytes, concurrency: int, seconds: float,
    input_name: str = "image_bytes",
) -> dict[str, object]:
    """One closed-loop phase of about ``seconds`` against ``model`` (the served name, e.g. ``resnet20-encoded``),
    as a row shaped like :func:`benchmarks.wrk.run`'s.

    perf_analyzer stops at the first failed request, so a run either has no errors or no figures: a failure
    is a row with zero throughput, NaN latencies and ``errors={"perf_analyzer": why}``.
    """
    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol must be 'grpc' or 'http', not {protocol!r}")
    scenario = f"perf_analyzer {protocol} c={concurrency}"
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as tmp:
        input_file, csv_file = Path(tmp) / "input.json", Path(tmp) / "report.csv"
        input_file.write_text(json.dumps(input_data(input_name, jpeg)))
        argv = command(binary, url=url, protocol=protocol, model=model, input_file=input_file, csv_file=csv_file,
                       concurrency=concurrency, seconds=seconds, input_name=input_name)
        try:
            completed = subprocess.run(argv, capture_output=True, text=True, timeout=seconds * 3 + 60, check=False,
                                       env=_environment(binary))
        except subprocess.TimeoutExpired:
            return _failed(scenario, f"no result after {seconds * 3 + 60:.0f} s")
        except OSError as exc:
            return _failed(scenario, str(exc))
        output = completed.stdout + completed.stderr
        report = csv_file.read_text() if csv_file.exists() else ""
    if completed.returncode != 0 or not report:
        return _failed(scenario, f"exit {completed.returncode}: {_reason(output)}")
    try:
        return _row(scenario, report, output)
    except (KeyError, ValueError, StopIteration) as exc:
        return _failed(scenario, f"unreadable report ({exc!r}): {report[:200]!r}")


def _row(scenario: str, report: str, output: str) -> dict[str, object]:
    """The row from the CSV (latencies in microseconds) and the console's merged request count."""
    line = next(csv.DictReader(io.StringIO(report)))
    throughput = float(line["Inferences/Second"])
    count = re.search(r"Request count:\s*(\d+)", output)
    if count is None or throughput <= 0:
        raise ValueError("no request count or zero throughput")
    ok = int(count.group(1))
    return client_row(
        scenario, requests_ok=ok, requests_per_s=throughput,
        seconds=ok / throughput,  # the measured windows, without process start and warm-up
        p50_ms=float(line["p50 latency"]) / 1000, p90_ms=float(line["p90 latency"]) / 1000,
        p99_ms=float(line["p99 latency"]) / 1000, errors={},
    )


def _failed(scenario: str, why: str) -> dict[str, object]:
    return failed_row(scenario, "perf_analyzer", why)


def _reason(output: str) -> str:
    """perf_analyzer's own words on what failed (its error lines, else its last lines), kept short."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    telling = [line for line in lines if re.search(r"error|fail|unable|invalid|not found", line, re.IGNORECASE)]
    return " | ".join((telling or lines[-3:] or ["no output"])[:3])[:300]

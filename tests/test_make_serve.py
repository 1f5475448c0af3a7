"""The first command a new user runs: ``make serve`` on a fresh copy of the repository with no network.

The copy gets an empty download cache and downloads forbidden (``RESNET_SERVE_OFFLINE=1``). ``make
serve`` must still end in a ready service answering from the embedded CIFAR-10 ResNet-20 with the labels
the README's sample table states, and report resnet50 as not exported, with why and what to do. make
runs against this test's virtualenv (``VENV=``, its install stamp taken as up to date), so nothing is
installed: the rest is the Makefile's own recipe.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import REPO_ROOT, shared_path
from server import free_port

#: What a fresh clone does not have: build outputs, caches, exported models, the virtualenv itself.
NOT_IN_A_CLONE = (".git", ".venv", "model_repository", "__pycache__", ".pytest_cache", ".hypothesis",
                  "bench-results", ".cache", ".trt_cache", "*.egg-info", "*.onnx")
#: A row of the README's sample table: | `photos/chelsea.jpg` | cat | 1.00 |
SAMPLE_ROW = re.compile(r"^\| `((?:photos|cifar10-sample)/[^`]+)` \| (\w+) \| ([\d.]+) \|", re.MULTILINE)
SERVED, NOT_EXPORTED = "cifar10-resnet20", "resnet50"


def readme_samples() -> list[tuple[str, str, float]]:
    rows = [(path, label, float(score)) for path, label, score in SAMPLE_ROW.findall((REPO_ROOT / "README.md").read_text())]
    assert rows, "README.md has no sample table (| `photos/...` | label | score |)"
    return rows


@pytest.fixture(scope="module")
def offline_make_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, float]]:
    """``make serve`` in a copy of the repository, offline: (base URL, make's output so far, seconds to ready)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = tmp_path_factory.mktemp("fresh-clone")
    clone = root / "resnet-serve"
    shutil.copytree(REPO_ROOT, clone, ignore=shutil.ignore_patterns(*NOT_IN_A_CLONE), symlinks=True)
    venv = Path(sys.prefix)
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RESNET_SERVE_")}
    env.update(RESNET_SERVE_OFFLINE="1", RESNET_SERVE_CACHE_DIR=str(root / "empty-cache"), PYTHONUNBUFFERED="1")
    command = ["make", "-o", str(venv / ".installed"), f"VENV={venv}", "serve",
               f"SERVE_ARGS=--port {port} --grpc-port 0 --no-access-log"]
    log_path = root / "make-serve.log"
    with log_path.open("wb") as log:
        started = time.monotonic()
        make = subprocess.Popen(command, cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = started + 300
            while True:
                if make.poll() is not None:
                    pytest.fail(f"make serve exited with {make.returncode}:\n{log_path.read_text()}")
                try:
                    if httpx.get(base + "/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"not ready within 300 s:\n{log_path.read_text()}")
                time.sleep(0.2)
            yield base, log_path.read_text(), time.monotonic() - started
        finally:
            if make.poll() is None:
                os.killpg(make.pid, signal.SIGTERM)  # make and the service, as Ctrl-C would
                try:
                    make.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(make.pid, signal.SIGKILL)
                    make.wait(timeout=10)


def test_the_export_reports_the_model_it_cannot_export_and_goes_on(offline_make_serve: tuple[str, str, float]) -> None:
    _, output, seconds = offline_make_serve
    failures = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(failures) == 1 and failures[0].startswith(f"error: [{NOT_EXPORTED}]"), output
    assert "RESNET_SERVE_OFFLINE=1" in failures[0] and "drop it at" in failures[0], "why and what to do"
    assert re.search(rf"^  {SERVED} +version 1 +exported", output, re.MULTILINE), output
    assert f"serving {SERVED} without {NOT_EXPORTED}" in output
    print(f"ready {seconds:.1f} s after `make serve` started")


def test_ready_with_the_embedded_model_and_resnet50_reported_as_not_exported(
    offline_make_serve: tuple[str, str, float],
) -> None:
    base, _, _ = offline_make_serve
    ready = httpx.get(base + "/health/ready", timeout=10).json()
    assert ready["ready"] is True and ready["models"][SERVED] == "ready"
    assert ready["models"][NOT_EXPORTED].startswith("not exported: ") and "downloads are off" in ready["models"][NOT_EXPORTED]
    models = httpx.get(base + "/models", timeout=10).json()
    assert [model["name"] for model in models["models"]] == [SERVED]
    assert models["models"][0]["source"]["sha256"].startswith("12fca82f")  # the published checkpoint
    (missing,) = models["not_exported"]
    assert missing["name"] == NOT_EXPORTED and "resnet50-11ad3fa6.pth" in missing["reason"]
    answer = httpx.post(base + f"/predict?model={NOT_EXPORTED}", content=b"", timeout=10)
    assert answer.status_code == 404 and "was not exported" in answer.json()["error"]["message"]


@pytest.mark.parametrize(("image", "label", "score"), readme_samples(), ids=[row[0] for row in readme_samples()])
def test_the_readme_sample_table_is_what_it_answers(
    offline_make_serve: tuple[str, str, float], image: str, label: str, score: float
) -> None:
    base, _, _ = offline_make_serve
    path = shared_path("data", image)
    answer = httpx.post(base + f"/predict?model={SERVED}&top_k=1", files={"file": (path.name, path.read_bytes())},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    (top,) = answer.json()["predictions"]
    assert (top["label"], round(top["score"], 2)) == (label, score)

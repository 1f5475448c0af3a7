"""PyTorch TorchServe: a Java (Netty) frontend with its own batching, Python backend workers.

Configured as TorchServe's documentation shows batching: the model registered with
``batchSize=32`` and ``maxBatchDelay`` 3 ms (the service's batch delay), one worker (one onnxruntime
session using every core, as the service runs one; TorchServe's CPU default of one worker per core
would run two sessions of two threads each on two cores), a custom handler
(``apps/torchserve_handler.py``) running onnxruntime with the service's preprocessing, token auth and
system metrics and per-request log lines off (as the service runs without its access log). The request is the service's multipart upload; the answer its top-5.
Needs Java 17+ (``java`` on PATH) and torch in the venv (TorchServe imports it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from benchmarks.peers.base import Launch, MultipartPeer, Variant
from benchmarks.peers.venv import PeerUnavailable, project_version, shared_requirements
from benchmarks.server import free_port
from benchmarks.workload import REPO_ROOT, BenchModel

APPS = Path(__file__).with_name("apps")
VERSION = "0.12.0"
TORCH = "torch==2.13.0"  # the CPU wheel on this machine; TorchServe's frontend imports torch in its workers
MAX_BATCH_SIZE = 32
MAX_BATCH_DELAY_MS = 3


class TorchServe(MultipartPeer):
    name = "torchserve"

    def requirements(self) -> list[str]:
        numpy = project_version("numpy")
        # pyyaml: TorchServe's worker imports yaml but 0.12.0 does not declare it.
        return [f"torchserve=={VERSION}", f"torch-model-archiver=={VERSION}", TORCH, "pyyaml", *shared_requirements(),
                f"numpy=={numpy}" if numpy else "numpy"]

    def launch(self, model: BenchModel, onnx: Path, python: Path, workdir: Path, variant: Variant) -> Launch:
        if shutil.which("java") is None:
            raise PeerUnavailable("TorchServe needs Java 17+ ('java' on PATH): apt-get install openjdk-17-jre-headless")
        store = workdir / "model-store"
        store.mkdir()
        config_file = workdir / "peer_config.json"
        config_file.write_text(json.dumps({
            "model_path": str(onnx), "repo_root": str(REPO_ROOT), "env": variant.env, "max_batch_size": MAX_BATCH_SIZE,
        }))
        archiver = python.parent / "torch-model-archiver"
        completed = subprocess.run(
            [str(archiver), "--model-name", model.name, "--version", "1.0",
             "--handler", str(APPS / "torchserve_handler.py"),
             "--extra-files", f"{APPS / 'peer_model.py'},{config_file}",
             "--export-path", str(store), "--archive-format", "no-archive"],
            capture_output=True, text=True, timeout=120, check=False,
        )
        if completed.returncode != 0:
            raise PeerUnavailable(f"torch-model-archiver failed: {(completed.stdout + completed.stderr)[-600:]}")
        inference, management, metrics = free_port(), free_port(), free_port()
        models = {model.name: {"1.0": {
            "defaultVersion": True, "marName": model.name, "minWorkers": 1, "maxWorkers": 1,
            "batchSize": MAX_BATCH_SIZE, "maxBatchDelay": MAX_BATCH_DELAY_MS, "responseTimeout": 120,
        }}}
        properties = workdir / "config.properties"
        properties.write_text("\n".join([
            f"inference_address=http://127.0.0.1:{inference}",
            f"management_address=http://127.0.0.1:{management}",
            f"metrics_address=http://127.0.0.1:{metrics}",
            f"model_store={store}",
            f"load_models={model.name}",
            f"models={json.dumps(models)}",
            "default_workers_per_model=1",
            "disable_token_authorization=true",
            "disable_system_metrics=true",
            "install_py_dep_per_model=false",
            "enable_envvars_config=false",
        ]) + "\n")
        argv = [str(python.parent / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
                "--ts-config", str(properties), "--model-store", str(store), "--log-config", str(APPS / "torchserve_log4j2.xml")]
        env = {**variant.env, "PATH": f"{python.parent}:{_path()}"}
        return Launch.local(argv, env, workdir, inference, ready="/ping", infer=f"/predictions/{model.name}")

    def settings(self) -> str:
        return (
            f"torchserve {VERSION} (Java {_java_version()}), batchSize {MAX_BATCH_SIZE}, maxBatchDelay "
            f"{MAX_BATCH_DELAY_MS} ms, 1 worker, custom handler, multipart upload, top-5 JSON"
        )


def _path() -> str:
    return os.environ.get("PATH", "/usr/bin:/bin")


def _java_version() -> str:
    try:
        completed = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    first = (completed.stderr or completed.stdout).splitlines()[:1]
    return first[0].split('"')[1] if first and '"' in first[0] else "?"


PEER = TorchServe()

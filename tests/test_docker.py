"""Deployment: static checks of the compose stack and images (always), and the proof on a real engine.

The engine test runs docker/smoke-test.sh: it builds the images and runs the CPU compose stack. It is
skipped, with the reason, where no Docker engine answers (CI has none and never installs one) and in CI
runs generally, where it would cost minutes of image builds: set RESNET_SERVE_DOCKER_TESTS=1 to force it.
Run it here with ``.venv/bin/pytest -m docker``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from conftest import REPO_ROOT, shared_path
from packaging.requirements import Requirement

DOCKER_DIR = REPO_ROOT / "docker"
SMOKE_SCRIPT = DOCKER_DIR / "smoke-test.sh"
#: PEP 508 marker values of the images (Debian bookworm / python:3.11-slim, x86-64).
IMAGE_ENVIRONMENT = {
    "python_version": "3.11", "python_full_version": "3.11.2", "platform_system": "Linux",
    "platform_machine": "x86_64", "sys_platform": "linux",
}
#: Cold builds download ~1 GB of wheels; a warm run takes about a minute.
SMOKE_TIMEOUT_S = 1800


def docker_engine_problem() -> str | None:
    """Why the smoke test cannot run here, or None when a Docker engine answers."""
    if os.environ.get("CI") and os.environ.get("RESNET_SERVE_DOCKER_TESTS") != "1":
        return "CI run: the Docker smoke test takes minutes of builds (RESNET_SERVE_DOCKER_TESTS=1 runs it)"
    if shutil.which("docker") is None:
        return "no docker CLI on PATH: install Docker to run the deployment smoke test"
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 20 s"
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["docker info failed"])[-1]
        return f"no Docker engine reachable ({reason})"
    return None


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(SMOKE_TIMEOUT_S)
def test_compose_stack_exports_and_serves_real_images() -> None:
    problem = docker_engine_problem()
    if problem:
        pytest.skip(problem)
    shared = shared_path()
    shared_path("weights", "cifar10")
    result = subprocess.run(
        ["bash", str(SMOKE_SCRIPT)],
        cwd=REPO_ROOT,
        env={**os.environ, "SHARED_DIR": str(shared)},
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
    )
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    assert result.returncode == 0, f"smoke test failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "[smoke" in result.stdout and "PASSED" in result.stdout
    assert "top-1 'cat'" in result.stdout
    assert " unchanged " in result.stdout, "a second export run must leave the exported model alone"


def test_docker_skip_reason_is_explicit_without_an_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no docker CLI on PATH the deployment test skips with a reason instead of failing."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("PATH", str(Path("/nonexistent")))
    assert docker_engine_problem() == "no docker CLI on PATH: install Docker to run the deployment smoke test"


# --- static checks: what the issue asks of the stack, without an engine ---------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_api_waits_for_the_export_job_and_reserves_one_gpu(compose: dict) -> None:
    api = compose["services"]["api"]
    assert api["depends_on"] == {"export": {"condition": "service_completed_successfully"}}
    assert api["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert api["environment"]["RESNET_SERVE_REQUIRE_GPU"] == "true"


@pytest.mark.parametrize("name", ["api", "api-cpu"])
def test_api_services_are_hardened_and_health_checked(compose: dict, name: str) -> None:
    api = compose["services"][name]
    assert api["restart"] == "unless-stopped"
    assert api["read_only"] is True and any(mount.startswith("/tmp") for mount in api["tmpfs"])
    assert "models:/models:ro" in api["volumes"]
    assert any(volume.startswith("trt-cache:") for volume in api["volumes"])
    assert "/health/ready" in " ".join(api["healthcheck"]["test"])
    assert api["healthcheck"]["start_period"]
    assert api["logging"]["driver"] == "json-file" and api["logging"]["options"]["max-file"]
    assert "deploy" not in api or name == "api", "the CPU variant must not reserve a GPU"


def test_cpu_variant_is_opt_in_and_export_is_one_shot(compose: dict) -> None:
    assert compose["services"]["api-cpu"]["profiles"] == ["cpu"]
    assert "profiles" not in compose["services"]["api"]
    export = compose["services"]["export"]
    assert export["restart"] == "no"
    assert export["command"][:2] == ["--config", "/config/models.toml"]
    assert {"models:/models", "weights-cache:/cache"} <= set(export["volumes"])
    assert set(compose["volumes"]) == {"models", "weights-cache", "trt-cache"}


def test_serving_image_has_no_torch_runs_as_non_root_and_checks_readiness() -> None:
    dockerfile = (DOCKER_DIR / "Dockerfile.serve").read_text()
    instructions = "\n".join(line for line in dockerfile.splitlines() if not line.lstrip().startswith("#"))
    pins = (DOCKER_DIR / "requirements-serve.txt").read_text()
    assert "torch" not in pins.lower() and "torch" not in instructions.lower()
    assert "\nUSER 10001:10001\n" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/health/ready" in dockerfile
    assert "RESNET_SERVE_HOST=0.0.0.0" in dockerfile
    assert "ARG BASE_IMAGE=" in dockerfile and "id=pip_ca" in dockerfile


@pytest.mark.parametrize(
    ("extra", "pin_file"), [(None, "requirements-serve.txt"), ("export", "requirements-export.txt")]
)
def test_image_pins_satisfy_pyproject(extra: str | None, pin_file: str) -> None:
    """Every dependency pyproject declares (for the images' Python 3.11) is pinned, at a version it allows.

    onnxruntime and torch are chosen by build arguments (GPU/CPU builds), so they are not in the files.
    """
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    pinned = {}
    for name in ("requirements-serve.txt", pin_file):
        for line in (DOCKER_DIR / name).read_text().splitlines():
            if line and not line.startswith("#"):
                requirement = Requirement(line)
                pinned[_normalise(requirement.name)] = next(iter(requirement.specifier)).version
    for raw in declared:
        requirement = Requirement(raw)
        if requirement.name.startswith(("onnxruntime", "torch")):
            continue
        if requirement.marker is not None and not requirement.marker.evaluate(IMAGE_ENVIRONMENT):
            continue
        version = pinned.get(_normalise(requirement.name))
        assert version is not None, f"{requirement.name} is not pinned: run docker/lock-requirements.sh"
        assert requirement.specifier.contains(version), (
            f"docker/{pin_file} pins {requirement.name}=={version}, pyproject wants {requirement.specifier}"
        )


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_gpu_build_pins_a_tensorrt_10_release_the_provider_can_load(compose: dict) -> None:
    """onnxruntime-gpu 1.31's TensorRT provider links libnvinfer.so.10 and libnvonnxparser.so.10: an unpinned
    TensorRT installs 11 (``.so.11``), which it cannot load. The compose default pins one TensorRT 10 release
    (overridable, empty = no TensorRT), and the image build fails where a package gives neither .so.10."""
    from service.engine.providers import TENSORRT_LIBRARIES

    value = compose["services"]["api"]["build"]["args"]["TENSORRT_PACKAGE"]
    match = re.fullmatch(r"\$\{TENSORRT_PACKAGE-([^}]+)\}", value)
    assert match, f"TENSORRT_PACKAGE {value!r}: expected ${{TENSORRT_PACKAGE-<pinned requirement>}}"
    requirement = Requirement(match.group(1))
    (pin,) = requirement.specifier
    assert pin.operator == "==" and pin.version.split(".")[0] == "10", requirement
    assert requirement.name.startswith("tensorrt-cu13"), "onnxruntime-gpu 1.31 is built for CUDA 13"
    dockerfile = (DOCKER_DIR / "Dockerfile.serve").read_text()
    for library in TENSORRT_LIBRARIES:
        assert library in dockerfile, f"the image build does not check for {library}"

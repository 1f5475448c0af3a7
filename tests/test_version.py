"""One version: pyproject.toml's is what the package, ``--version``, ``/v2``, ``/models``, the OpenAPI document
and the Docker images' labels report (a release bumps one line, this test finds any copy left behind)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version as installed_version
from pathlib import Path

import httpx
import pytest
from conftest import REPO_ROOT
from server import run_server

import service

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_installed_package_is_this_version() -> None:
    assert service.__version__ == installed_version("resnet-serve") == VERSION, (
        "the installed metadata is stale: reinstall (make test does when pyproject.toml changes)"
    )


def test_the_command_line_says_it() -> None:
    result = subprocess.run([sys.executable, "-m", "service", "--version"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stdout.strip() == f"resnet-serve {VERSION}"


def test_every_door_of_a_running_service_says_it(tmp_path: Path) -> None:
    with run_server(tmp_path, wait="live") as server:
        assert httpx.get(server.url("/v2"), timeout=10).json()["version"] == VERSION
        assert httpx.get(server.url("/models"), timeout=10).json()["server_version"] == VERSION
        assert httpx.get(server.url("/openapi.json"), timeout=10).json()["info"]["version"] == VERSION


@pytest.mark.parametrize("dockerfile", ["Dockerfile.serve", "Dockerfile.export"])
def test_the_image_labels_say_it(dockerfile: str) -> None:
    text = (REPO_ROOT / "docker" / dockerfile).read_text()
    assert re.findall(r"^ARG VERSION=(\S+)$", text, flags=re.MULTILINE) == [VERSION]
    assert 'org.opencontainers.image.version="${VERSION}"' in text

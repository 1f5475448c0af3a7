"""``python -m export`` as a person or the compose job runs it: real subprocesses, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, cifar_checkpoint

from export import ExportError
from export.config import load_config
from servable.layout import publish_version, read_export_failure, record_export_failure, scan_versions


def run_export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_config_exports_every_model_then_reruns_as_a_no_op(tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text(
        f"""
[[model]]
name = "cifar10-resnet20"
arch = "resnet20"
weights = "{cifar_checkpoint("resnet20")}"

[[model]]
name = "cifar10-resnet32-fp16"
arch = "resnet32"
weights = "{cifar_checkpoint("resnet32")}"
fp16 = true
"""
    )
    repo = tmp_path / "repo"
    first = run_export("--config", str(config), "--model-dir", str(repo))
    assert first.returncode == 0, first.stderr
    assert (repo / "cifar10-resnet20" / "1" / "model.onnx").is_file()
    assert (repo / "cifar10-resnet32-fp16" / "1" / "model.onnx").is_file()
    assert "verified" in first.stdout and "wrote" in first.stdout

    second = run_export("--config", str(config), "--model-dir", str(repo))
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("nothing to do") == 2
    assert sorted(p.name for p in (repo / "cifar10-resnet20").iterdir()) == ["1"]


def test_single_model_failure_exits_non_zero_with_a_message_and_writes_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = run_export("resnet20", "--weights", str(cifar_checkpoint("resnet56")), "--model-dir", str(repo))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "resnet20" in result.stderr
    assert not list(repo.rglob("*.onnx"))


def test_the_shipped_models_toml_parses_into_the_default_deployment() -> None:
    requests = {request.name: request for request in load_config(REPO_ROOT / "models.toml")}
    assert requests["resnet50"].arch == "resnet50"
    assert requests["resnet50"].weights == "torchvision:resnet50:IMAGENET1K_V2"
    assert requests["cifar10-resnet20"].arch == "resnet20"
    assert requests["cifar10-resnet20"].weights == "cifar10:resnet20"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[model]]\narch = 'resnet20'\n", "missing weights"),
        ("[[model]]\narch = 'resnet20'\nweights = 'random'\ncolour = 'red'\n", "unknown keys colour"),
        ("[[model]]\narch = 'resnet20'\nweights = 'random'\nfp16 = 'yes'\n", "fp16 must be a bool"),
        ("model = [", "not valid TOML"),
        ("", "lists no models"),
    ],
)
def test_config_mistakes_are_reported_before_exporting(text: str, message: str, tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text(text)
    with pytest.raises(ExportError, match=message):
        load_config(config)


@pytest.mark.slow
def test_a_config_with_a_model_that_cannot_be_exported(tmp_path: Path) -> None:
    """Each failure is one line saying why and what to do, and a record the service reports; with
    --allow-partial the run succeeds while something of the config can be served, and only then."""
    good = f'[[model]]\nname = "good"\narch = "resnet20"\nweights = "{cifar_checkpoint("resnet20")}"\n'
    bad = '[[model]]\nname = "bad"\narch = "resnet20"\nweights = "no-such-file.th"\n'
    config, only_bad = tmp_path / "models.toml", tmp_path / "bad.toml"
    config.write_text(good + "\n" + bad)
    only_bad.write_text(bad)
    repo = tmp_path / "repo"

    strict = run_export("--config", str(config), "--model-dir", str(repo))
    assert strict.returncode == 1 and (repo / "good" / "1" / "model.onnx").is_file()
    (error,) = strict.stderr.splitlines()
    assert error.startswith("error: [bad] ") and "no checkpoint file at no-such-file.th" in error
    assert read_export_failure(repo / "bad") == error.removeprefix("error: [bad] ")
    assert read_export_failure(repo / "good") is None

    partial = run_export("--config", str(config), "--model-dir", str(repo), "--allow-partial")
    assert partial.returncode == 0, partial.stdout + partial.stderr
    assert "serving good without bad" in partial.stdout
    nothing = run_export("--config", str(only_bad), "--model-dir", str(tmp_path / "empty"), "--allow-partial")
    assert nothing.returncode == 1, "nothing to serve is a failure"


def test_publishing_a_version_clears_the_failure_record(tmp_path: Path) -> None:
    record_export_failure(tmp_path, "m", "downloads are off: drop the file at /cache/m.pth")
    assert read_export_failure(tmp_path / "m") == "downloads are off: drop the file at /cache/m.pth"
    assert scan_versions(tmp_path / "m", "m") == {}, "a record is not a version"
    publish_version(tmp_path, "m", 1, b"onnx bytes")
    assert read_export_failure(tmp_path / "m") is None

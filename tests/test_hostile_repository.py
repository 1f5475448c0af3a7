"""A model repository with files that are not files: FIFOs and devices as ``model.onnx`` and ``config.toml``.

Before, a FIFO as ``model.onnx`` hung the loader: in poll mode the watcher never returned (a valid model
added afterwards was never served), in explicit mode the load request never answered and the next
control request queued behind it. Now each is refused at once with its reason in ``/models``, in both
modes, and a valid model added afterwards is served; the bounded read and the daemon-thread timeout
that cover a mount that stops answering are shown on a FIFO too.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from hostile import encode, gradient
from server import RunningServer, link_model, run_server, wait_until

from servable.layout import UnreadableFile, read_regular_file
from service.limits.timeouts import in_daemon_thread

POLL_S = 0.5


def fifo(path: Path) -> None:
    os.mkfifo(path)


def zero_device(path: Path) -> None:
    path.symlink_to("/dev/zero")  # endless zeros: the reader of a device never finishes


#: model name -> (which file is special, how it is made, the words its refusal says)
SPECIAL: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "fifo-model": ("model.onnx", fifo, "a FIFO, not a regular file"),
    "device-model": ("model.onnx", zero_device, "a character device, not a regular file"),
    "fifo-config": ("config.toml", fifo, "a FIFO, not a regular file"),
    "device-config": ("config.toml", zero_device, "a character device, not a regular file"),
}


@pytest.fixture()
def special_repo(model_repo: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    link_model(model_repo, "resnet20", repo, "good")
    for name, (special, make, _) in SPECIAL.items():
        version = repo / name / "1"
        version.mkdir(parents=True)
        if special == "config.toml":
            link_model(model_repo, "resnet20", repo, name)
            make(repo / name / "config.toml")
        else:
            make(version / "model.onnx")
    return repo


def models(server: RunningServer) -> dict[str, dict[str, object]]:
    """Every model /models lists, served or not; a served one is marked ``"serving": True``."""
    body = httpx.get(server.url("/models"), timeout=10).json()
    return {model["name"]: model | {"serving": True} for model in body["models"]} | {
        model["name"]: model for model in body["unavailable"]
    }


def check_refusals(server: RunningServer) -> None:
    listed = models(server)
    for name, (special, _, words) in SPECIAL.items():
        text = str(listed.get(name))
        assert words in text, (name, text[:500])
        assert str(server.log_path.parent) not in text  # no absolute server path in what a client sees
    for name in ("fifo-config", "device-config"):  # a refused config: the model still serves, with defaults
        assert listed[name].get("serving"), listed[name]


@pytest.mark.parametrize("mode", ["poll", "explicit"])
def test_fifos_and_devices_are_refused_with_a_reason_and_a_valid_model_added_later_is_served(
    special_repo: Path, model_repo: Path, mode: str
) -> None:
    with run_server(special_repo, "--model-control", mode, "--repository-poll-s", str(POLL_S), "--allow-partial",
                    "--model-read-timeout-s", "5", timeout_s=90) as server:
        check_refusals(server)
        link_model(model_repo, "resnet20", special_repo, "late")
        if mode == "explicit":
            for name in ("fifo-model", "device-model"):  # answered at once, not hung
                refused = httpx.post(server.url(f"/v2/repository/models/{name}/load"), timeout=30)
                assert refused.status_code == 400 and "not a regular file" in refused.text, refused.text
            loaded = httpx.post(server.url("/v2/repository/models/late/load"), timeout=30)
            assert loaded.status_code == 200, loaded.text
        wait_until(lambda: models(server).get("late", {}).get("serving"), 30, "serving the model added later")
        answer = httpx.post(server.url("/predict?model=late"), content=encode(gradient(32, 32), "JPEG"),
                            headers={"content-type": "image/jpeg"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert "Traceback" not in server.log()


def test_a_fifo_is_refused_without_blocking_and_a_hung_call_is_given_up(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    os.mkfifo(path)
    started = time.monotonic()
    with pytest.raises(UnreadableFile, match="a FIFO, not a regular file"):
        read_regular_file(path, timeout_s=5)
    assert time.monotonic() - started < 2

    def blocked_open() -> bytes:
        with open(path, "rb") as handle:  # a plain open of a FIFO waits for a writer: a mount that hangs
            return handle.read()

    async def bounded() -> float:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await in_daemon_thread(blocked_open, timeout_s=0.5)
        return time.monotonic() - started

    assert asyncio.run(bounded()) < 2
    with open(path, "wb"):  # release the thread left behind (a daemon: it never held the test up)
        pass

"""The live model repository on a real server: new, corrupt and removed versions under load, explicit control.

Every test runs 8 clients posting real CIFAR images while the repository changes, and requires
0 failed requests. Each answer says which version produced it; its scores are checked against that
version's own answer for the same image (so "version 2" really came from version 2's session).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import onnx
import pytest
import tritonclient.http as httpclient
from conftest import cifar_checkpoint, cifar_sample
from load import ClientThreads
from server import RunningServer, metric_value, run_server
from tritonclient.utils import InferenceServerException

POLL_S = 0.5
CLIENTS = 8


@dataclass(frozen=True)
class Outcome:
    started: float
    finished: float
    status: int
    version: int | None
    image: int
    score: float | None
    detail: str = ""


class Load(ClientThreads):
    """``CLIENTS`` threads posting images back to back; every outcome is kept."""

    def __init__(self, server: RunningServer, images: list[bytes], query: str = "?model=cifar") -> None:
        super().__init__(CLIENTS)
        self.url = server.url("/predict" + query + "&top_k=1")
        self.images = images
        self.outcomes: list[Outcome] = []

    def run_client(self, worker: int) -> None:
        index = worker
        with httpx.Client(timeout=30) as client:
            while not self.stopped.is_set():
                image = index % len(self.images)
                started = time.monotonic()
                try:
                    response = client.post(self.url, files={"file": ("x.jpg", self.images[image], "image/jpeg")})
                    body = response.json()
                    outcome = Outcome(
                        started, time.monotonic(), response.status_code, body.get("version"), image,
                        body["predictions"][0]["score"] if response.status_code == 200 else None,
                        "" if response.status_code == 200 else response.text[:300],
                    )
                except (httpx.HTTPError, ValueError) as exc:
                    outcome = Outcome(started, time.monotonic(), 0, None, image, None, repr(exc))
                with self.lock:
                    self.outcomes.append(outcome)
                index += CLIENTS

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]


def images(count: int = 16) -> list[bytes]:
    sample = cifar_sample()
    return [path.read_bytes() for path, _ in sample[:: len(sample) // count][:count]]


def publish(repo: Path, name: str, version: int, source: Path, *, config: str | None = None) -> Path:
    """Copy ``source`` in as ``<name>/<version>/model.onnx`` the way the exporter does: one atomic rename."""
    parent = repo / name
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=parent))
    shutil.copyfile(source, staging / "model.onnx")
    os.rename(staging, parent / str(version))
    if config is not None:
        (parent / "config.toml").write_text(config)
    return parent / str(version) / "model.onnx"


def wait_for(predicate: object, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


def served_versions(server: RunningServer, name: str = "cifar") -> list[int]:
    models = httpx.get(server.url("/models"), timeout=10).json()
    for model in models["models"]:
        if model["name"] == name:
            return [v["version"] for v in model["versions"]]
    return []


def reference_scores(server: RunningServer, version: int, pictures: list[bytes]) -> list[float]:
    """Top-1 score of each image from a request pinned to ``version``."""
    scores = []
    for data in pictures:
        response = httpx.post(
            server.url(f"/predict?model=cifar&version={version}&top_k=1"), files={"file": ("x.jpg", data)}, timeout=30
        )
        assert response.status_code == 200, response.text
        scores.append(response.json()["predictions"][0]["score"])
    return scores


@pytest.fixture()
def repo(model_repo: Path, tmp_path: Path) -> Path:
    """A repository holding ``cifar`` version 1 (the real CIFAR resnet20)."""
    target = tmp_path / "repo"
    publish(target, "cifar", 1, model_repo / "resnet20" / "1" / "model.onnx")
    return target


@pytest.fixture()
def live(repo: Path) -> Iterator[RunningServer]:
    with run_server(repo, "--repository-poll-s", str(POLL_S), "--max-batch-delay-ms", "2") as server:
        yield server


def test_a_new_exported_version_switches_in_under_load_with_no_failed_request(
    live: RunningServer, repo: Path, model_repo: Path
) -> None:
    from export import export_model

    pictures = images()
    v1 = reference_scores(live, 1, pictures)
    with Load(live, pictures) as load:
        time.sleep(1.0)
        # A different checkpoint under the same name: the exporter publishes it as version 2.
        result = export_model("resnet32", str(cifar_checkpoint("resnet32")), model_dir=repo, name="cifar",
                              log=lambda line: None)
        exported = time.monotonic()
        assert result.version == 2
        switched = wait_for(lambda: any(o.version == 2 and o.started > exported for o in load.outcomes), 60,
                            "the first answer from version 2")
        time.sleep(1.0)
    assert not load.failures(), load.failures()[:5]
    v2 = reference_scores(live, 2, pictures) if 2 in served_versions(live) else None
    assert served_versions(live) == [2]  # latest-1 policy: version 1 retired after its requests drained
    first_v2 = min(o.started for o in load.outcomes if o.version == 2)
    for outcome in load.outcomes:
        assert outcome.version in (1, 2)
        if outcome.version == 1:
            assert outcome.score == pytest.approx(v1[outcome.image], abs=1e-6)
            assert outcome.started < first_v2 + 0.5  # nothing started well after the switch went to v1
    assert v2 is None or all(
        o.score == pytest.approx(v2[o.image], abs=1e-6) for o in load.outcomes if o.version == 2
    )
    load_and_warm = 10.0  # generous on a shared 2-core box: resnet32 loads and warms in about 1 s
    assert switched <= POLL_S + load_and_warm, switched
    assert metric_value(live, "resnet_serve_version_loads_total", model="cifar") == 2


def corrupt_versions(source: Path, work: Path) -> dict[str, Path]:
    """Three broken model files: truncated, a graph whose input shape disagrees with its card, a bad card."""
    work.mkdir(parents=True, exist_ok=True)
    truncated = work / "truncated.onnx"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    graph = onnx.load(str(source))
    graph.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 64
    wrong_shape = work / "wrong_shape.onnx"
    onnx.save(graph, str(wrong_shape))
    graph = onnx.load(str(source))
    for prop in graph.metadata_props:
        if prop.key == "preprocessing":
            prop.value = "{not json"
    bad_card = work / "bad_card.onnx"
    onnx.save(graph, str(bad_card))
    return {"truncated": truncated, "wrong input shape": wrong_shape, "unparsable card": bad_card}


def test_corrupt_new_versions_are_refused_under_load_and_the_old_one_keeps_serving(
    live: RunningServer, repo: Path, tmp_path: Path
) -> None:
    source = repo / "cifar" / "1" / "model.onnx"
    broken = corrupt_versions(source, tmp_path / "broken")
    pictures = images()
    with Load(live, pictures) as load:
        for version, (why, path) in enumerate(broken.items(), start=2):
            publish(repo, "cifar", version, path)
            wait_for(lambda v=version: v in [r["version"] for r in refused(live)], 30, f"refusal of {why}")
        time.sleep(0.5)
    assert not load.failures(), load.failures()[:5]
    assert {o.version for o in load.outcomes} == {1}
    assert served_versions(live) == [1]
    reasons = {r["version"]: r["reason"] for r in refused(live)}
    assert "cannot load" in reasons[2] or "INVALID_PROTOBUF" in reasons[2] or "Protobuf" in reasons[2], reasons[2]
    assert "does not match" in reasons[3], reasons[3]
    assert "not valid JSON" in reasons[4], reasons[4]
    assert metric_value(live, "resnet_serve_version_refusals_total", model="cifar", cause="load") == 3
    assert metric_value(live, "resnet_serve_refused_versions", model="cifar") == 3
    assert httpx.get(live.url("/health/ready"), timeout=10).status_code == 200
    # A refused folder is retried once it changes: replacing version 4 with a good file serves it.
    shutil.rmtree(repo / "cifar" / "4")
    publish(repo, "cifar", 4, source)
    wait_for(lambda: served_versions(live) == [4], 30, "version 4 fixed and served")


def refused(server: RunningServer) -> list[dict[str, object]]:
    body = httpx.get(server.url("/models"), timeout=10).json()
    for model in body["models"]:
        if model["name"] == "cifar":
            return model["refused"]
    return []


def test_removing_a_version_unloads_it_after_in_flight_work_and_pins_then_get_404(
    repo: Path, model_repo: Path
) -> None:
    publish(repo, "cifar", 2, model_repo / "resnet32" / "1" / "model.onnx", config='version_policy = "all"\n')
    with run_server(repo, "--repository-poll-s", str(POLL_S)) as server:
        assert served_versions(server) == [1, 2]
        pictures = images()
        with Load(server, pictures, query="?model=cifar&version=2") as pinned, Load(server, pictures) as unpinned:
            wait_for(lambda: any(o.version == 2 for o in unpinned.outcomes), 60, "unpinned answers from v2")
            wait_for(lambda: any(o.version == 2 for o in pinned.outcomes), 60, "pinned answers from v2")
            shutil.rmtree(repo / "cifar" / "2")
            removed = time.monotonic()
            wait_for(lambda: served_versions(server) == [1], 30, "version 2 unloaded")
            unloaded = time.monotonic()
            time.sleep(1.0)
        answered = [o for o in pinned.outcomes if o.status == 200]
        assert answered and all(o.version == 2 for o in answered)
        late = [o for o in pinned.outcomes if o.status != 200]
        assert late and all(o.status == 404 and "unknown_version" in o.detail for o in late), late[:3]
        assert all(o.started > removed - 0.1 for o in late)  # only requests after the removal were refused
        assert not unpinned.failures()
        assert {o.version for o in unpinned.outcomes if o.started > unloaded} == {1}
        assert {o.version for o in unpinned.outcomes if o.finished < removed} == {2}  # the highest, until removed


def test_explicit_mode_loads_and_unloads_through_the_api_only_for_models_in_the_repository(
    repo: Path, model_repo: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    publish(outside, "x", 1, model_repo / "resnet20" / "1" / "model.onnx")  # a valid model beside MODEL_DIR
    with run_server(repo, "--model-control", "explicit", "--api-key", "k3y") as server:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        authorised = {"Authorization": "Bearer k3y"}
        with pytest.raises(InferenceServerException) as no_key:
            client.load_model("cifar")
        assert no_key.value.status() == "401"
        client.unload_model("cifar", headers=authorised)
        wait_for(lambda: not client.is_model_ready("cifar", headers=authorised), 30, "unload")
        publish(repo, "cifar", 2, model_repo / "resnet32" / "1" / "model.onnx")
        time.sleep(1.0)  # explicit mode does not poll: nothing loads by itself
        assert not client.is_model_ready("cifar", headers=authorised)
        client.load_model("cifar", headers=authorised)
        assert client.is_model_ready("cifar", "2", headers=authorised)
        # ".." never reaches the route (the client normalises the path): 404 from routing, also fine.
        for name, statuses in (("nope", {404}), ("x", {404}), ("..", {400, 404}), ("...x", {400}), ("a b", {400})):
            response = httpx.post(server.url(f"/v2/repository/models/{name}/load"), headers=authorised, timeout=10)
            assert response.status_code in statuses, (name, response.text)
            assert "error" in response.json()
        for target in ("/v2/repository/models/../outside/x/load", "/v2/repository/models/%2E%2E%2Foutside/load",
                       "/v2/repository/models/" + "%2F" + str(outside).lstrip("/").replace("/", "%2F") + "/load"):
            response = httpx.post(server.url(target), headers=authorised, timeout=10)
            assert 400 <= response.status_code < 500, (target, response.status_code)
        index = client.get_model_repository_index(headers=authorised)
        assert {(row["name"], row["version"], row["state"]) for row in index} == {
            ("cifar", "2", "READY"), ("cifar-encoded", "2", "READY")
        }  # nothing from outside MODEL_DIR was loaded


def test_poll_mode_refuses_explicit_control(live: RunningServer) -> None:
    response = httpx.post(live.url("/v2/repository/models/cifar/unload"), timeout=10)
    assert response.status_code == 400 and "explicit" in response.json()["error"]


def test_per_model_config_applies_and_models_shows_the_effective_values(repo: Path) -> None:
    (repo / "cifar" / "config.toml").write_text(
        "max_batch_size = 8\nmax_batch_delay_ms = 1.5\nmax_queue_size = 40\ninstances = 2\ndefault_top_k = 2\n"
    )
    with run_server(repo, "--repository-poll-s", str(POLL_S)) as server:
        (model,) = httpx.get(server.url("/models"), timeout=10).json()["models"]
        assert model["settings"]["max_batch_size"] == 8 and model["settings"]["instances"] == 2
        assert model["batching"]["max_queue_size"] == 40 and model["batching"]["batch_buckets"] == [1, 2, 4, 8]
        assert model["settings"]["default_top_k"] == 2
        answer = httpx.post(server.url("/predict"), files={"file": ("x.jpg", images(1)[0])}, timeout=30).json()
        assert len(answer["predictions"]) == 2
        # A broken config.toml is reported and the model keeps its last good settings.
        (repo / "cifar" / "config.toml").write_text("max_batch_size = 'lots'\n")
        wait_for(lambda: (httpx.get(server.url("/models"), timeout=10).json()["models"][0]["config_error"] or "")
                 .find("max_batch_size") >= 0, 30, "config error reported")
        (model,) = httpx.get(server.url("/models"), timeout=10).json()["models"]
        assert model["settings"]["max_batch_size"] == 8
        assert httpx.get(server.url("/health/ready"), timeout=10).status_code == 200

"""The live model repository on a real server: new, corrupt and removed versions under load, explicit control.

Every test runs 8 clients posting real CIFAR images while the repository changes, and requires
0 failed requests. Each answer says which version produced it; its scores are checked against that
version's own answer for the same image (so "version 2" really came from version 2's session).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import onnx
import pytest
import tritonclient.http as httpclient
from conftest import cifar_checkpoint, cifar_sample
from load import Attempt, PostingLoad
from server import RunningServer, metric_value, run_server, wait_until
from tritonclient.utils import InferenceServerException

from servable.layout import publish_version

POLL_S = 0.5
CLIENTS = 8


def answered_version(attempt: Attempt) -> int | None:
    """The version that answered (None for a failure)."""
    return attempt.answer.get("version") if attempt.status == 200 else None


def top1_score(attempt: Attempt) -> float | None:
    """The top-1 score of an answer (None for a failure)."""
    return attempt.answer["predictions"][0]["score"] if attempt.status == 200 else None


def posting(server: RunningServer, pictures: list[bytes], query: str = "?model=cifar") -> PostingLoad:
    """:data:`CLIENTS` clients posting ``pictures`` in turn, top-1 only."""
    return PostingLoad(server.url("/predict" + query + "&top_k=1"), pictures, clients=CLIENTS)


def images(count: int = 16) -> list[bytes]:
    sample = cifar_sample()
    return [path.read_bytes() for path, _ in sample[:: len(sample) // count][:count]]


def publish(repo: Path, name: str, number: int, source: Path) -> Path:
    """Publish ``source`` as ``<name>/<number>/model.onnx`` the way the exporter does (one atomic rename)."""
    return publish_version(repo, name, number, source.read_bytes())


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
def cifar_repository(model_repo: Path, tmp_path: Path) -> Path:
    """A repository of its own holding ``cifar`` version 1 (the real CIFAR resnet20), for a test to change."""
    target = tmp_path / "repo"
    publish(target, "cifar", 1, model_repo / "resnet20" / "1" / "model.onnx")
    return target


@pytest.fixture()
def polling_server(cifar_repository: Path) -> Iterator[RunningServer]:
    """A server polling ``cifar_repository`` every :data:`POLL_S` seconds."""
    with run_server(cifar_repository, "--repository-poll-s", str(POLL_S), "--max-batch-delay-ms", "2") as server:
        yield server


def test_a_new_exported_version_switches_in_under_load_with_no_failed_request(
    polling_server: RunningServer, cifar_repository: Path, model_repo: Path
) -> None:
    from export import export_model

    pictures = images()
    v1 = reference_scores(polling_server, 1, pictures)
    with posting(polling_server, pictures) as load:
        time.sleep(1.0)
        # A different checkpoint under the same name: the exporter publishes it as version 2.
        result = export_model("resnet32", str(cifar_checkpoint("resnet32")), model_dir=cifar_repository, name="cifar",
                              log=lambda line: None)
        exported = time.monotonic()
        assert result.version == 2
        switched = wait_until(lambda: any(answered_version(o) == 2 and o.started > exported for o in load.attempts),
                              60, "the first answer from version 2")
        time.sleep(1.0)
    assert not load.failures(), load.failures()[:5]
    v2 = reference_scores(polling_server, 2, pictures) if 2 in served_versions(polling_server) else None
    assert served_versions(polling_server) == [2]  # latest-1 policy: version 1 retired after its requests drained
    first_v2 = min(o.started for o in load.attempts if answered_version(o) == 2)
    for outcome in load.attempts:
        assert answered_version(outcome) in (1, 2)
        if answered_version(outcome) == 1:
            assert top1_score(outcome) == pytest.approx(v1[outcome.image], abs=1e-6)
            assert outcome.started < first_v2 + 0.5  # nothing started well after the switch went to v1
    assert v2 is None or all(
        top1_score(o) == pytest.approx(v2[o.image], abs=1e-6) for o in load.attempts if answered_version(o) == 2
    )
    load_and_warm = 10.0  # generous on a shared 2-core box: resnet32 loads and warms in about 1 s
    assert switched <= POLL_S + load_and_warm, switched
    assert metric_value(polling_server, "resnet_serve_version_loads_total", model="cifar") == 2


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
    polling_server: RunningServer, cifar_repository: Path, tmp_path: Path
) -> None:
    source = cifar_repository / "cifar" / "1" / "model.onnx"
    broken = corrupt_versions(source, tmp_path / "broken")
    pictures = images()
    with posting(polling_server, pictures) as load:
        for version, (why, path) in enumerate(broken.items(), start=2):
            publish(cifar_repository, "cifar", version, path)
            wait_until(lambda v=version: v in [r["version"] for r in refused(polling_server)], 30, f"refusal of {why}")
        time.sleep(0.5)
    assert not load.failures(), load.failures()[:5]
    assert {answered_version(o) for o in load.attempts} == {1}
    assert served_versions(polling_server) == [1]
    reasons = {r["version"]: r["reason"] for r in refused(polling_server)}
    assert "cannot load" in reasons[2] or "INVALID_PROTOBUF" in reasons[2] or "Protobuf" in reasons[2], reasons[2]
    assert "does not match" in reasons[3], reasons[3]
    assert "not valid JSON" in reasons[4], reasons[4]
    assert metric_value(polling_server, "resnet_serve_version_refusals_total", model="cifar", cause="load") == 3
    assert metric_value(polling_server, "resnet_serve_refused_versions", model="cifar") == 3
    assert httpx.get(polling_server.url("/health/ready"), timeout=10).status_code == 200
    # A refused folder is retried once it changes: replacing version 4 with a good file serves it.
    shutil.rmtree(cifar_repository / "cifar" / "4")
    publish(cifar_repository, "cifar", 4, source)
    wait_until(lambda: served_versions(polling_server) == [4], 30, "version 4 fixed and served")


def refused(server: RunningServer) -> list[dict[str, object]]:
    body = httpx.get(server.url("/models"), timeout=10).json()
    for model in body["models"]:
        if model["name"] == "cifar":
            return model["refused"]
    return []


def test_removing_a_version_unloads_it_after_in_flight_work_and_pins_then_get_404(
    cifar_repository: Path, model_repo: Path
) -> None:
    publish(cifar_repository, "cifar", 2, model_repo / "resnet32" / "1" / "model.onnx")
    (cifar_repository / "cifar" / "config.toml").write_text('version_policy = "all"\n')
    with run_server(cifar_repository, "--repository-poll-s", str(POLL_S)) as server:
        assert served_versions(server) == [1, 2]
        pictures = images()
        with posting(server, pictures, "?model=cifar&version=2") as pinned, posting(server, pictures) as unpinned:
            wait_until(lambda: any(answered_version(o) == 2 for o in unpinned.attempts), 60, "unpinned answers from v2")
            wait_until(lambda: any(answered_version(o) == 2 for o in pinned.attempts), 60, "pinned answers from v2")
            shutil.rmtree(cifar_repository / "cifar" / "2")
            removed = time.monotonic()
            wait_until(lambda: served_versions(server) == [1], 30, "version 2 unloaded")
            unloaded = time.monotonic()
            time.sleep(1.0)
        answered = [o for o in pinned.attempts if o.status == 200]
        assert answered and all(answered_version(o) == 2 for o in answered)
        late = [o for o in pinned.attempts if o.status != 200]
        assert late and all(o.status == 404 and "unknown_version" in o.detail for o in late), late[:3]
        assert all(o.started > removed - 0.1 for o in late)  # only requests after the removal were refused
        assert not unpinned.failures()
        assert {answered_version(o) for o in unpinned.attempts if o.started > unloaded} == {1}
        assert {answered_version(o) for o in unpinned.attempts if o.finished < removed} == {2}  # the highest, until removed


def test_explicit_mode_loads_and_unloads_through_the_api_only_for_models_in_the_repository(
    cifar_repository: Path, model_repo: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    publish(outside, "x", 1, model_repo / "resnet20" / "1" / "model.onnx")  # a valid model beside MODEL_DIR
    with run_server(cifar_repository, "--model-control", "explicit", "--api-key", "k3y") as server:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        authorised = {"Authorization": "Bearer k3y"}
        with pytest.raises(InferenceServerException) as no_key:
            client.load_model("cifar")
        assert no_key.value.status() == "401"
        client.unload_model("cifar", headers=authorised)
        wait_until(lambda: not client.is_model_ready("cifar", headers=authorised), 30, "unload")
        publish(cifar_repository, "cifar", 2, model_repo / "resnet32" / "1" / "model.onnx")
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


def test_poll_mode_refuses_explicit_control(polling_server: RunningServer) -> None:
    response = httpx.post(polling_server.url("/v2/repository/models/cifar/unload"), timeout=10)
    assert response.status_code == 400 and "explicit" in response.json()["error"]


def test_per_model_config_applies_and_models_shows_the_effective_values(cifar_repository: Path) -> None:
    (cifar_repository / "cifar" / "config.toml").write_text(
        "max_batch_size = 8\nmax_batch_delay_ms = 1.5\nmax_queue_size = 40\ninstances = 2\ndefault_top_k = 2\n"
    )
    with run_server(cifar_repository, "--repository-poll-s", str(POLL_S)) as server:
        (model,) = httpx.get(server.url("/models"), timeout=10).json()["models"]
        assert model["settings"]["max_batch_size"] == 8 and model["settings"]["instances"] == 2
        assert model["batching"]["max_queue_size"] == 40 and model["batching"]["batch_buckets"] == [1, 2, 4, 8]
        assert model["settings"]["default_top_k"] == 2
        answer = httpx.post(server.url("/predict"), files={"file": ("x.jpg", images(1)[0])}, timeout=30).json()
        assert len(answer["predictions"]) == 2
        # A broken config.toml is reported and the model keeps its last good settings.
        (cifar_repository / "cifar" / "config.toml").write_text("max_batch_size = 'lots'\n")
        wait_until(lambda: (httpx.get(server.url("/models"), timeout=10).json()["models"][0]["config_error"] or "")
                   .find("max_batch_size") >= 0, 30, "config error reported")
        (model,) = httpx.get(server.url("/models"), timeout=10).json()["models"]
        assert model["settings"]["max_batch_size"] == 8
        assert httpx.get(server.url("/health/ready"), timeout=10).status_code == 200

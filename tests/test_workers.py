"""Worker processes on one port (``--workers 2``): real servers on 127.0.0.1, real kills and signals.

Two workers share the HTTP and the gRPC port; which one a connection lands on is the kernel's choice
(SO_REUSEPORT), so the tests find out from the kernel's own tables (/proc/net/tcp and each worker's
open sockets) which worker holds which client connection. What must hold whatever the kernel picks:
both answer on both ports; a killed worker is replaced and only the requests on its own connections
fail; SIGTERM loses no accepted request; a new version reaches both; ``/metrics`` counts every worker's
requests; readiness stays false while one worker is still warming.
"""

from __future__ import annotations

import http.client
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from conftest import shared_path
from load import PREDICT, KeepAliveLoad, post_jpeg
from server import (
    RunningServer,
    connection_owners,
    free_port,
    link_model,
    link_repository,
    metric_value,
    run_server,
    wait_until,
    worker_pids,
)
from test_grpc_listeners import infer_request, listening_sockets, own_connection
from test_live_repository import publish
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.workers.link import merge_index
from service.workers.supervisor import MAX_BACKOFF_S, backoff_s, exit_cause

WORKERS = 2
CLIENTS = 12


@dataclass
class Pair:
    server: RunningServer
    grpc_port: int

    def pids(self) -> list[int]:
        return worker_pids(self.server)

    def models(self) -> dict:
        return httpx.get(self.server.url("/models"), timeout=10).json()


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return shared_path("data", "cifar10-sample", "cat", "0000.jpg").read_bytes()


@pytest.fixture(scope="module")
def pair(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Two workers serving resnet20, one gRPC listener each (two sockets on each port)."""
    repo = link_repository(model_repo, tmp_path_factory.mktemp("workers"), "resnet20")
    grpc_port = free_port()
    flags = ("--workers", str(WORKERS), "--grpc-port", str(grpc_port), "--grpc-listeners", "1")
    with run_server(repo, *flags) as server:
        yield Pair(server, grpc_port)


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit is reaped by whatever PID 1 is, maybe never)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- one pair of workers, several tests ---------------------------------------------------------------


def test_both_workers_answer_on_both_ports(pair: Pair, jpeg: bytes) -> None:
    """16 connections on each port: the kernel spreads them over both workers, and every one is answered."""
    pids = pair.pids()
    assert len(pids) == WORKERS
    assert listening_sockets(pair.server.port) == WORKERS and listening_sockets(pair.grpc_port) == WORKERS
    connections = [http.client.HTTPConnection("127.0.0.1", pair.server.port, timeout=30) for _ in range(16)]
    try:
        answers = [post_jpeg(connection, jpeg) for connection in connections]
        assert {status for status, _ in answers} == {200}
        assert {answer["predictions"][0]["label"] for _, answer in answers} == {"cat"}
        assert set(connection_owners(pair.server.port, pids).values()) == set(pids)
    finally:
        for connection in connections:
            connection.close()
    channels = [own_connection(pair.grpc_port) for _ in range(16)]
    try:
        request = infer_request(jpeg)
        outputs = {
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30).raw_output_contents[0]
            for channel in channels
        }
        assert len(outputs) == 1
        assert set(connection_owners(pair.grpc_port, pids).values()) == set(pids)
    finally:
        for channel in channels:
            channel.close()


def test_metrics_count_the_requests_of_every_worker(pair: Pair, jpeg: bytes) -> None:
    """At least 40 requests on connections held by both workers: a scrape of either shows every one."""
    series = ("resnet_serve_requests_total", "resnet_serve_images_total", "resnet_serve_request_seconds_count")
    before = {name: metric_value(pair.server, name, model="resnet20") for name in series}
    connections: list[http.client.HTTPConnection] = []
    statuses: list[int] = []
    try:
        # A connection counts once it is answered (accepted, so a worker holds it); the kernel spreads new
        # connections at random, so open them until both workers hold some (8 at least).
        while len(connections) < 64:
            connection = http.client.HTTPConnection("127.0.0.1", pair.server.port, timeout=30)
            connections.append(connection)
            statuses.append(post_jpeg(connection, jpeg)[0])
            owners = set(connection_owners(pair.server.port, pair.pids()).values())
            if len(connections) >= 8 and owners == set(pair.pids()):
                break
        assert owners == set(pair.pids()), f"{len(connections)} connections, held by {owners} only"
        while len(statuses) < 40:
            statuses.append(post_jpeg(connections[len(statuses) % len(connections)], jpeg)[0])
    finally:
        for connection in connections:
            connection.close()
    assert statuses == [200] * len(statuses)
    for scrape in range(4):  # each on a new connection: whichever worker answers, the totals are whole
        after = {name: metric_value(pair.server, name, model="resnet20") for name in series}
        assert {name: after[name] - before[name] for name in series} == dict.fromkeys(series, float(len(statuses))), scrape
    text = httpx.get(pair.server.url("/metrics"), timeout=10).text
    assert "resnet_serve_ready 1.0" in text and 'resnet_serve_model_info{' in text


def test_a_killed_worker_is_replaced_and_only_its_connections_fail(pair: Pair, jpeg: bytes) -> None:
    """SIGKILL one worker under 12 keep-alive clients: the requests on its connections fail (at most one
    each: the client reconnects to a live worker), nothing else does, and a new worker takes the slot."""
    restarts = metric_value(pair.server, "resnet_serve_worker_restarts_total", cause="SIGKILL")
    pids = pair.pids()
    with KeepAliveLoad(pair.server.port, jpeg, clients=CLIENTS) as load:
        wait_until(lambda: load.count() > 100, 60, "load running")
        owners = connection_owners(pair.server.port, pids)
        victim = pids[0]
        doomed = {port for port, pid in owners.items() if pid == victim}
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(pair.pids()) == WORKERS and victim not in pair.pids(), 30, "a new worker started")
        wait_until(lambda: httpx.get(pair.server.url("/health/ready"), timeout=10).status_code == 200, 120,
                 "the new worker ready")
        replaced = time.monotonic()
        served_meanwhile = sum(1 for a in load.attempts if killed < a.started and a.finished < replaced and a.status == 200)
        time.sleep(1.0)
    failed = load.failures()
    on_doomed = [a for a in failed if a.client_port in doomed]
    # A client whose connection died reconnects at once; the dying worker's listener may still have taken
    # that connection in the microseconds before the kernel closed it.
    reconnects = [a for a in failed if a.client_port not in doomed and a.started < killed + 0.5]
    print(f"\nkilled worker held {len(doomed)} of {len(owners)} connections; {len(on_doomed)} requests failed on them, "
          f"{len(reconnects)} on reconnects; {len(load.attempts)} requests, {served_meanwhile} answered while it was "
          f"replaced ({replaced - killed:.1f} s)")
    assert doomed and len(owners) == CLIENTS
    assert not [a for a in failed if a not in on_doomed and a not in reconnects], failed[:5]
    assert len(on_doomed) <= len(doomed) and len(reconnects) <= len(doomed)
    assert all(a.started < killed < a.finished or a.started >= killed for a in failed)
    assert served_meanwhile > 0
    assert metric_value(pair.server, "resnet_serve_worker_restarts_total", cause="SIGKILL") == restarts + 1
    log = pair.server.log()
    assert f"(pid {victim}) died (SIGKILL)" in log and "joins the port once loaded" in log


def test_readiness_is_false_while_a_worker_warms(pair: Pair, jpeg: bytes) -> None:
    """A probe answered by the live worker says 503 (naming its sibling) until the replacement is warm,
    while /predict keeps answering from the live one."""
    victim = pair.pids()[-1]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in pair.pids(), 30, "the parent noticed")
    seen: list[tuple[int, str]] = []
    predictions = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        probe = httpx.get(pair.server.url("/health/ready"), timeout=10)
        seen.append((probe.status_code, probe.json().get("reason") or ""))
        if probe.status_code == 200:
            break
        predictions.append(httpx.post(pair.server.url(PREDICT), content=jpeg,
                                      headers={"Content-Type": "image/jpeg"}, timeout=30).status_code)
    statuses = [status for status, _ in seen]
    assert statuses[-1] == 200 and 503 in statuses, seen[-5:]
    reasons = {reason for status, reason in seen if status == 503}
    assert all(reason.startswith("worker ") and " of 2: " in reason for reason in reasons), reasons
    assert predictions and set(predictions) == {200}
    v2 = httpx.get(pair.server.url("/v2/health/ready"), timeout=10)
    assert v2.status_code == 200 and v2.json() == {"ready": True}
    workers = pair.models()["workers"]
    assert workers["agree"] and [w["ready"] for w in workers["workers"]] == [True, True]
    assert victim not in [w["pid"] for w in workers["workers"]]


def test_a_second_instance_cannot_join_the_ports(pair: Pair, model_repo: Path, tmp_path: Path) -> None:
    """SO_REUSEPORT would let a second service of the same user share the ports; the parent checks first."""
    repo = link_repository(model_repo, tmp_path, "resnet20")
    for port_flags, message in (
        (("--port", str(pair.server.port)), f"HTTP port 127.0.0.1:{pair.server.port} is in use"),
        (("--grpc-port", str(pair.grpc_port)), f"gRPC port 127.0.0.1:{pair.grpc_port} is in use"),
    ):
        with run_server(repo, "--workers", "2", *port_flags, wait="none") as second:
            second.wait(timeout=60)
            assert second.process.returncode == 1 and message in second.log(), second.log()[-2000:]
    assert httpx.get(pair.server.url("/health/ready"), timeout=10).status_code == 200


# --- servers of their own -----------------------------------------------------------------------------


def test_sigterm_under_load_loses_no_accepted_request(model_repo: Path, tmp_path: Path) -> None:
    """Both workers drain: every request that started before SIGTERM is answered 200, then the parent exits."""
    repo = tmp_path / "repo"
    link_model(model_repo, "resnet18", repo)
    photo = shared_path("data", "photos", "chelsea.jpg").read_bytes()
    with run_server(repo, "--workers", "2", "--shutdown-grace-s", "20") as server:
        # 16 connections: all on one worker once in 30,000 runs; the test needs both busy.
        with KeepAliveLoad(server.port, photo, clients=16, path="/predict?top_k=1") as load:
            wait_until(lambda: len({a.client_port for a in load.attempts if a.status == 200}) >= 16, 120, "load running")
            pids = worker_pids(server)
            busy = set(connection_owners(server.port, pids).values())
            signalled = time.monotonic()
            server.terminate()
            returncode = server.wait(timeout=40)
            exited = time.monotonic()
        log = server.log()
    accepted = [a for a in load.attempts if a.started < signalled - 0.1]
    in_flight = [a for a in accepted if a.finished > signalled]
    late = [a for a in load.attempts if a.started >= signalled - 0.1]
    print(f"\nSIGTERM with {len(in_flight)} accepted requests in flight on {len(busy)} workers: "
          f"{sum(a.status == 200 for a in in_flight)} x 200; exited after {exited - signalled:.2f} s; "
          f"later attempts {sorted({a.status for a in late})}")
    assert busy == set(pids) and in_flight
    assert [a for a in accepted if a.status != 200] == []
    assert all(a.status in (0, 200, 503) for a in late)
    assert returncode == 0 and exited - signalled < 22, (returncode, log[-2000:])
    assert log.count("SIGTERM: draining") == WORKERS and "Traceback" not in log, log[-3000:]


def test_a_new_version_reaches_both_workers_under_load(model_repo: Path, tmp_path: Path, jpeg: bytes) -> None:
    """Poll mode: each worker finds version 2 on its own; the index says READY only once both serve it."""
    repo = tmp_path / "repo"
    source = model_repo / "resnet20" / "1" / "model.onnx"
    publish(repo, "resnet20", 1, source)
    with run_server(repo, "--workers", "2", "--repository-poll-s", "0.5") as server:
        def index() -> dict[str, str]:
            rows = httpx.post(server.url("/v2/repository/index"), json={}, timeout=10).json()
            return {row["version"]: row["state"] for row in rows if row["name"] == "resnet20"}

        with KeepAliveLoad(server.port, jpeg, clients=8) as load:
            wait_until(lambda: load.count() > 50, 60, "load running")
            publish(repo, "resnet20", 2, source)
            wait_until(lambda: index() == {"2": "READY"}, 120, "version 2 READY on both workers")
            workers = httpx.get(server.url("/models"), timeout=10).json()["workers"]
            switched = time.monotonic()
            wait_until(lambda: sum(1 for a in load.attempts if a.started > switched and a.version == 2) >= 50, 60,
                     "answers from version 2")
    assert workers["agree"] and [w["serving"] for w in workers["workers"]] == [{"resnet20": [2]}] * 2
    assert load.failures() == []
    assert {a.version for a in load.attempts if a.started > switched} == {2}
    kept = {a.client_port for a in load.attempts if a.version == 1} & {a.client_port for a in load.attempts if a.version == 2}
    assert kept  # keep-alive connections carried on through the switch


def test_explicit_load_and_unload_reach_every_worker(model_repo: Path, tmp_path: Path, jpeg: bytes) -> None:
    """A control request lands on one worker; the answer comes once both have applied it, and a worker
    started later (in place of a killed one) applies it too."""
    repo = link_repository(model_repo, tmp_path, "resnet20", "resnet32")
    grpc_port = free_port()
    with run_server(repo, "--workers", "2", "--model-control", "explicit", "--grpc-port", str(grpc_port)) as server:
        def serving() -> list[dict]:
            return [w["serving"] for w in httpx.get(server.url("/models"), timeout=10).json()["workers"]["workers"]]

        def refused_everywhere() -> None:
            for _ in range(8):  # new connections, so both workers answer some
                ready = httpx.get(server.url("/v2/models/resnet32/ready"), timeout=10)
                answer = httpx.post(server.url("/predict?model=resnet32"), content=jpeg,
                                    headers={"Content-Type": "image/jpeg"}, timeout=30)
                assert (ready.status_code, answer.status_code, answer.json()["error"]["code"]) == (
                    400, 503, "model_unavailable")

        unload = httpx.post(server.url("/v2/repository/models/resnet32/unload"), timeout=60)
        assert unload.status_code == 200, unload.text
        assert serving() == [{"resnet20": [1]}] * 2
        refused_everywhere()
        victim = worker_pids(server)[0]
        os.kill(victim, signal.SIGKILL)  # its replacement loads the whole repository, then applies the unload
        wait_until(lambda: victim not in worker_pids(server)
                 and httpx.get(server.url("/health/ready"), timeout=10).status_code == 200, 120, "replaced")
        assert serving() == [{"resnet20": [1]}] * 2
        refused_everywhere()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="resnet32"), timeout=60)
        assert serving() == [{"resnet20": [1], "resnet32": [1]}] * 2
        failed = httpx.post(server.url("/v2/repository/models/nothing-here/load"), timeout=60)
        assert failed.status_code == 404
        assert httpx.get(server.url("/health/ready"), timeout=10).status_code == 200


def test_workers_whose_parent_is_killed_drain_and_free_the_ports(model_repo: Path, tmp_path: Path) -> None:
    """SIGKILL of the parent (an OOM kill, say) must not leave workers holding the ports: each notices and
    drains as on SIGTERM."""
    repo = link_repository(model_repo, tmp_path, "resnet20")
    grpc_port = free_port()
    with run_server(repo, "--workers", "2", "--grpc-port", str(grpc_port)) as server:
        pids = worker_pids(server)
        server.process.kill()
        server.wait(timeout=10)
        wait_until(lambda: not any(running(pid) for pid in pids), 60, "the workers exited")
        assert listening_sockets(server.port) == 0 and listening_sockets(grpc_port) == 0


# --- pieces, from tables ------------------------------------------------------------------------------


def row(version: str, state: str, reason: str = "", name: str = "m") -> dict[str, str]:
    return {"name": name, "version": version, "state": state, "reason": reason}


MERGES = [
    ("the same everywhere", {1: [row("1", "READY")], 2: [row("1", "READY")]}, [row("1", "READY")]),
    ("a new version on one worker only",
     {1: [row("1", "READY"), row("2", "READY")], 2: [row("1", "READY"), row("", "LOADING")]},
     [row("1", "READY"), row("2", "LOADING", "worker 1: READY; worker 2: absent"),
      row("", "LOADING", "worker 1: absent; worker 2: LOADING")]),
    ("refused on one worker",
     {1: [row("2", "UNAVAILABLE", "bad file")], 2: [row("2", "READY")]},
     [row("2", "UNAVAILABLE", "worker 1: UNAVAILABLE; worker 2: READY")]),
    ("the same refusal everywhere",
     {1: [row("2", "UNAVAILABLE", "bad file")], 2: [row("2", "UNAVAILABLE", "bad file")]},
     [row("2", "UNAVAILABLE", "bad file")]),
]


@pytest.mark.parametrize(("by_worker", "expected"), [m[1:] for m in MERGES], ids=[m[0] for m in MERGES])
def test_the_repository_index_merges_what_each_worker_serves(by_worker: dict, expected: list) -> None:
    assert merge_index(by_worker) == expected
    assert merge_index(by_worker, ready_only=True) == [r for r in expected if r["state"] == "READY"]


@pytest.mark.parametrize(("deaths", "pause"), [(1, 0.0), (2, 0.5), (3, 1.0), (4, 2.0), (8, 30.0), (50, MAX_BACKOFF_S)])
def test_restarts_back_off_when_a_worker_keeps_dying(deaths: int, pause: float) -> None:
    assert backoff_s(deaths) == pause


@pytest.mark.parametrize(("returncode", "cause"), [(-9, "SIGKILL"), (-11, "SIGSEGV"), (1, "exit 1"), (0, "exit 0")])
def test_how_a_worker_ended_is_a_short_label(returncode: int, cause: str) -> None:
    assert exit_cause(returncode) == cause

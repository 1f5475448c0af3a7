"""The gRPC door's listeners: several grpc.aio servers share one port, and behave as one server.

They exist for throughput (benchmarks/README.md has the figures); what these tests hold is that the
sharing changes nothing else: every connection is answered whichever listener the kernel hands it to,
``LIMIT_CONCURRENCY`` bounds the calls in flight across all of them, and SO_REUSEPORT does not let a
second instance join the port unnoticed.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from conftest import shared_path
from hostile import framed, slow_jpeg
from server import GrpcServer, free_port, grpc_server_fixture, link_repository, run_server
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.doors.sockets import claim_port, host_port

LISTENERS = 8
LIMIT = 2
GRPC_OWN_REFUSAL = "Concurrent RPC limit exceeded!"


def infer_request(jpeg: bytes) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="resnet20-encoded")
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(framed(jpeg))
    return request


def own_connection(port: int) -> grpc.Channel:
    """A channel with its own TCP connection (channels to one target share subchannels by default)."""
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])


#: LISTENERS gRPC listeners on one port, LIMIT calls in flight; no JPEG draft mode: the slow calls below
#: must really take their ~0.3 s to decode.
shared_port_server = grpc_server_fixture(
    "--grpc-listeners", str(LISTENERS), "--limit-concurrency", str(LIMIT), "--no-jpeg-draft"
)


def listening_sockets(port: int) -> int:
    """Sockets in LISTEN on ``port``, from the kernel's own tables (grpc listens on dual-stack IPv6 sockets,
    127.0.0.1 as ::ffff:127.0.0.1)."""
    tables = [Path("/proc/net", name) for name in ("tcp", "tcp6")]
    rows = [row for table in tables if table.exists() for row in table.read_text().splitlines()[1:]]
    return sum(1 for row in rows if row.split()[1].endswith(f":{port:04X}") and row.split()[3] == "0A")


def test_every_connection_is_answered_whichever_listener_takes_it(shared_port_server: GrpcServer) -> None:
    """Two connections per listener on average: the kernel spreads them, each one gets the same answer."""
    assert listening_sockets(shared_port_server.grpc_port) == LISTENERS
    request = infer_request(shared_path("data", "cifar10-sample", "cat", "0000.jpg").read_bytes())
    answers = []
    for _ in range(2 * LISTENERS):
        with own_connection(shared_port_server.grpc_port) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            answers.append(stub.ModelInfer(request, timeout=30).raw_output_contents[0])
    assert len(set(answers)) == 1


def test_limit_concurrency_counts_calls_on_every_listener_together(shared_port_server: GrpcServer) -> None:
    """12 slow calls on 12 connections against a limit of 2: the ones beyond it get RESOURCE_EXHAUSTED
    with a retry hint. Per-listener limits (grpc's own) would admit up to two per listener the
    connections landed on: about 10 of the 12 (6 were refused when this test was tried against them)."""
    request = infer_request(slow_jpeg())
    channels = [own_connection(shared_port_server.grpc_port) for _ in range(12)]
    try:
        for channel in channels:  # connect first, so the calls below arrive together
            grpc.channel_ready_future(channel).result(timeout=10)

        def call(channel: grpc.Channel) -> tuple[grpc.StatusCode, str, dict[str, str]]:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            try:
                stub.ModelInfer(request, timeout=60)
            except grpc.RpcError as error:
                return error.code(), error.details() or "", dict(error.trailing_metadata() or ())
            return grpc.StatusCode.OK, "", {}

        with ThreadPoolExecutor(len(channels)) as pool:
            answers = list(pool.map(call, channels))
    finally:
        for channel in channels:
            channel.close()
    codes = [code for code, _, _ in answers]
    refused = [(details, metadata) for code, details, metadata in answers if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, answers
    assert codes.count(grpc.StatusCode.OK) >= 1
    assert len(refused) >= 8, codes
    # Most refusals are the door's own, with a retry hint. grpc's per-listener limiter (the same size, kept
    # as a backstop that refuses before a message is read) answers a listener that got three of them.
    ours = [metadata for details, metadata in refused if f"more than {LIMIT} gRPC calls in flight" in details]
    assert ours, refused
    assert all(metadata.get("retry-after") == "1" for metadata in ours)
    assert all(details == GRPC_OWN_REFUSAL for details, metadata in refused if metadata not in ours)
    assert shared_port_server.stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10).ready


def test_every_way_a_call_ends_gives_its_slot_back(shared_port_server: GrpcServer) -> None:
    """Errors and client deadlines free their slot: after more of them than the limit, calls still pass."""
    missing = service_pb2.ModelReadyRequest(name="no-such-model")
    for _ in range(LIMIT + 1):
        with pytest.raises(grpc.RpcError) as refused:
            shared_port_server.stub.ModelReady(missing, timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    slow = infer_request(slow_jpeg((10, 20, 30)))
    for _ in range(LIMIT + 1):  # each one gives up long before its decode ends
        with pytest.raises(grpc.RpcError) as expired:
            shared_port_server.stub.ModelInfer(slow, timeout=0.05)
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    request = infer_request(shared_path("data", "cifar10-sample", "cat", "0000.jpg").read_bytes())
    deadline = time.monotonic() + 30
    while True:  # the server notices the cancellations within the decodes already running
        try:
            shared_port_server.stub.ModelInfer(request, timeout=30)
            break
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline, error
            time.sleep(0.2)
    for _ in range(LIMIT + 1):
        assert shared_port_server.stub.ModelInfer(request, timeout=30).raw_output_contents


def test_a_second_instance_cannot_join_the_port(shared_port_server: GrpcServer, model_repo: Path, tmp_path: Path) -> None:
    """SO_REUSEPORT lets any process of the same user bind the port too; ours checks first and exits."""
    repo = link_repository(model_repo, tmp_path, "resnet20")
    with run_server(repo, "--grpc-port", str(shared_port_server.grpc_port), wait="none") as second:
        deadline = time.monotonic() + 60
        while second.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not second.alive(), "a second server started on a gRPC port already served"
        assert f"gRPC port 127.0.0.1:{shared_port_server.grpc_port} is in use" in second.log()
    assert shared_port_server.stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live


def listening() -> socket.socket:
    """A listener set up as grpc's are (SO_REUSEADDR: its accepted sockets inherit it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_claim_port_refuses_a_port_something_listens_on() -> None:
    with listening() as sock, pytest.raises(RuntimeError, match="is in use"):
        claim_port("127.0.0.1", sock.getsockname()[1])


def test_claim_port_accepts_a_port_whose_old_connections_linger_in_time_wait() -> None:
    """A restarted server must get its port back at once: the server-side ends of its closed connections
    stay in TIME_WAIT for a minute, which a probe without SO_REUSEADDR would call in use."""
    with listening() as server:
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server closes first: its end goes to TIME_WAIT
        client.close()
    time.sleep(0.1)
    claim_port("127.0.0.1", port)


def test_claim_port_names_a_host_that_does_not_resolve() -> None:
    with pytest.raises(RuntimeError, match="does not resolve"):
        claim_port("no-such-host.invalid", free_port())


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", "127.0.0.1:8001"),
    ("0.0.0.0", "0.0.0.0:8001"),
    ("localhost", "localhost:8001"),
    ("::", "[::]:8001"),
    ("::1", "[::1]:8001"),
    ("[::1]", "[::1]:8001"),
])
def test_host_port_brackets_ipv6_literals(host: str, expected: str) -> None:
    assert host_port(host, 8001) == expected

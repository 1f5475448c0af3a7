"""Async HTTP load: closed loop (N clients, each sends when its last answer came) and open loop
(requests at a fixed arrival rate, latency counted from the scheduled send time, so a slow server
cannot hide queueing: no coordinated omission).

Bodies are multipart-encoded once up front, so the client spends its CPU on HTTP, not on encoding:
it shares the machine's cores with the server under test.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np

BOUNDARY = "resnetservebenchboundary7d1f"


@dataclass(frozen=True)
class Body:
    content: bytes
    content_type: str
    images: int


def multipart_body(files: list[tuple[str, bytes]], *, field_name: str) -> Body:
    """One multipart/form-data body; ``field_name`` 'file' for one image, 'files' repeated for several."""
    parts = []
    for filename, data in files:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n"
        )
    content = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    return Body(content, f"multipart/form-data; boundary={BOUNDARY}", len(files))


def bodies(payloads: list[tuple[str, bytes]], images_per_request: int) -> list[Body]:
    """Request bodies cycling through ``payloads``: single-image bodies use field ``file``."""
    if images_per_request == 1:
        return [multipart_body([payload], field_name="file") for payload in payloads]
    cycle = itertools.cycle(payloads)
    count = max(1, len(payloads) // images_per_request) if len(payloads) >= images_per_request else 1
    return [
        multipart_body([next(cycle) for _ in range(images_per_request)], field_name="files") for _ in range(count)
    ]


@dataclass
class LoadResult:
    scenario: str
    images_per_request: int
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, object]:
        ok = self.statuses.get("200", 0)
        latencies = np.array(self.latencies_s) if self.latencies_s else np.array([float("nan")])
        return {
            "scenario": self.scenario,
            "images_per_request": self.images_per_request,
            "seconds": round(self.seconds, 2),
            "requests_ok": ok,
            "requests_per_s": ok / self.seconds,
            "images_per_s": ok * self.images_per_request / self.seconds,
            "p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "p90_ms": 1000 * float(np.percentile(latencies, 90)),
            "p99_ms": 1000 * float(np.percentile(latencies, 99)),
            "errors": {status: count for status, count in self.statuses.items() if status != "200"},
        }


def client_row(
    scenario: str, *, requests_ok: int, requests_per_s: float, seconds: float, p50_ms: float, p90_ms: float,
    p99_ms: float, errors: dict[str, object], images_per_request: int = 1,
) -> dict[str, object]:
    """One phase of a native load client (wrk, perf_analyzer, h2load): :meth:`LoadResult.summary`'s fields and the load average."""
    return {
        "scenario": scenario,
        "images_per_request": images_per_request,
        "seconds": round(seconds, 2),
        "requests_ok": requests_ok,
        "requests_per_s": requests_per_s,
        "images_per_s": requests_per_s * images_per_request,
        "p50_ms": p50_ms,
        "p90_ms": p90_ms,
        "p99_ms": p99_ms,
        "errors": errors,
        "load_average_1m": round(os.getloadavg()[0], 2),  # other processes on these cores show up here
    }


def failed_row(scenario: str, client: str, why: str) -> dict[str, object]:
    """A one-image phase that measured nothing: zero throughput, NaN latencies, ``errors={client: why}``."""
    nan = float("nan")
    return client_row(scenario, requests_ok=0, requests_per_s=0.0, seconds=0.0, p50_ms=nan, p90_ms=nan, p99_ms=nan,
                      errors={client: why})


def _client(concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0))


async def _send(client: httpx.AsyncClient, url: str, body: Body) -> str:
    try:
        response = await client.post(url, content=body.content, headers={"content-type": body.content_type})
        await response.aread()
        return str(response.status_code)
    except httpx.TimeoutException:
        return "timeout"
    except httpx.HTTPError as exc:
        return type(exc).__name__


async def closed_loop(
    url: str, request_bodies: list[Body], *, concurrency: int, seconds: float, warmup_s: float
) -> LoadResult:
    """``concurrency`` clients, each sending its next request as soon as the previous one is answered."""
    result = LoadResult(f"closed c={concurrency}", request_bodies[0].images, seconds)
    async with _client(concurrency) as client:
        start = time.perf_counter() + warmup_s
        end = start + seconds

        async def worker(offset: int) -> None:
            for index in itertools.count(offset):
                began = time.perf_counter()
                if began >= end:
                    return
                status = await _send(client, url, request_bodies[index % len(request_bodies)])
                finished = time.perf_counter()
                if start <= finished <= end:  # completions inside the window, whenever sent
                    result.statuses[status] += 1
                    if status == "200":
                        result.latencies_s.append(finished - began)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return result


async def open_loop(
    url: str, request_bodies: list[Body], *, rate_per_s: float, seconds: float, warmup_s: float,
    max_outstanding: int = 512,
) -> LoadResult:
    """Requests scheduled every 1/rate seconds whatever the server does; counted if sent after warm-up."""
    result = LoadResult(f"open {rate_per_s:.0f} req/s", request_bodies[0].images, seconds)
    outstanding: set[asyncio.Task[None]] = set()
    async with _client(max_outstanding) as client:
        t0 = time.perf_counter()
        start, end = t0 + warmup_s, t0 + warmup_s + seconds

        async def one(scheduled: float, body: Body) -> None:
            status = await _send(client, url, body)
            if scheduled >= start:
                result.statuses[status] += 1
                if status == "200":
                    result.latencies_s.append(time.perf_counter() - scheduled)

        for index in itertools.count():
            scheduled = t0 + index / rate_per_s
            if scheduled >= end:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(outstanding) >= max_outstanding:
                if scheduled >= start:
                    result.statuses["client_overloaded"] += 1
                continue
            task = asyncio.create_task(one(scheduled, request_bodies[index % len(request_bodies)]))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        if outstanding:
            await asyncio.wait(outstanding, timeout=60)
    # Requests still running at the end took longer than the phase: their latency is in the tail already
    # counted by the others; throughput counts what completed within the measured window + drain.
    return result


def run_closed(url: str, request_bodies: list[Body], *, concurrency: int, seconds: float, warmup_s: float) -> dict[str, object]:
    return asyncio.run(
        closed_loop(url, request_bodies, concurrency=concurrency, seconds=seconds, warmup_s=warmup_s)
    ).summary()


def run_open(url: str, request_bodies: list[Body], *, rate_per_s: float, seconds: float, warmup_s: float) -> dict[str, object]:
    return asyncio.run(
        open_loop(url, request_bodies, rate_per_s=rate_per_s, seconds=seconds, warmup_s=warmup_s)
    ).summary()

"""Memory stays bounded under concurrent uploads: 500 connections each announcing a body one byte under
MAX_UPLOAD_BYTES, held open, while valid clients keep posting (real server, default limits).

What each attacker does is the worst it can: if the server lets it in, it sends its whole body as
fast as it can (some bodies are real 48-megapixel JPEGs, so the decoders are busy too); if the server
refuses it (503 server_busy before reading), it holds the connection open anyway. Attackers announce
``Expect: 100-continue`` so that "let in" is the server's own signal (uvicorn sends 100 Continue when
the application starts reading the body) rather than a timing guess on a busy box; a few more
attackers ignore everything and blast their bodies, which the server must discard without holding.
The valid clients must get answers or fast 503s (no timeout, no reset), RSS must stay within the
bound docs/hardening.md states (service.limits.budget.rss_bound) and below 1.5 GB, come back to within 200 MB of
where it started, and the service must stay ready. With ``--workers 2`` each worker holds its own budgets:
the bound counts them twice, and RSS is the parent's and both workers' together.
"""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import cifar_sample
from load import raw_http_request, send_raw
from PIL import Image
from server import link_repository, run_server
from watch import watched

from service.limits.budget import rss_bound
from service.limits.memory import pillow_cache_bytes
from service.settings import Settings

ATTACKERS = 500
BLASTERS = 4  # of which send their body at once, whatever the server says
BIG_JPEG_SHARE = 4  # every 4th admitted attacker sends a real 48 MP photo instead of garbage
WINDOW_S = 15.0
VALID_CLIENTS = 4
MB = 1024 * 1024


def big_jpeg(size: int) -> bytes:
    """A decodable 6000x8000 JPEG padded with zeros after its end marker to exactly ``size`` bytes."""
    ys, xs = np.mgrid[0:8000, 0:6000].astype(np.uint16)
    pixels = np.stack([(xs // 24) % 256, (ys // 32) % 256, ((xs + ys) // 64) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=70)
    data = buffer.getvalue()
    assert len(data) < size
    return data + b"\0" * (size - len(data))


@dataclass
class Tally:
    admitted: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    blasted: list[int] = field(default_factory=list)
    transport: list[str] = field(default_factory=list)
    valid: list[tuple[int, float, str | None]] = field(default_factory=list)


def status_of(answer: bytes) -> int:
    return int(answer.split()[1]) if answer.startswith(b"HTTP/1.1 ") else 0


async def attacker(index: int, port: int, body: bytes, stop: asyncio.Event, tally: Tally) -> None:
    blast = index < BLASTERS
    lines = ["POST /predict HTTP/1.1", "Host: 127.0.0.1", "Content-Type: image/jpeg", f"Content-Length: {len(body)}"]
    if not blast:
        lines.append("Expect: 100-continue")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        tally.transport.append(f"attacker {index} connect: {exc!r}")
        return
    try:
        writer.write(head)
        await writer.drain()
        answer = b""
        if not blast:
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 120)
        if blast or status_of(answer) == 100:  # let in (or not asking): send the whole body
            for offset in range(0, len(body), MB):
                writer.write(body[offset : offset + MB])
                await writer.drain()
            final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 120)
            (tally.blasted if blast else tally.admitted).append(status_of(final))
        else:
            tally.refused.append(status_of(answer))
        await stop.wait()  # hold the connection open until the window ends
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
        if not stop.is_set():
            tally.transport.append(f"attacker {index}: {exc!r}")
    finally:
        writer.close()


async def valid_client(port: int, request: bytes, stop: asyncio.Event, tally: Tally) -> None:
    while not stop.is_set():
        answer = await send_raw(port, request, timeout_s=30)
        tally.valid.append((answer.status, answer.seconds, answer.error or answer.error_code()))


async def attack(port: int, garbage: bytes, photo: bytes, valid_request: bytes, tally: Tally) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(valid_client(port, valid_request, stop, tally)) for _ in range(VALID_CLIENTS)]
    for index in range(ATTACKERS):
        body = photo if index % BIG_JPEG_SHARE == 0 else garbage
        tasks.append(asyncio.ensure_future(attacker(index, port, body, stop, tally)))
    await asyncio.sleep(WINDOW_S)
    stop.set()
    await asyncio.wait(tasks, timeout=150)


def queued_crop_bytes(answer: dict) -> int:
    return sum(model["batching"]["max_queue_size"] * int(np.prod(model["input_size"])) for model in answer["models"])


@pytest.mark.parametrize("workers", [1, 2])
def test_500_maximal_uploads_held_open_stay_within_the_memory_bound(
    model_repo: Path, tmp_path: Path, workers: int
) -> None:
    defaults = Settings(model_dir=tmp_path, workers=workers)
    size = defaults.max_upload_bytes - 1
    garbage = b"\xff\xd8" + bytes(size - 2)  # a JPEG signature, then nothing decodable
    photo = big_jpeg(size)
    sample = cifar_sample()
    repo = link_repository(model_repo, tmp_path / "repo", "resnet20")
    with run_server(repo, "--workers", str(workers)) as server:
        valid_request = raw_http_request(
            server.port, "/predict?model=resnet20", sample[0][0].read_bytes(), {"Content-Type": "image/jpeg"}
        )
        for path, _ in sample[:50]:  # warm every path a valid request takes
            httpx.post(server.url("/predict"), files={"file": ("x.jpg", path.read_bytes())}, timeout=30)
        time.sleep(1.0)
        # Each worker sized its queues at its own warm-up: the largest one's crops (new connections reach both).
        crops = max(queued_crop_bytes(httpx.get(server.url("/models"), timeout=10).json()) for _ in range(8))
        tally = Tally()
        with watched(server, liveness=False) as watch:
            asyncio.run(attack(server.port, garbage, photo, valid_request, tally))
            time.sleep(3.0)
        ready = httpx.get(server.url("/health/ready"), timeout=10).status_code
    before, peak, after = watch.rss_before, watch.rss_peak, watch.rss_after
    bound = rss_bound(
        before, max_inflight_bytes=defaults.max_inflight_bytes, max_inflight_pixels=defaults.max_inflight_pixels,
        max_image_pixels=defaults.max_image_pixels, limit_concurrency=defaults.limit_concurrency,
        queued_crop_bytes=crops, image_cache_bytes=pillow_cache_bytes(defaults.decode_threads), workers=workers,
    )
    print(
        f"\n{workers} worker(s): RSS before {before / MB:.0f} MB, peak {peak / MB:.0f} MB (bound {bound / MB:.0f} MB), after {after / MB:.0f} MB;"
        f" attackers admitted {len(tally.admitted)} {sorted(set(tally.admitted))}, refused {len(tally.refused)}"
        f" {sorted(set(tally.refused))}, blasting {len(tally.blasted)} {sorted(set(tally.blasted))};"
        f" valid {len(tally.valid)}: "
        f"{ {s: sum(1 for v in tally.valid if v[0] == s) for s in {v[0] for v in tally.valid}} }"
    )
    assert not tally.transport, tally.transport[:5]
    assert len(tally.admitted) + len(tally.refused) + len(tally.blasted) == ATTACKERS
    assert tally.refused and set(tally.refused) == {503}  # the budget refused most before their bodies
    read = tally.admitted + tally.blasted
    assert {200, 415} <= set(read) <= {200, 415, 422, 503}  # photos classified, garbage refused
    statuses = [status for status, _, _ in tally.valid]
    assert statuses and set(statuses) <= {200, 503}, set(statuses)
    assert statuses.count(200) > 0
    busy = [(seconds, code) for status, seconds, code in tally.valid if status == 503]
    assert all(code in ("server_busy", "queue_full") and seconds < 1.0 for seconds, code in busy), busy[:5]
    assert peak <= bound, f"peak {peak / MB:.0f} MB over the stated bound {bound / MB:.0f} MB"
    assert peak < 1.5e9
    assert after - before < workers * 200 * MB, f"RSS {before / MB:.0f} -> {after / MB:.0f} MB"
    assert ready == 200

"""About 5x the saturating load on a real server with a small queue, for a bounded time.

Measured, not assumed: the test first finds the server's capacity with a closed loop, then sends an
open-loop flood at five times that rate for :data:`FLOOD_S` seconds. Requests beyond the queue must
get 503 ``queue_full`` with ``Retry-After`` quickly (p99 asserted below :data:`P99_REJECT_LIMIT_S`,
generous for a shared 2-core CI box; the figure measured is printed: the issue's target is 50 ms),
admitted ones must finish within the request timeout, and afterwards readiness and throughput
come back on their own.
"""

from __future__ import annotations

import asyncio
import io

import httpx
from conftest import shared_path
from load import closed_loop, open_loop, percentile, predict_request
from PIL import Image
from server import RunningServer, server_fixture

FLOOD_S = 12.0
OVERLOAD_FACTOR = 5.0
REQUEST_TIMEOUT_S = 15.0
P99_REJECT_LIMIT_S = 0.25
QUEUE_SIZE = 8


#: resnet18 (ImageNet-sized: inference, not HTTP, is the bottleneck) behind a small queue.
overload_server = server_fixture(
    "--max-queue-size", str(QUEUE_SIZE),
    "--max-batch-size", "8",
    "--request-timeout-s", str(REQUEST_TIMEOUT_S),
    "--intra-op-threads", "1",  # leave the second core to the event loop, decoding and this client
    "--preprocess-threads", "1",
    models=("resnet18",),
)


def test_five_times_saturation_gets_fast_503s_and_recovers(overload_server: RunningServer) -> None:
    photo = Image.open(shared_path("data", "photos", "chelsea.jpg")).convert("RGB").resize((256, 256))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    image = buffer.getvalue()
    request = predict_request(overload_server.port, image)

    capacity, warm = asyncio.run(closed_loop(overload_server.port, request, concurrency=QUEUE_SIZE, duration_s=4.0))
    assert capacity > 0 and {o.status for o in warm} == {200}, {(o.status, o.code) for o in warm}
    rate = OVERLOAD_FACTOR * capacity
    outcomes = asyncio.run(open_loop(overload_server.port, request, rate, FLOOD_S))

    accepted = [o for o in outcomes if o.status == 200]
    rejected = [o for o in outcomes if o.status == 503]
    others = [o for o in outcomes if o.status not in (200, 503)]
    reject_p50, reject_p99 = percentile([o.seconds for o in rejected], 50), percentile([o.seconds for o in rejected], 99)
    accept_p99 = percentile([o.seconds for o in accepted], 99)
    print(
        f"\ncapacity {capacity:.1f} req/s; flood {rate:.0f} req/s for {FLOOD_S:.0f} s = {len(outcomes)} requests: "
        f"{len(accepted)} x 200 (p99 {accept_p99 * 1000:.0f} ms, max {max(o.seconds for o in accepted) * 1000:.0f} ms), "
        f"{len(rejected)} x 503 (p50 {reject_p50 * 1000:.1f} ms, p99 {reject_p99 * 1000:.1f} ms), {len(others)} other"
    )
    assert not others, sorted({(o.status, o.code) for o in others})
    assert accepted and rejected
    assert all(o.code == "queue_full" and o.retry_after == "1" for o in rejected), {(o.code, o.retry_after) for o in rejected}
    assert reject_p99 < P99_REJECT_LIMIT_S, f"p99 of rejections {reject_p99 * 1000:.0f} ms"
    assert max(o.seconds for o in accepted) < REQUEST_TIMEOUT_S
    assert overload_server.alive()

    # Afterwards: ready at once, and the throughput is back (within noise of a shared box).
    assert httpx.get(overload_server.url("/health/ready"), timeout=5).status_code == 200
    recovered, after = asyncio.run(closed_loop(overload_server.port, request, concurrency=QUEUE_SIZE, duration_s=4.0))
    print(f"throughput after the flood {recovered:.1f} req/s (before {capacity:.1f})")
    assert {o.status for o in after} == {200}
    assert recovered > 0.5 * capacity

"""A small closed-loop load check of a running service: requests/s and p50/p99 at a few concurrencies.

    python -m benchmarks.quick_load --url http://127.0.0.1:8000 --model resnet20 --image ../shared/data/cifar10-sample/cat/0000.jpg
    python -m benchmarks.quick_load --url http://127.0.0.1:8000 --model resnet50 --image photo.jpg --concurrency 1,8,32

The client is Python (httpx, one event loop) and shares the machine's cores with the service, so
the figures are a floor; ``python -m benchmarks`` is the full, side-by-side suite.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import httpx


async def closed_loop(
    url: str, model: str, image: bytes, *, concurrency: int, seconds: float, images_per_request: int
) -> dict[str, float]:
    """``concurrency`` clients each send their next request as soon as the previous one is answered."""
    files = [("files" if images_per_request > 1 else "file", (f"{i}.jpg", image, "image/jpeg")) for i in range(images_per_request)]
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        for _ in range(2):  # open every connection and warm the service before timing
            await asyncio.gather(
                *(client.post(f"/predict?model={model}&top_k=1", files=files) for _ in range(concurrency))
            )
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal failures
            while time.perf_counter() < stop:
                started = time.perf_counter()
                response = await client.post(f"/predict?model={model}&top_k=1", files=files)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    count = len(latencies)
    return {
        "concurrency": concurrency,
        "requests_per_s": count / elapsed,
        "images_per_s": count * images_per_request / elapsed,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[min(count - 1, int(0.99 * count))] if latencies else float("nan"),
        "failures": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", type=Path, required=True, help="JPEG sent in every request")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--images-per-request", type=int, default=1)
    args = parser.parse_args()
    image = args.image.read_bytes()
    print(f"model {args.model}, {args.images_per_request} image(s)/request of {len(image)} bytes, {args.seconds:g} s per level")
    print(f"{'clients':>7} {'req/s':>9} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for level in (int(c) for c in args.concurrency.split(",")):
        row = asyncio.run(
            closed_loop(args.url, args.model, image, concurrency=level, seconds=args.seconds,
                        images_per_request=args.images_per_request)
        )
        print(f"{level:>7} {row['requests_per_s']:>9.1f} {row['images_per_s']:>9.1f} {row['p50_ms']:>8.1f} "
              f"{row['p99_ms']:>8.1f} {row['failures']:>6}")


if __name__ == "__main__":
    main()

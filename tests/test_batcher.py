"""The batcher alone, with a fake ``run_batch`` (the HTTP tests drive it with real models).

The fake is a plain function of the stacked pixels, so every property here is about batching:
timing (size-or-time flush, a lone request not held back), cancellation (abandoned images never
run), errors (a failing or short batch fails only its waiters, at once), shutdown under load (drain
waits for reserved, queued and running work, and never blocks the event loop), and that worker
threads never touch asyncio futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from service.engine.batcher import Batcher, Queued
from service.errors import ServiceError
from service.metrics import Metrics


def pixels(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, dtype=np.uint8)


class FakeModel:
    """Echoes each image's first pixel as its output row; records batch sizes and the calling thread."""

    def __init__(self, delay_s: float = 0.0, fail_when: Callable[[np.ndarray], bool] | None = None,
                 drop_rows: int = 0) -> None:
        self.delay_s = delay_s
        self.fail_when = fail_when
        self.drop_rows = drop_rows
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.seen: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.batches.append(len(batch))
        self.seen.extend(int(v) for v in batch[:, 0, 0, 0])
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_when is not None and self.fail_when(batch):
            raise RuntimeError("model failure")
        rows = batch[:, 0, 0, :1].astype(np.float32)
        return rows[: len(rows) - self.drop_rows] if self.drop_rows else rows


def make(model: FakeModel, *, instances: int = 1, max_batch: int = 8, delay_ms: float = 20.0, queue: int = 64) -> Batcher:
    batcher = Batcher(
        "fake", [model] * instances, max_batch_size=max_batch, max_delay_s=delay_ms / 1000,
        max_queue_size=queue, metrics=Metrics(),
    )
    batcher.start()
    return batcher


async def classify(batcher: Batcher, values: list[int]) -> list[float]:
    batcher.reserve(len(values))
    queued = batcher.submit([pixels(v) for v in values])
    return [float(row[0]) for row in await asyncio.gather(*(item.future for item in queued))]


def on_event_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """An ``async def`` test run to completion on a fresh event loop (the service's loop is asyncio's)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


@contextlib.asynccontextmanager
async def batching(model: FakeModel, **options: Any) -> AsyncIterator[Batcher]:
    """A started batcher on ``model`` (see :func:`make`), drained when the block ends."""
    batcher = make(model, **options)
    try:
        yield batcher
    finally:
        await batcher.drain(5)


@on_event_loop
async def test_each_image_gets_its_own_row_and_concurrent_requests_share_batches() -> None:
    model = FakeModel(delay_s=0.01)
    async with batching(model, max_batch=8) as batcher:
        for _ in range(8):
            batcher.reserve(4)  # eight requests admitted at once, decoding
        requests = [asyncio.ensure_future(_submit_reserved(batcher, list(range(start, start + 4))))
                    for start in range(0, 32, 4)]
        answers = await asyncio.gather(*requests)
        assert [a for answer in answers for a in answer] == [float(v) for v in range(32)]
        assert max(model.batches) == 8 and sum(model.batches) == 32


async def _submit_reserved(batcher: Batcher, values: list[int]) -> list[float]:
    await asyncio.sleep(0)
    queued = batcher.submit([pixels(v) for v in values])
    return [float(row[0]) for row in await asyncio.gather(*(item.future for item in queued))]


@on_event_loop
async def test_a_lone_request_is_not_held_for_the_batch_delay() -> None:
    async with batching(FakeModel(), delay_ms=500) as batcher:
        started = time.perf_counter()
        assert await classify(batcher, [7]) == [7.0]
        assert time.perf_counter() - started < 0.25  # nothing else was decoding: it ran at once


@on_event_loop
async def test_the_oldest_image_waits_at_most_the_delay_while_others_decode() -> None:
    async with batching(FakeModel(), delay_ms=60, max_batch=8) as batcher:
        batcher.reserve(2)  # two images admitted; only one arrives, the other is "still decoding"
        started = time.perf_counter()
        (queued,) = batcher.submit([pixels(1)])
        await queued.future
        waited = time.perf_counter() - started
        assert 0.05 <= waited < 0.5, waited
        batcher.release(1)


@on_event_loop
async def test_abandoned_images_never_reach_the_model() -> None:
    model = FakeModel(delay_s=0.2)
    async with batching(model, max_batch=1) as batcher:
        first = asyncio.ensure_future(classify(batcher, [1]))
        await asyncio.sleep(0.05)  # image 1 is running; image 2 queues behind it
        batcher.reserve(1)
        (second,) = batcher.submit([pixels(2)])
        second.future.cancel()  # its request gave up (timeout, disconnect)
        assert await first == [1.0]
        await asyncio.sleep(0.3)
        assert model.seen == [1]


@on_event_loop
async def test_a_failing_batch_fails_only_its_waiters_and_the_next_batch_runs() -> None:
    model = FakeModel(fail_when=lambda batch: bool((batch == 13).any()))
    async with batching(model, max_batch=4) as batcher:
        with pytest.raises(ServiceError) as failed:
            await classify(batcher, [13, 14])
        assert failed.value.status == 500 and failed.value.code == "inference_failed"
        assert await classify(batcher, [15]) == [15.0]
        assert batcher.running


@on_event_loop
async def test_a_result_with_the_wrong_number_of_rows_fails_the_batch_at_once() -> None:
    async with batching(FakeModel(drop_rows=1), max_batch=4) as batcher:
        started = time.perf_counter()
        with pytest.raises(ServiceError) as failed:
            await asyncio.wait_for(classify(batcher, [1, 2, 3]), 5)
        assert failed.value.status == 500 and "2 output rows for 3 images" in failed.value.message
        assert time.perf_counter() - started < 1.0


@on_event_loop
async def test_worker_threads_only_run_the_model_and_several_instances_run_in_parallel() -> None:
    model = FakeModel(delay_s=0.2)
    async with batching(model, instances=2, max_batch=1) as batcher:
        started = time.perf_counter()
        assert await asyncio.gather(classify(batcher, [1]), classify(batcher, [2])) == [[1.0], [2.0]]
        assert time.perf_counter() - started < 0.35  # two instances: both batches at once
        assert all(name.startswith("infer-fake") for name in model.threads) and len(model.threads) == 2


@on_event_loop
async def test_futures_are_resolved_on_the_event_loop_thread() -> None:
    async with batching(FakeModel(delay_s=0.01)) as batcher:
        loop_thread = threading.current_thread()
        resolved_on: list[threading.Thread] = []
        batcher.reserve(1)
        (queued,) = batcher.submit([pixels(3)])
        queued.future.add_done_callback(lambda _: resolved_on.append(threading.current_thread()))
        await queued.future
        await asyncio.sleep(0)
        assert resolved_on == [loop_thread]


@on_event_loop
async def test_queue_limit_refuses_before_any_work_and_counts_reserved_images() -> None:
    async with batching(FakeModel(), queue=4) as batcher:
        batcher.reserve(3)
        with pytest.raises(ServiceError) as full:
            batcher.check_capacity(2)
        assert full.value.status == 503 and full.value.code == "queue_full" and full.value.headers
        with pytest.raises(ServiceError) as too_many:
            batcher.reserve(5)
        assert too_many.value.status == 413
        batcher.release(3)
        batcher.check_capacity(4)


@on_event_loop
async def test_drain_under_load_finishes_reserved_queued_and_running_work_without_blocking_the_loop() -> None:
    batcher = make(FakeModel(delay_s=0.05), max_batch=4)
    running = asyncio.ensure_future(classify(batcher, list(range(8))))
    await asyncio.sleep(0.01)
    batcher.reserve(2)  # a request still decoding when shutdown begins
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    beat = asyncio.ensure_future(heartbeat())
    drain = asyncio.ensure_future(batcher.drain(5))
    await asyncio.sleep(0.02)
    with pytest.raises(ServiceError) as refused:
        batcher.check_capacity(1)  # no new work once draining
    assert refused.value.code == "shutting_down"
    late = batcher.submit([pixels(100), pixels(101)])  # ...but the reserved images still run
    assert await running == [float(v) for v in range(8)]
    assert [float(row[0]) for row in await asyncio.gather(*(item.future for item in late))] == [100.0, 101.0]
    await drain
    beat.cancel()
    assert ticks >= 10  # the loop kept turning throughout
    assert not batcher.running


@on_event_loop
async def test_drain_gives_up_at_its_timeout_and_fails_what_is_left() -> None:
    batcher = make(FakeModel(delay_s=0.5), max_batch=1)
    first = asyncio.ensure_future(classify(batcher, [1]))
    await asyncio.sleep(0.05)
    batcher.reserve(1)
    (queued,) = batcher.submit([pixels(2)])
    started = time.perf_counter()
    await batcher.drain(0.2)
    assert time.perf_counter() - started < 0.45
    with pytest.raises(ServiceError) as stopped:
        await queued.future
    assert stopped.value.status == 503
    assert await first == [1.0]  # the running batch still delivers


def dropped(metrics: Metrics) -> dict[str, float]:
    """``resnet_serve_images_dropped_total`` by reason."""
    return {
        sample.labels["reason"]: sample.value
        for family in metrics.registry.collect() if family.name == "resnet_serve_images_dropped"
        for sample in family.samples if sample.name.endswith("_total")
    }


async def _queued_behind_a_running_image(
    batcher: Batcher, timeout_s: float = float("inf")
) -> tuple[asyncio.Future[list[float]], Queued]:
    """Image 1 running (the only instance, batches of one), image 2 queued behind it."""
    first = asyncio.ensure_future(classify(batcher, [1]))
    await asyncio.sleep(0.05)
    batcher.reserve(1)
    (second,) = batcher.submit([pixels(2)], timeout_s)
    return first, second


async def _deadline_passes_in_the_queue(batcher: Batcher) -> Queued:
    first, second = await _queued_behind_a_running_image(batcher, timeout_s=0.05)
    assert await first == [1.0]
    with pytest.raises(ServiceError) as late:
        await second.future  # failed when the collector reached it, not run
    assert late.value.status == 504 and late.value.code == "timeout"
    return second


async def _client_hangs_up_while_queued(batcher: Batcher) -> Queued:
    first, second = await _queued_behind_a_running_image(batcher)
    batcher.abandon([second], "disconnect")
    assert batcher.load == 0  # its slot came back at once, before the collector reached it
    batcher.check_capacity(batcher.max_queue_size)
    assert await first == [1.0]
    return second


async def _drain_runs_out_of_grace(batcher: Batcher) -> Queued:
    _, second = await _queued_behind_a_running_image(batcher)
    await batcher.drain(0.05)
    with pytest.raises(ServiceError) as stopped:
        await second.future
    assert stopped.value.code == "shutting_down"
    return second


#: (case, what happens to image 2 while image 1 runs, the drop reason counted)
DROPS = [
    ("its deadline passes in the queue", _deadline_passes_in_the_queue, "deadline"),
    ("its client hangs up while it queues", _client_hangs_up_while_queued, "disconnect"),
    ("the drain's grace runs out", _drain_runs_out_of_grace, "shutdown"),
]


@pytest.mark.parametrize(("case", "reason"), [(c[1], c[2]) for c in DROPS], ids=[c[0] for c in DROPS])
def test_an_image_nobody_waits_for_is_dropped_unrun_and_counted_by_reason(
    case: Callable[[Batcher], Coroutine[Any, Any, Queued]], reason: str
) -> None:
    async def scenario() -> None:
        metrics = Metrics()
        model = FakeModel(delay_s=0.2)
        batcher = Batcher("fake", [model], max_batch_size=1, max_delay_s=0.001, max_queue_size=8, metrics=metrics)
        batcher.start()
        await case(batcher)
        await asyncio.sleep(0.3)  # time enough for image 2 to have run, had it not been dropped
        assert model.seen == [1]
        assert dropped(metrics) == {reason: 1.0}
        assert batcher.load == 0
        await batcher.drain(5)

    asyncio.run(scenario())


@on_event_loop
async def test_abandoning_a_running_image_drops_nothing() -> None:
    metrics = Metrics()
    model = FakeModel(delay_s=0.1)
    batcher = Batcher("fake", [model], max_batch_size=1, max_delay_s=0.001, max_queue_size=8, metrics=metrics)
    batcher.start()
    batcher.reserve(1)
    (running,) = batcher.submit([pixels(1)])
    await asyncio.sleep(0.05)
    batcher.abandon([running], "deadline")  # already on the instance: it finishes, its row is dropped
    await asyncio.sleep(0.1)
    assert model.seen == [1] and running.future.cancelled()
    assert dropped(metrics) == {}
    await batcher.drain(5)

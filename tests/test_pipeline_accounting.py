"""How ``Pipeline.account`` counts a request that ended abnormally, generated from data.

A status label of 5xx must mean the server failed: a client that cancelled is 499, a request the
server aborted because its drain grace ran out is 503, a service error keeps its own status, and
anything unexpected stays 500. (h2load resets its open streams at the end of every run; those were
counted as 500s.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.errors import ServiceError
from service.metrics import Metrics
from service.pipeline.call import CLIENT_CLOSED, V2_GRPC
from service.pipeline.core import Pipeline
from service.settings import Settings
from service.state import ServiceState


async def _cancelled_from_outside() -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().call_soon(task.cancel)
    await asyncio.sleep(10)


async def _service_error() -> None:
    raise ServiceError(504, "timeout", "not answered in time")


async def _bug() -> None:
    raise RuntimeError("a bug")


#: (case, what the request does, draining, the status counted, the exception that escapes)
CASES = [
    ("client cancelled", _cancelled_from_outside, False, str(CLIENT_CLOSED), asyncio.CancelledError),
    ("aborted by the drain", _cancelled_from_outside, True, "503", asyncio.CancelledError),
    ("timeout keeps its 504", _service_error, False, "504", ServiceError),
    ("a bug stays 500", _bug, False, "500", RuntimeError),
]


@pytest.mark.parametrize(("work", "draining", "status", "escapes"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_an_abnormal_end_is_counted_with_the_status_it_deserves(
    tmp_path: Path, work: object, draining: bool, status: str, escapes: type[BaseException]
) -> None:
    metrics = Metrics()
    state = ServiceState(Settings(model_dir=tmp_path), metrics)
    state.draining = draining
    pipeline = Pipeline(state)

    async def request() -> None:
        with pipeline.account(V2_GRPC):
            await work()  # type: ignore[operator]

    try:
        with pytest.raises(escapes):
            asyncio.run(request())
    finally:
        state.decode_pool.shutdown(wait=False)
    counted = {
        sample.labels["status"]: sample.value
        for family in metrics.registry.collect() if family.name == "resnet_serve_requests"
        for sample in family.samples if sample.name == "resnet_serve_requests_total"
    }
    assert counted == {status: 1.0}

"""asyncio helpers for the hot path that create no task per call.

``asyncio.wait_for`` wraps its awaitable in a new task on every call (Python 3.11); on the request
path (each body chunk, each batch wait) that was a measurable share of the event loop's time.
:func:`deadline` is ``asyncio.timeout`` where it exists (one timer handle, no task) and falls back to
``wait_for`` on Python 3.10; :func:`wait_event` waits for an event with a plain timer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

HAVE_TIMEOUT = hasattr(asyncio, "timeout")


async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """``await awaitable``, raising ``TimeoutError`` after ``seconds`` (None: no limit)."""
    if seconds is None:
        return await awaitable
    if HAVE_TIMEOUT:
        async with asyncio.timeout(seconds):  # type: ignore[attr-defined]
            return await awaitable
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
        raise TimeoutError() from None


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True when it was set by someone else."""
    if event.is_set():
        return True
    loop = asyncio.get_running_loop()
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        event.set()

    handle = loop.call_later(seconds, expire)
    try:
        await event.wait()
    finally:
        handle.cancel()
    return not fired


async def in_daemon_thread(function: Callable[..., T], *args: Any, timeout_s: float) -> T:
    """``function(*args)`` on a daemon thread of its own, raising ``TimeoutError`` after ``timeout_s``.

    For blocking calls that may never return (a file system that stopped answering): unlike
    ``asyncio.to_thread``, whose pool threads are joined at exit, a thread left behind here holds
    neither a pool slot nor the process.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = function(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            error = exc
            outcome: Callable[[], None] = lambda: future.set_exception(error)  # noqa: E731
        else:
            outcome = lambda: future.set_result(result)  # noqa: E731
        try:
            loop.call_soon_threadsafe(settle, outcome)
        except RuntimeError:  # the loop closed while this call hung: nobody is waiting for it any more
            pass

    threading.Thread(target=run, name=getattr(function, "__name__", "blocking call"), daemon=True).start()
    return await within(future, timeout_s)

"""What the routing table holds: models by name, their loaded versions, and the versions refused.

A request takes a *lease* on the version it resolved, so a version switch never pulls a model from
under it: a retiring version waits for its leases and its queued images before it stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from service.engine.batcher import Batcher
from service.engine.model_settings import ModelSettings
from service.engine.runtime import LoadedModel

log = logging.getLogger(__name__)

LOADING = "loading"
READY = "ready"


class ServedVersion:
    """One loaded version: its session and batcher, and how many requests hold it right now."""

    def __init__(self, model: LoadedModel, settings: ModelSettings, batcher: Batcher) -> None:
        self.model = model
        self.settings = settings
        self.batcher = batcher
        self.leases = 0
        self.retiring = False
        self.loaded_at = time.time()
        self._unheld = asyncio.Event()
        self._unheld.set()

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> int:
        return self.model.entry.version

    @property
    def fingerprint(self) -> tuple[int, int, int]:
        return self.model.entry.fingerprint

    @contextmanager
    def lease(self) -> Iterator[ServedVersion]:
        """Held by a request from resolving its model to its answer: retirement waits for it."""
        self.leases += 1
        self._unheld.clear()
        try:
            yield self
        finally:
            self.leases -= 1
            if self.leases == 0:
                self._unheld.set()

    async def retire(self, timeout_s: float) -> None:
        """Let holders and queued images finish (up to ``timeout_s``), then stop the batcher."""
        self.retiring = True
        deadline = time.monotonic() + timeout_s
        try:
            await asyncio.wait_for(self._unheld.wait(), timeout_s)
        except asyncio.TimeoutError:
            log.warning("%s v%d: %d requests still hold it after %.0f s; stopping it anyway",
                        self.name, self.version, self.leases, timeout_s)
        await self.batcher.drain(max(0.1, deadline - time.monotonic()))


@dataclass
class Refusal:
    """A version that failed to load, remembered until its folder changes."""

    fingerprint: tuple[int, int, int]
    reason: str
    at: float = field(default_factory=time.time)


@dataclass
class ServedModel:
    """One model name: the versions it routes to and what was refused."""

    name: str
    settings: ModelSettings
    versions: dict[int, ServedVersion] = field(default_factory=dict)
    refused: dict[int, Refusal] = field(default_factory=dict)
    config_error: str | None = None
    config_fingerprint: tuple[int, int, int] | None = None
    on_disk: tuple[int, ...] = ()
    unloaded: bool = False  # explicit mode: unloaded through the API, stays so until loaded again
    loading: bool = False

    def latest(self) -> ServedVersion | None:
        return self.versions[max(self.versions)] if self.versions else None

    def status(self) -> str:
        if self.versions:
            return READY
        if self.loading:
            return LOADING
        if self.unloaded:
            return "unloaded"
        reasons = [f"v{v}: {r.reason}" for v, r in sorted(self.refused.items())]
        if self.config_error:
            reasons.insert(0, self.config_error)
        return "failed: " + ("; ".join(reasons) or "no version on disk")

"""A worker process's view of its siblings: one answer on readiness, the repository and explicit control.

Every request lands on whichever worker the kernel picked, so what a worker says about the service
must hold for all of them. Each worker publishes its own state to ``<run dir>/workers/<slot>.json``
(:data:`PUBLISH_S` apart, only when it changed) and reads its siblings' files when asked:

- readiness is true only when this worker and every sibling are ready; a slot whose worker died says
  why (the parent writes it) until its replacement is loaded, warm and ready;
- the V2 repository index merges every worker's rows: a version is READY only where every worker
  serves it, otherwise the row says which worker is where; ``/models`` lists each worker's versions;
- an explicit load or unload runs here, is recorded in ``control.json`` and answered once every live
  sibling has applied it (each follows the file; a replacement applies it after its first load).

Files rather than calls between workers: a probe never waits for a sibling's busy event loop, and the
record of explicit requests is also what a restarted worker needs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.errors import ServiceError
from service.workers.rundir import RunDir, Status, WorkerSpec, alive

if TYPE_CHECKING:
    from service.engine.manager import ModelManager
    from service.state import ServiceState

#: The V2 repository index rows of one process (``service.doors.v2.protocol.repository_index``; passed in,
#: since the doors sit above the state this module hangs from).
IndexRows = Callable[["ModelManager"], list[dict[str, str]]]

log = logging.getLogger("service.workers")

#: Seconds between two looks at this worker's state (published when it changed) and at control.json.
PUBLISH_S = 0.1


class WorkerLink:
    """Attached to one worker's :class:`~service.state.ServiceState` as ``state.workers``."""

    def __init__(self, spec: WorkerSpec, state: ServiceState, index_rows: IndexRows) -> None:
        self.spec = spec
        self.state = state
        self.index_rows = index_rows
        self.settings = state.settings
        self.run_dir = RunDir(Path(spec.run_dir))
        self.joined = not spec.late
        #: Explicit control: this worker has applied control.json after its first load.
        self.replayed = self.settings.model_control != "explicit"
        self._seen: dict[str, int] = {}
        self._results: dict[str, dict[str, Any]] = {}
        self._published: Status | None = None
        self._task: asyncio.Task[None] | None = None
        self._following: asyncio.Task[None] | None = None
        self._control_done = -1  # control.json's stamp when it last had nothing new for this worker
        self._orphaned = False
        if spec.replaces is not None:
            state.metrics.worker_restarts.labels(spec.replaces).inc()

    def sockets(self) -> list[socket.socket]:
        """The listening sockets the parent bound for this worker (uvicorn serves them)."""
        return [socket.socket(fileno=fd) for fd in self.spec.fds]

    @property
    def others(self) -> list[int]:
        return [slot for slot in range(1, self.spec.workers + 1) if slot != self.spec.slot]

    # --- lifecycle (the app's lifespan) ----------------------------------------------------------

    async def start(self) -> None:
        """Publish from now on; a late worker returns once loaded (uvicorn listens right after)."""
        self._task = asyncio.get_running_loop().create_task(self._publish_forever(), name="worker-publish")
        if self.spec.late:
            while not (self.state.manager.started and self.replayed) and not self.state.shutting_down:
                await asyncio.sleep(PUBLISH_S)
            log.info("worker %d joins the ports: models loaded", self.spec.slot)
        self.joined = True
        self._publish()

    async def stop(self) -> None:
        for task in (self._task, self._following):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._publish()

    async def _publish_forever(self) -> None:
        while True:
            if os.getppid() != self.spec.parent and not self._orphaned:
                self._orphaned = True  # the parent died: drain as if it had sent SIGTERM
                log.error(
                    "worker %d: parent process %d is gone; shutting down", self.spec.slot, self.spec.parent
                )
                os.kill(os.getpid(), signal.SIGTERM)
            try:
                self._follow_control()
                self._publish()
            except Exception:  # a full or vanished run directory: siblings see the last state; keep trying
                log.exception("worker %d: cannot publish its state to %s", self.spec.slot, self.run_dir.root)
            await asyncio.sleep(PUBLISH_S)

    def _publish(self) -> None:
        ready, reason = self.own_readiness()
        manager = self.state.manager
        status = {
            "slot": self.spec.slot,
            "pid": os.getpid(),
            "phase": "draining" if self.state.shutting_down else "serving" if self.joined else "loading",
            "ready": ready,
            "reason": reason,
            "serving": {
                name: sorted(model.versions)
                for name, model in sorted(manager.models.items())
                if model.versions
            },
            "index": self.index_rows(manager),
            "control": {name: dict(result) for name, result in self._results.items()},
        }
        metrics = self.state.metrics
        metrics.ready.set(1.0 if ready else 0.0)  # the scrape shows the least ready live worker (livemin)
        metrics.body_bytes.set(self.state.body_budget.held)
        if status != self._published:
            self.run_dir.write_status(self.spec.slot, status)
            self._published = status

    # --- readiness -------------------------------------------------------------------------------

    def own_readiness(self) -> tuple[bool, str | None]:
        if self.state.shutting_down:
            return False, "shutting down"
        if not self.replayed:
            return False, "applying the explicit model control requests of the other workers"
        return self.state.manager.readiness()

    def readiness(self) -> tuple[bool, str | None]:
        """Ready when this worker and every sibling are: a probe gets the same answer on any of them."""
        ready, reason = self.own_readiness()
        if not ready:
            return False, f"worker {self.spec.slot} of {self.spec.workers}: {reason}"
        for slot, status in self._siblings():
            if status is None:
                return False, f"worker {slot} of {self.spec.workers}: starting"
            if not (status.get("ready") and alive(status.get("pid"))):
                return (
                    False,
                    f"worker {slot} of {self.spec.workers}: {status.get('reason') or status.get('phase')}",
                )
        return True, None

    def _siblings(self) -> list[tuple[int, Status | None]]:
        return [(slot, self.run_dir.read_status(slot)) for slot in self.others]

    def _live(self) -> dict[int, Status]:
        """This worker's state now and each live sibling's last published one, by slot."""
        self._publish()
        own = self._published
        assert own is not None
        found = {self.spec.slot: own}
        for slot, status in self._siblings():
            if status is not None and alive(status.get("pid")) and "index" in status:
                found[slot] = status
        return found

    # --- what is served, whichever worker answers ------------------------------------------------

    def repository_index(self, ready_only: bool) -> list[dict[str, str]]:
        """The V2 repository index of the whole service: a row per (model, version) over every live worker."""
        return merge_index({slot: status["index"] for slot, status in self._live().items()}, ready_only)

    def describe(self) -> dict[str, Any]:
        """``/models``' ``workers``: each worker's versions and readiness, and whether they all serve the same."""
        workers = self._live()
        rows = []
        for slot in range(1, self.spec.workers + 1):
            status = workers.get(slot)
            if status is None:  # dead, restarting or not started yet: why, as the parent or it last said
                last = self.run_dir.read_status(slot) or {}
                status = {"pid": None, "ready": False, "reason": last.get("reason") or "starting", "serving": None}
            rows.append({"worker": slot, **{key: status[key] for key in ("pid", "ready", "reason", "serving")}})
        servings = [row["serving"] for row in rows]
        return {"this_worker": self.spec.slot, "agree": all(s == servings[0] for s in servings), "workers": rows}

    # --- explicit control ------------------------------------------------------------------------

    async def relay(self, action: str, name: str) -> None:
        """After this worker applied ``action``: record it for all, and wait until every live sibling has."""

        def change(control: dict[str, Any]) -> None:
            control["generation"] += 1
            control["models"][name] = {"action": action, "generation": control["generation"]}

        generation = int(self.run_dir.update_control(change)["models"][name]["generation"])
        self._seen[name] = generation
        self._results[name] = {"generation": generation, "code": None, "message": None}
        self._publish()
        deadline = time.monotonic() + self.settings.request_timeout_s
        while True:
            pending, failed = [], []
            for slot, status in self._siblings():
                if status is None or not alive(status.get("pid")):
                    continue  # dead or restarting: its replacement applies control.json after loading
                result = (status.get("control") or {}).get(name)
                if result is None or result["generation"] < generation:
                    pending.append(slot)
                elif result["generation"] == generation and result["code"] is not None:
                    failed.append(f"worker {slot}: {result['message']}")
            if not pending:
                break
            if time.monotonic() > deadline:
                raise ServiceError(
                    504, "timeout", f"{action} {name!r}: worker(s) {pending} did not confirm in time"
                )
            await asyncio.sleep(PUBLISH_S / 2)
        if failed:
            raise ServiceError(400, f"{action}_failed", f"{action} {name!r} failed on " + "; ".join(failed))

    def _follow_control(self) -> None:
        """Start applying control.json's newer requests, unless that is already under way."""
        if self.settings.model_control != "explicit" or not self.state.manager.started:
            return
        if self._following is not None and not self._following.done():
            return
        stamp = self.run_dir.control_stamp()
        if stamp == self._control_done and self.replayed:
            return  # unchanged since it last asked nothing of this worker: not parsed again
        wanted = {
            name: entry
            for name, entry in self.run_dir.read_control()["models"].items()
            if entry["generation"] > self._seen.get(name, 0)
        }
        if not wanted and self.replayed:
            self._control_done = stamp
        if wanted or not self.replayed:
            self._following = asyncio.get_running_loop().create_task(
                self._apply(wanted), name="worker-control"
            )

    async def _apply(self, wanted: dict[str, dict[str, Any]]) -> None:
        manager = self.state.manager
        for name, entry in sorted(wanted.items(), key=lambda item: item[1]["generation"]):
            code = message = None
            try:
                if entry["action"] == "load":
                    await manager.load(name)
                else:
                    await manager.unload(name)
            except ServiceError as exc:
                # Not loaded here is what an unload wants anyway.
                if not (entry["action"] == "unload" and exc.code == "unknown_model"):
                    code, message = exc.code, exc.message
            except Exception as exc:  # whatever the loader raised: the requester hears it, this worker goes on
                log.exception("worker %d: %s %r failed", self.spec.slot, entry["action"], name)
                code, message = f"{entry['action']}_failed", f"{type(exc).__name__}: {exc}"
            if self._seen.get(name, 0) < entry["generation"]:
                self._seen[name] = entry["generation"]
                self._results[name] = {"generation": entry["generation"], "code": code, "message": message}
                log.info(
                    "worker %d applied %s %r (request %d)%s",
                    self.spec.slot,
                    entry["action"],
                    name,
                    entry["generation"],
                    f": {message}" if message else "",
                )
        self.replayed = True


def merge_index(by_worker: dict[int, list[dict[str, str]]], ready_only: bool = False) -> list[dict[str, str]]:
    """One repository index from each worker's rows: a row the same on every worker stays as it is; one that
    differs (or is missing somewhere) is not READY, and its reason says what each worker has."""
    rows: dict[tuple[str, str], dict[int, dict[str, str]]] = {}
    for slot, index in sorted(by_worker.items()):
        for row in index:
            rows.setdefault((row["name"], row["version"]), {})[slot] = row
    merged = []
    for (name, version), by_slot in rows.items():
        states = {row["state"] for row in by_slot.values()}
        if len(by_slot) == len(by_worker) and len(states) == 1:
            reasons = sorted({row["reason"] for row in by_slot.values() if row["reason"]})
            merged.append(
                {"name": name, "version": version, "state": states.pop(), "reason": "; ".join(reasons)}
            )
            continue
        where = [
            f"worker {slot}: {by_slot[slot]['state'] if slot in by_slot else 'absent'}"
            for slot in sorted(by_worker)
        ]
        state = "UNAVAILABLE" if "UNAVAILABLE" in states else "LOADING"
        merged.append({"name": name, "version": version, "state": state, "reason": "; ".join(where)})
    return [row for row in merged if row["state"] == "READY"] if ready_only else merged

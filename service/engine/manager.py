"""The live model repository: which versions are served, and changing that without failing a request.

A new or changed version is loaded and warmed on a worker thread beside the serving ones; only then
does it enter the routing table. A version leaving the table (replaced, removed, unloaded, outside
the version policy) is *retired*: requests that already hold it (a lease taken when the request
resolved its model) and images already queued on its batcher finish on it; then its session is
dropped and memory handed back to the OS. A version that fails to load or warm is refused and
remembered by its file's fingerprint, so it is tried again only when that folder changes; the
versions already serving carry on.

Everything here runs on the event loop except scanning and loading, which go to threads. Each model
has its own lock: a load that takes long (a slow mount, a big model) holds up only requests to change
that model, never the control requests for the others; scans and file reads are bounded by
``MODEL_READ_TIMEOUT_S`` (a FIFO as ``model.onnx`` once left the poll loop and every later explicit
load waiting forever).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterable, Iterator

from servable.layout import VersionFile
from service.engine import version_metrics
from service.engine.batcher import Batcher
from service.engine.model_settings import ModelSettings
from service.engine.repository import ModelFolder, RepositoryError, scan_repository
from service.engine.runtime import ModelLoadError, load_model
from service.engine.served import READY, Refusal, ServedModel, ServedVersion
from service.errors import ServiceError
from service.limits.memory import release_freed_memory
from service.limits.timeouts import in_daemon_thread
from service.metrics import Metrics
from service.parsing import shown
from service.settings import Settings

log = logging.getLogger(__name__)

#: Seconds a client is told to wait while models load (a load takes seconds).
LOADING_RETRY_AFTER_S = 5


class ModelManager:
    """Loads, switches and retires model versions; answers which version serves a request."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, ServedModel] = {}
        #: Names whose availability gates readiness: found at start (or loaded since), not removed.
        self.required: set[str] = set()
        self.problem: str | None = "loading models (scanning the repository)"
        #: Models the exporter recorded as not exported, with why (not served, not needed for readiness).
        self.not_exported: dict[str, str] = {}
        self.started = False
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._closing = False

    # --- lookup --------------------------------------------------------------------------------

    def resolve(self, requested: str | None, version: int | None = None) -> ServedVersion:
        """The version a request names (default model, highest version when unpinned), or the 4xx/503 why not."""
        name = requested or self.settings.default_model
        if name is None:
            if len(self.models) == 1:
                name = next(iter(self.models))
            elif not self.models:
                raise ServiceError.retry_later("not_ready", self.problem or "no model loaded", LOADING_RETRY_AFTER_S)
            else:
                raise ServiceError(
                    422, "model_required",
                    f"several models are served ({', '.join(sorted(self.models))}): choose one with ?model=",
                )
        served = self.models.get(name)
        if served is None:
            why = f"was not exported: {self.not_exported[name]}" if name in self.not_exported else "is served"
            raise ServiceError(404, "unknown_model", f"no model named {shown(name)} {why}; GET /models lists them")
        if version is None:
            latest = served.latest()
            if latest is None:
                raise ServiceError.retry_later(
                    "model_unavailable", f"model {name!r} is {served.status()}", LOADING_RETRY_AFTER_S
                )
            return latest
        chosen = served.versions.get(version)
        if chosen is None:
            loaded = ", ".join(str(v) for v in sorted(served.versions)) or "none"
            on_disk = ", ".join(str(v) for v in served.on_disk) or "none"
            raise ServiceError(
                404, "unknown_version",
                f"model {name!r} has no version {version} loaded (loaded: {loaded}; on disk: {on_disk})",
            )
        return chosen

    def served_versions(self) -> Iterator[ServedVersion]:
        for served in self.models.values():
            yield from served.versions.values()

    # --- readiness -----------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str | None]:
        if self.problem is not None:
            return False, self.problem
        missing = {name: self.models[name].status() for name in self.required if name in self.models}
        missing = {name: status for name, status in missing.items() if status != READY}
        ready_count = sum(1 for model in self.models.values() if model.versions)
        if missing and not (self.settings.allow_partial and ready_count):
            return False, "; ".join(f"{name}: {status}" for name, status in sorted(missing.items()))
        default = self.settings.default_model
        if default is not None and not (default in self.models and self.models[default].versions):
            return False, f"DEFAULT_MODEL {default!r} is not served from {self.settings.model_dir}"
        stopped = [f"{v.name} v{v.version}" for v in self.served_versions() if not v.batcher.running]
        if stopped:
            return False, f"batcher stopped for {', '.join(stopped)}"
        if not self.models:
            return False, f"no <name>/<version>/model.onnx under {self.settings.model_dir}"
        return True, None

    def status(self) -> dict[str, str]:
        status = {name: f"not exported: {why}" for name, why in self.not_exported.items() if name not in self.models}
        status.update((name, model.status()) for name, model in self.models.items())
        return dict(sorted(status.items()))

    # --- changing what is served ---------------------------------------------------------------

    async def start(self) -> None:
        """The first scan and load; readiness stays false (with the reason) until it is done."""
        await self.reconcile(initial=True)
        self.started = True

    async def reconcile(self, names: Iterable[str] | None = None, *, initial: bool = False) -> None:
        """Scan the repository (on a thread) and bring the served versions in line with it."""
        if self._closing:
            return
        try:
            found = await self._scan()
        except (RepositoryError, OSError, TimeoutError) as exc:
            reason = str(exc) or f"the repository scan took more than {self.settings.model_read_timeout_s:g} s"
            if initial:
                self.problem = reason
                log.error("not ready: %s", reason)
            else:
                log.error("repository scan failed (serving what is loaded): %s", reason)
            return
        for name in sorted(n for n, f in found.items() if f.export_failure and n not in self.not_exported):
            log.error("model %s not exported: %s", name, found[name].export_failure)
        self.not_exported = {name: f.export_failure for name, f in found.items() if f.export_failure}
        selected = set(found) | set(self.models) if names is None else set(names)
        if initial:
            self.required = {name for name, folder in found.items() if folder.versions}
            for name in self.required:
                self.models[name] = ServedModel(name, ModelSettings.resolve(self.settings, found[name].config))
                self.models[name].loading = True
            total = len(self.required)
            for done, name in enumerate(sorted(self.required)):
                self.problem = f"loading models ({done} of {total} ready)"
                await self._apply_locked(name, found.get(name))
            self.problem = None
            ready, reason = self.readiness()
            if ready:
                log.info("ready: serving %s", ", ".join(
                    f"{v.name} v{v.version}" for v in self.served_versions()))
            else:
                log.error("not ready: %s", reason)
            return
        for name in sorted(selected):
            await self._apply_locked(name, found.get(name))

    async def _scan(self) -> dict[str, ModelFolder]:
        """The repository as it is now; ``TimeoutError`` when the file system does not answer in time
        (the scan's thread is a daemon: left behind, it never holds up the exit)."""
        timeout = self.settings.model_read_timeout_s
        return await in_daemon_thread(scan_repository, self.settings.model_dir, timeout, timeout_s=timeout)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _apply_locked(self, name: str, folder: ModelFolder | None) -> None:
        async with self._lock(name):
            if not self._closing:
                await self._apply(name, folder)

    async def load(self, name: str) -> ServedModel:
        """Explicit control: (re)load ``name`` from the repository; 404 when no such folder exists there."""
        try:
            found = await self._scan()
        except (RepositoryError, OSError, TimeoutError) as exc:
            raise ServiceError(503, "repository_unavailable", str(exc) or "the repository scan timed out") from None
        if name not in found or not found[name].versions:
            raise ServiceError(404, "unknown_model", f"no model folder {shown(name)} with a version in the repository")
        async with self._lock(name):
            served = self.models.get(name)
            if served is not None:
                served.unloaded = False
            await self._apply(name, found[name], force=True)
            self.required.add(name)
            served = self.models[name]
        if not served.versions:
            raise ServiceError(400, "load_failed", f"model {name!r} did not load: {served.status()}")
        return served

    async def unload(self, name: str) -> None:
        """Explicit control: stop serving ``name`` (in-flight requests finish on it)."""
        if name not in self.models:  # before taking a lock: one is kept per name asked for
            raise ServiceError(404, "unknown_model", f"no model named {shown(name)} is loaded")
        async with self._lock(name):
            served = self.models.get(name)
            if served is None:
                raise ServiceError(404, "unknown_model", f"no model named {shown(name)} is loaded")
            served.unloaded = True
            self.required.discard(name)
            for version in list(served.versions):
                self._retire(served, version, "unloaded")

    async def _apply(self, name: str, folder: ModelFolder | None, *, force: bool = False) -> None:
        """Bring one model in line with its folder (None: the folder is gone)."""
        served = self.models.get(name)
        if folder is None:
            if served is not None:
                for version in list(served.versions):
                    self._retire(served, version, "its folder was removed")
                del self.models[name]
                self.required.discard(name)
                self._set_refusal_gauge(name, None)
            return
        if served is None:
            if not folder.versions:
                return  # a folder with nothing to serve yet
            served = ServedModel(name, ModelSettings.resolve(self.settings, folder.config))
            self.models[name] = served
        served.on_disk = tuple(sorted(folder.versions))
        settings = self._settings_for(served, folder)
        if served.unloaded and not force:
            return
        if settings != served.settings:
            served.refused.clear()  # new batching settings: every version deserves a new try
        served.settings = settings
        # A refused file is not tried again until it changes; the policy picks among the rest (and
        # among versions still serving under older settings), so a refused new version leaves the
        # previous one serving.
        for version, refusal in list(served.refused.items()):
            entry = folder.versions.get(version)
            if entry is None or entry.fingerprint != refusal.fingerprint:
                del served.refused[version]
        while True:
            candidates = [v for v in folder.versions if v not in served.refused or v in served.versions]
            wanted = settings.version_policy.select(candidates)
            to_load = [
                v for v in wanted
                if v not in served.refused and (
                    v not in served.versions
                    or served.versions[v].fingerprint != folder.versions[v].fingerprint
                    or served.versions[v].settings != settings
                )
            ]
            if not to_load:
                break
            served.loading = True
            try:
                for version in to_load:
                    await self._load_version(served, folder.versions[version], settings)
            finally:
                served.loading = False
        for version in [v for v in served.versions if v not in wanted]:
            self._retire(served, version, "not selected by the version policy any more"
                         if version in folder.versions else "its folder was removed")
        self._set_refusal_gauge(name, served)

    def _settings_for(self, served: ServedModel, folder: ModelFolder) -> ModelSettings:
        if folder.config_error is not None:
            if served.config_fingerprint != folder.config_fingerprint:
                log.error("model %s: %s (keeping the previous settings)", served.name, folder.config_error)
                self.metrics.version_refusals.labels(served.name, "config").inc()
            served.config_error = folder.config_error
            served.config_fingerprint = folder.config_fingerprint
            return served.settings
        served.config_error = None
        served.config_fingerprint = folder.config_fingerprint
        return ModelSettings.resolve(self.settings, folder.config)

    async def _load_version(self, served: ServedModel, entry: VersionFile, settings: ModelSettings) -> None:
        started = time.perf_counter()
        try:
            model = await asyncio.to_thread(load_model, entry, self.settings, settings.runtime())
        except ModelLoadError as exc:
            self._refuse(served, entry, str(exc))
            return
        except Exception as exc:  # anything onnxruntime raises on a file it cannot serve
            log.exception("model %s v%d failed to load", entry.name, entry.version)
            self._refuse(served, entry, f"{type(exc).__name__}: {exc}")
            return
        if self._closing:
            return
        batcher = Batcher(
            f"model {served.name!r} v{entry.version}",
            [model.run] * settings.instances,
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_batch_delay_ms / 1000.0,
            max_queue_size=settings.queue_size(model.images_per_s),
            metrics=self.metrics,
            metric_label=served.name,
            metric_version=str(entry.version),
        )
        batcher.start()
        replaced = served.versions.get(entry.version)
        served.versions[entry.version] = ServedVersion(model, settings, batcher)
        served.refused.pop(entry.version, None)
        if replaced is not None:
            self._schedule_retirement(served, replaced, "replaced by a changed file")
        self.required.add(served.name)
        version_metrics.publish(self.metrics, model)
        self.metrics.version_loads.labels(served.name).inc()
        log.info(
            "model %s v%d serving: session %.2f s, warm-up %.2f s, switched in %.2f s after the scan found it; "
            "queue %d images (%s img/s measured)",
            served.name, entry.version, model.load_seconds - model.warmup_seconds, model.warmup_seconds,
            time.perf_counter() - started, batcher.max_queue_size,
            "no warm-up" if model.images_per_s is None else f"{model.images_per_s:.0f}",
        )

    def _refuse(self, served: ServedModel, entry: VersionFile, reason: str) -> None:
        served.refused[entry.version] = Refusal(entry.fingerprint, reason)
        self.metrics.version_refusals.labels(served.name, "load").inc()
        serving = ", ".join(f"v{v}" for v in sorted(served.versions)) or "nothing"
        log.error("model %s not served: v%d refused (serving %s): %s", served.name, entry.version, serving, reason)

    def _retire(self, served: ServedModel, version: int, why: str) -> None:
        old = served.versions.pop(version, None)
        if old is not None:
            self._schedule_retirement(served, old, why)

    def _schedule_retirement(self, served: ServedModel, old: ServedVersion, why: str) -> None:
        log.info("model %s v%d retiring (%s); %d requests hold it", served.name, old.version, why, old.leases)
        task = asyncio.get_running_loop().create_task(self._finish_retirement(old), name=f"retire-{old.name}-v{old.version}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _finish_retirement(self, old: ServedVersion) -> None:
        started = time.perf_counter()
        name, version, held = old.name, old.version, old.leases
        await old.retire(self.settings.request_timeout_s + self.settings.body_timeout_s)
        drained = time.perf_counter() - started
        version_metrics.forget(self.metrics, old.model)
        old.model.close()
        del old
        await asyncio.to_thread(_collect_garbage)
        log.info("model %s v%d released: %d requests held it, drained in %.2f s, memory returned %.2f s later",
                 name, version, held, drained, time.perf_counter() - started - drained)

    # --- metrics -------------------------------------------------------------------------------

    def _set_refusal_gauge(self, name: str, served: ServedModel | None) -> None:
        if served is None:
            self.metrics.forget(self.metrics.refused_versions, (name,))
            return
        self.metrics.refused_versions.labels(name).set(len(served.refused))

    # --- polling and shutdown ------------------------------------------------------------------

    async def poll_forever(self, interval_s: float) -> None:
        """Poll mode: rescan every ``interval_s``; a failing scan or load never stops the loop."""
        while not self._closing:
            await asyncio.sleep(interval_s)
            try:
                await self.reconcile()
            except Exception:
                log.exception("repository poll failed; trying again in %.1f s", interval_s)

    async def stop(self, grace_s: float) -> None:
        """Shutdown: every serving version drains (reserved, queued and running images finish)."""
        self._closing = True
        versions = list(self.served_versions())
        await asyncio.gather(*(v.batcher.drain(grace_s) for v in versions))
        if self._retiring:
            await asyncio.wait(list(self._retiring), timeout=grace_s)


def _collect_garbage() -> None:
    """Free the retired session's objects now and give freed heap pages back to the OS."""
    gc.collect()
    release_freed_memory()


"""What a running service holds: loaded models, their batchers, the decode pool and readiness."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from service.batcher import Batcher
from service.errors import ServiceError
from service.metrics import Metrics
from service.repository import RepositoryError, scan_repository
from service.runtime import LoadedModel, ModelLoadError, load_model
from service.settings import Settings

log = logging.getLogger("service.state")

LOADING = "loading"
READY = "ready"


class ServiceState:
    """Loads models in the background and answers whether the service is ready, and why not."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, LoadedModel] = {}
        self.batchers: dict[str, Batcher] = {}
        #: Per model found on disk: "loading", "ready" or why it failed.
        self.model_status: dict[str, str] = {}
        self.problem: str | None = "starting"
        self.shutting_down = False
        self.decode_pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
        self._loader: asyncio.Task[None] | None = None

    # --- readiness -----------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str | None]:
        if self.shutting_down:
            return False, "shutting down"
        if self.problem is not None:
            return False, self.problem
        stopped = [name for name, batcher in self.batchers.items() if not batcher.running]
        if stopped:
            return False, f"batcher stopped for {', '.join(stopped)}"
        return True, None

    def begin_shutdown(self) -> None:
        """Called from the SIGTERM handler: readiness turns false before anything else happens."""
        self.shutting_down = True
        self.metrics.ready.set(0)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._loader = asyncio.get_running_loop().create_task(self._load_all(), name="load-models")

    async def _load_all(self) -> None:
        try:
            entries = scan_repository(self.settings.model_dir)
        except RepositoryError as exc:
            self.problem = str(exc)
            log.error("not ready: %s", exc)
            return
        for entry in entries:
            self.model_status[entry.name] = LOADING
        for done, entry in enumerate(entries):
            self.problem = f"loading models ({done} of {len(entries)} ready)"
            try:
                model = await asyncio.to_thread(load_model, entry, self.settings)
            except ModelLoadError as exc:
                self.model_status[entry.name] = f"failed: {exc}"
                log.error("model %s not served: %s", entry.name, exc)
                continue
            except Exception as exc:
                self.model_status[entry.name] = f"failed: {type(exc).__name__}: {exc}"
                log.exception("model %s not served", entry.name)
                continue
            self._serve(model)
        failed = {name: status for name, status in self.model_status.items() if status != READY}
        default = self.settings.default_model
        if failed and not (self.settings.allow_partial and self.models):
            self.problem = "; ".join(f"{name}: {status}" for name, status in failed.items())
        elif default is not None and default not in self.models:
            self.problem = f"DEFAULT_MODEL {default!r} is not in {self.settings.model_dir}"
        else:
            self.problem = None
        if self.problem is None and not self.shutting_down:
            self.metrics.ready.set(1)
            for name, status in failed.items():
                log.error("model %s not served (ALLOW_PARTIAL: ready with the others): %s", name, status)
            log.info("ready: serving %s", ", ".join(f"{m.name} v{m.entry.version}" for m in self.models.values()))
        else:
            log.error("not ready: %s", self.problem)

    def _serve(self, model: LoadedModel) -> None:
        s = self.settings
        batcher = Batcher(
            model.name,
            model.run,
            max_batch_size=s.max_batch_size,
            max_delay_s=s.max_batch_delay_ms / 1000.0,
            max_queue_size=s.max_queue_size,
            metrics=self.metrics,
        )
        batcher.start()
        self.models[model.name] = model
        self.batchers[model.name] = batcher
        self.model_status[model.name] = READY
        card = model.card
        self.metrics.model_info.labels(
            model.name, str(model.entry.version), card.architecture, str(card.num_classes),
            str(card.preprocessing.crop_size),
        ).set(1)
        self.metrics.provider_info.labels(
            model.name, ",".join(model.requested_providers), ",".join(model.active_providers),
            str(model.gpu_fallback).lower(),
        ).set(1)

    async def stop(self) -> None:
        """Lifespan shutdown: not ready, finish what is queued, release threads."""
        self.begin_shutdown()
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
        await asyncio.gather(*(b.drain(self.settings.shutdown_grace_s) for b in self.batchers.values()))
        self.decode_pool.shutdown(wait=True, cancel_futures=True)

    # --- lookup --------------------------------------------------------------------------------

    def resolve(self, requested: str | None) -> tuple[LoadedModel, Batcher]:
        """The model a request names (or the default one), or the 4xx/503 saying why not."""
        name = requested or self.settings.default_model
        if name is None:
            if len(self.model_status) == 1:
                name = next(iter(self.model_status))
            elif not self.model_status:
                raise ServiceError(503, "not_ready", self.readiness()[1] or "no model loaded", {"Retry-After": "5"})
            else:
                raise ServiceError(
                    422, "model_required",
                    f"several models are served ({', '.join(sorted(self.model_status))}): choose one with ?model=",
                )
        model = self.models.get(name)
        if model is None:
            status = self.model_status.get(name)
            if status is None:
                raise ServiceError(404, "unknown_model", f"no model named {name[:100]!r}; GET /models lists them")
            raise ServiceError(503, "model_unavailable", f"model {name!r} is {status}", {"Retry-After": "5"})
        return model, self.batchers[name]

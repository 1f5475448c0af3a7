"""``python -m service`` / ``resnet-serve``: flags mirror every RESNET_SERVE_* setting (flags win)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from pydantic import ValidationError

from service import __version__
from service.limits.memory import configure_malloc, configure_pillow
from service.logs import configure_logging
from service.settings import ENV_PREFIX, Settings
from service.workers.rundir import WorkerSpec

if TYPE_CHECKING:
    from service.state import ServiceState

log = logging.getLogger("service")


def build_parser() -> argparse.ArgumentParser:
    """One ``--flag`` per settings field, documented with its environment variable and default."""
    parser = argparse.ArgumentParser(
        prog="resnet-serve",
        description="Serve exported ResNet ONNX models over HTTP. Every flag can also be set as an "
        f"environment variable {ENV_PREFIX}<NAME>; flags take precedence.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = ENV_PREFIX + name.upper()
        help_text = f"{field.description or ''} [env {env}, default {field.default!r}]"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar=name.upper(), help=help_text)
    return parser


def settings_from(argv: Sequence[str] | None = None) -> Settings:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    overrides = {name: value for name, value in vars(arguments).items() if value is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        parser.error(str(exc))


class GracefulServer(uvicorn.Server):
    """uvicorn, but SIGTERM/SIGINT turn readiness off before uvicorn starts its graceful shutdown."""

    def __init__(self, config: uvicorn.Config, state: ServiceState, *, shutdown_delay_s: float = 0.0) -> None:
        super().__init__(config)
        self.service_state = state
        self.shutdown_delay_s = shutdown_delay_s
        self._delayed: threading.Timer | None = None
        self._exit_timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = not self.service_state.shutting_down
        self.service_state.begin_shutdown()
        if first and self.shutdown_delay_s > 0:
            # Keep accepting (readiness already says 503) until load balancers have noticed; a second
            # signal during the delay drains at once.
            log.info("signal %d: not ready any more; serving %.1f s more before draining", sig, self.shutdown_delay_s)
            self._delayed = threading.Timer(self.shutdown_delay_s, self._drain, (sig, frame))
            self._delayed.daemon = True
            self._delayed.start()
            return
        if self._delayed is not None:
            self._delayed.cancel()
        self._drain(sig, frame)

    def _drain(self, sig: int, frame: FrameType | None) -> None:
        """Stop taking work (uvicorn closes its listener, the gRPC door stops) and finish what is in flight."""
        self.service_state.begin_drain()
        if self._exit_timer is None:
            from service.state import EXIT_MARGIN_S, exit_after  # the app's module: not imported by a supervisor

            self._exit_timer = exit_after(self.service_state.settings.shutdown_grace_s + EXIT_MARGIN_S)
        if sig == signal.SIGTERM and not self.should_exit:
            log.info("SIGTERM: draining; finishing in-flight requests (grace %.0f s)",
                     self.config.timeout_graceful_shutdown or 0)
        super().handle_exit(sig, frame)


def _http_protocol(settings: Settings) -> type | str:
    """httptools (C, the fast parser) with bounds on the request head, its time and the requests in
    progress; h11 where httptools is missing."""
    try:
        from service.doors.http import HttpLimits, bounded_protocol
    except ImportError:  # uvicorn without its [standard] extras: h11 bounds heads itself
        return "h11"
    return bounded_protocol(HttpLimits(
        max_requests=settings.limit_concurrency,
        max_connections=settings.max_connections,
        header_timeout_s=settings.header_timeout_s,
    ))


def main(argv: Sequence[str] | None = None) -> None:
    settings = settings_from(argv)
    worker = WorkerSpec.from_environment()  # set by the parent of WORKERS > 1 processes
    configure_logging(settings.log_level, settings.log_format, worker.slot if worker else None)
    if worker is None and settings.worker_count > 1:
        # The parent loads no model: the app's modules stay unimported there.
        from service.workers.supervisor import supervise

        raise SystemExit(supervise(settings, sys.argv[1:] if argv is None else argv))
    configure_malloc()  # before any request: big bodies stay on mmap and go back to the OS when freed
    configure_pillow(settings.decode_threads)  # decoded images reuse freed blocks instead of fresh mmaps
    if worker is not None:
        from service.workers.metrics import write_to_worker_files

        write_to_worker_files()
    from service.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s + 0.999),
        limit_concurrency=None,  # counted per request by the protocol (service/doors/http.py), not per socket
        timeout_keep_alive=settings.keepalive_timeout_s,  # type: ignore[arg-type]
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        backlog=settings.backlog,
        http=_http_protocol(settings),
        lifespan="on",
    )
    server = GracefulServer(config, app.state.service, shutdown_delay_s=settings.shutdown_delay_s)
    if worker is None:
        server.run()
        return
    from service.doors.v2.protocol import repository_index
    from service.workers.link import WorkerLink

    link = app.state.service.workers = WorkerLink(worker, app.state.service, repository_index)
    server.run(sockets=link.sockets())


if __name__ == "__main__":
    main()

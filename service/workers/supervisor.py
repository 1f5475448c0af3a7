"""The parent process of ``WORKERS`` > 1: start the workers, replace one that dies, pass SIGTERM on.

It loads no model and serves nothing. It claims the ports first (the refusal to share a port with
another instance stays), binds one SO_REUSEPORT socket set per worker and hands it over at spawn, so the
kernel spreads connections over the workers; a worker's socket dies with it, so connections go to its
siblings the moment it does. A replacement gets its sockets bound but not listening while a sibling
serves, and joins the port once its models are loaded and warm (see :class:`service.workers.link.WorkerLink`).

A worker that dies is started again after a pause that doubles with each death in a row (0 s, then
0.5 s up to :data:`MAX_BACKOFF_S`) and starts over once one has lived :data:`STABLE_S`; each death is a
log line, and the replacement counts it in ``resnet_serve_worker_restarts_total{cause}``. SIGTERM (or
SIGINT) is sent on to every worker, each drains as a single process does (readiness off,
``SHUTDOWN_DELAY_S``, in-flight requests finish within ``SHUTDOWN_GRACE_S``), and the parent exits
when all have; none is restarted from then on.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from service.doors.sockets import claim_port, shared_listeners
from service.settings import Settings
from service.workers.rundir import WORKER_ENV, RunDir, WorkerSpec, alive

log = logging.getLogger("service.workers")

#: A worker that lived this long before dying is restarted at once (its backoff starts over).
STABLE_S = 60.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
#: How often the parent looks for dead workers and due restarts.
TICK_S = 0.05
#: Beyond the workers' own drain (delay + grace), how long the parent waits before SIGKILL, and then
#: for the killed to be reaped before it exits without them.
WORKER_EXIT_MARGIN_S = 10.0


@dataclass
class Slot:
    """One worker position: the process in it now, and its history of deaths."""

    number: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    deaths_in_a_row: int = 0
    restart_at: float | None = None
    cause: str | None = None
    killed: bool = False  # sent SIGKILL at the end of the shutdown (once: a process in D state stays)


def supervise(settings: Settings, argv: Sequence[str]) -> int:
    """Run ``settings.worker_count`` workers of ``python -m service <argv>`` until SIGTERM; the exit status."""
    return Supervisor(settings, list(argv)).run()


class Supervisor:
    def __init__(self, settings: Settings, argv: list[str]) -> None:
        self.settings = settings
        self.argv = argv
        self.count = settings.worker_count
        self.slots = [Slot(number) for number in range(1, self.count + 1)]
        self.port = settings.port
        self.run_dir: RunDir | None = None
        self.signalled: int | None = None
        self.stopping_since: float | None = None

    def run(self) -> int:
        s = self.settings
        try:
            claim_port(s.host, s.port, "HTTP", "PORT")
            if s.grpc_port:
                claim_port(s.host, s.grpc_port)
            # The first workers' sockets listen from now on: the port is ours before any worker has started.
            first = [shared_listeners(s.host, self.port, listen=True, backlog=s.backlog)]
            self.port = first[0][0].getsockname()[1]  # PORT=0: the one the kernel gave, for every worker
            first += [
                shared_listeners(s.host, self.port, listen=True, backlog=s.backlog) for _ in self.slots[1:]
            ]
        except (RuntimeError, OSError) as exc:
            log.error("not starting: %s", exc)
            return 1
        self.run_dir = RunDir.create()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        log.info(
            "starting %d workers on port %d (grpc %s), %d CPU(s) each; run directory %s",
            self.count,
            self.port,
            s.grpc_port or "off",
            s.cpu_count,
            self.run_dir.root,
        )
        try:
            for slot, sockets in zip(self.slots, first):
                self._spawn(slot, sockets, late=False)
            while self._tick():
                time.sleep(TICK_S)
        finally:
            for slot in self.slots:
                if slot.process is not None and slot.process.poll() is None:
                    slot.process.kill()
                    try:
                        slot.process.wait(timeout=1)
                    except subprocess.TimeoutExpired:
                        log.error("worker %d (pid %d) does not die: leaving it", slot.number, slot.process.pid)
            self.run_dir.remove()
        return 0

    # --- one turn of the loop ---------------------------------------------------------------------

    def _tick(self) -> bool:
        """Forward a signal, reap, restart what is due; False once every worker has exited after SIGTERM."""
        now = time.monotonic()
        if self.signalled is not None and self.stopping_since is None:
            self.stopping_since = now
            log.info("signal %d: stopping %d workers", self.signalled, self.count)
            for slot in self.slots:
                slot.restart_at = None
                if slot.process is not None and slot.process.poll() is None:
                    # SIGTERM whatever came: a terminal's Ctrl-C has already sent the workers (in this
                    # process group) a SIGINT, and a second SIGINT makes uvicorn exit without draining.
                    slot.process.send_signal(signal.SIGTERM)
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is not None:
                self._exited(slot, now)
            elif slot.restart_at is not None and now >= slot.restart_at and self.stopping_since is None:
                self._replace(slot, now)
        if self.stopping_since is None:
            return True
        if all(slot.process is None for slot in self.slots):
            return False
        s = self.settings
        overdue = now - self.stopping_since - (s.shutdown_delay_s + s.shutdown_grace_s + WORKER_EXIT_MARGIN_S)
        if overdue > WORKER_EXIT_MARGIN_S:
            log.error("workers still not reaped %.0f s after SIGKILL: exiting without them", WORKER_EXIT_MARGIN_S)
            return False
        if overdue > 0:
            for slot in self.slots:
                if slot.process is not None and not slot.killed:
                    log.error(
                        "worker %d (pid %d) still running after the grace period: killing it",
                        slot.number,
                        slot.process.pid,
                    )
                    slot.process.kill()
                    slot.killed = True
        return True

    def _replace(self, slot: Slot, now: float) -> None:
        """Start a worker in ``slot``: it waits for its models before it listens while a sibling serves."""
        late = any(self._serving(other) for other in self.slots if other is not slot)
        try:
            sockets = shared_listeners(
                self.settings.host, self.port, listen=not late, backlog=self.settings.backlog
            )
        except OSError as exc:  # out of descriptors, or a foreign socket took the port: try again later
            slot.deaths_in_a_row += 1
            slot.restart_at = now + max(FIRST_BACKOFF_S, backoff_s(slot.deaths_in_a_row))
            log.error(
                "worker %d: cannot bind port %d (%s); trying again in %.1f s",
                slot.number,
                self.port,
                exc,
                slot.restart_at - now,
            )
            return
        try:
            self._spawn(slot, sockets, late=late)
        except OSError as exc:  # fork refused (EAGAIN, ENOMEM): the other workers go on serving
            slot.deaths_in_a_row += 1
            slot.restart_at = now + max(FIRST_BACKOFF_S, backoff_s(slot.deaths_in_a_row))
            log.error("worker %d: cannot start (%s); trying again in %.1f s", slot.number, exc, slot.restart_at - now)

    def _spawn(self, slot: Slot, sockets: list[socket.socket], *, late: bool) -> None:
        assert self.run_dir is not None
        spec = WorkerSpec(
            slot=slot.number,
            workers=self.count,
            run_dir=str(self.run_dir.root),
            fds=tuple(sock.fileno() for sock in sockets),
            parent=os.getpid(),
            late=late,
            replaces=slot.cause,
        )
        env = {**os.environ, WORKER_ENV: spec.to_env(), "PROMETHEUS_MULTIPROC_DIR": str(self.run_dir.metrics)}
        try:
            slot.process = subprocess.Popen(
                [sys.executable, "-m", "service", *self.argv], env=env, pass_fds=spec.fds
            )
        finally:
            for sock in sockets:  # the worker holds them now: when it dies, its listeners close with it
                sock.close()
        slot.started = time.monotonic()
        slot.restart_at = None
        log.info(
            "worker %d started (pid %d)%s",
            slot.number,
            slot.process.pid,
            "; joins the port once loaded" if late else "",
        )

    def _exited(self, slot: Slot, now: float) -> None:
        from prometheus_client.multiprocess import mark_process_dead

        assert slot.process is not None and self.run_dir is not None
        pid, code = slot.process.pid, slot.process.returncode
        slot.process = None
        cause = exit_cause(code)
        mark_process_dead(pid, str(self.run_dir.metrics))  # its gauges leave the sums; counters stay
        if self.stopping_since is not None:
            log.info("worker %d (pid %d) exited (%s)", slot.number, pid, cause)
            self.run_dir.write_status(
                slot.number,
                {
                    "slot": slot.number,
                    "pid": None,
                    "phase": "exited",
                    "ready": False,
                    "reason": f"exited ({cause})",
                },
            )
            return
        lived = now - slot.started
        slot.deaths_in_a_row = 1 if lived >= STABLE_S else slot.deaths_in_a_row + 1
        delay = backoff_s(slot.deaths_in_a_row)
        slot.restart_at = now + delay
        slot.cause = cause
        reason = f"worker {slot.number} (pid {pid}) died ({cause}) after {lived:.1f} s; restarting in {delay:.1f} s"
        log.error(reason)
        self.run_dir.write_status(
            slot.number,
            {"slot": slot.number, "pid": None, "phase": "restarting", "ready": False, "reason": reason},
        )

    def _serving(self, slot: Slot) -> bool:
        """Whether ``slot``'s worker listens on the port now (so a replacement may wait for its models)."""
        assert self.run_dir is not None
        status = self.run_dir.read_status(slot.number) or {}
        return slot.process is not None and status.get("phase") == "serving" and alive(status.get("pid"))

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.signalled is None:
            self.signalled = sig
        elif self.stopping_since is not None:  # a second signal: pass it on (workers drain at once)
            for slot in self.slots:
                if slot.process is not None and slot.process.poll() is None:
                    slot.process.send_signal(sig)


def backoff_s(deaths_in_a_row: int) -> float:
    """The pause before restarting a worker: none after a first death, then doubling up to the cap."""
    if deaths_in_a_row <= 1:
        return 0.0
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (deaths_in_a_row - 2))


def exit_cause(returncode: int) -> str:
    """``SIGKILL`` for a worker killed by a signal, ``exit 3`` otherwise: bounded label values."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit {returncode}"

"""``python -m benchmarks overhead``: what the request lifecycle and tracing cost, on resnet20 ``/predict``
at 32 clients (wrk), in interleaved rounds of every variant against the same model repository:

- ``before``: the service from ``--service-root`` (another checkout, e.g. main), when one is given;
- ``tracing off``: this checkout as it ships (deadline timer and hang-up watcher on every request);
- ``tracing on 100 %`` and ``tracing on 10 %``: this checkout with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set
  (and ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` for 10 %), exporting over OTLP/HTTP to a sink in
  this process that reads and discards what it receives (a collector's receiving end, on the same box).

Every server runs throughout; the idle ones are stopped (SIGSTOP) while another is measured. Reported:
each variant's median images/s and the server's CPU milliseconds per image over the rounds, and both
as ratios to the first variant. On a shared box the CPU per image moves by a few percent between
rounds where images/s moves by a third (benchmarks/procstat.py), so it is the figure to compare.
"""

from __future__ import annotations

import http.server
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchmarks import loadgen, wrk
from benchmarks.procstat import cpu_seconds, server_cpu
from benchmarks.report import median_known, table
from benchmarks.server import free_port, paused, python, running_server
from benchmarks.service_bench import service_env
from benchmarks.workload import REPO_ROOT, BenchModel, payloads_for

CONCURRENCY = 32
ROUNDS = 5


class _Sink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that reads each export and answers 200 (counting bytes, keeping nothing)."""

    received = 0

    def do_POST(self) -> None:
        type(self).received += len(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def otlp_sink() -> Iterator[tuple[str, type[_Sink]]]:
    handler = type("Sink", (_Sink,), {"received": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def run(
    model: BenchModel, repo: Path, *, service_root: Path | None, seconds: float, rounds: int = ROUNDS,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every variant's rounds; ``service_root`` None or this checkout: no ``before`` variant."""
    body = loadgen.bodies(payloads_for(model), 1)[0]
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-overhead-") as workdir:
        endpoint, sink = stack.enter_context(otlp_sink())
        traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        variants: list[tuple[str, Path, dict[str, str]]] = []
        if service_root is not None and service_root.resolve() != REPO_ROOT.resolve():
            variants.append(("before", service_root, {}))
        variants += [
            ("tracing off", REPO_ROOT, {}),
            ("tracing on 100 %", REPO_ROOT, {**traced, "OTEL_TRACES_SAMPLER": "always_on"}),
            ("tracing on 10 %", REPO_ROOT, {**traced, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                             "OTEL_TRACES_SAMPLER_ARG": "0.1"}),
        ]
        servers = []
        for name, root, extra in variants:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            env = {**service_env(repo, port), **extra}
            process = stack.enter_context(running_server(
                [python(), "-m", "service"], env, f"{base}/health/ready", cwd=root,
                log_path=Path(workdir) / f"{name.replace(' ', '-').replace('%', 'pc')}.log"))
            servers.append((name, f"{base}/predict?model={model.name}&top_k=5", process.pid))
        for index in range(1, rounds + 1):
            # Every other round runs the variants in reverse, so none always follows the same one.
            for name, url, pid in servers if index % 2 else servers[::-1]:
                others = [p for _, _, p in servers if p != pid]
                with ExitStack() as frozen:
                    for other in others:
                        frozen.enter_context(paused(other))
                    received = sink.received
                    before = cpu_seconds(pid)
                    row = wrk.run(url, body, concurrency=CONCURRENCY, seconds=seconds)
                    after = cpu_seconds(pid)
                wall = float(row["seconds"])  # type: ignore[arg-type]
                row.update(server_cpu(before, after, wall, float(row["requests_ok"])))  # type: ignore[arg-type]
                row.update({"variant": name, "round": index, "otlp_kib_per_s": (sink.received - received) / 1024 / wall})
                rows.append(row)
                log(f"  overhead {name:<17} round {index}: {row['images_per_s']:8.1f} img/s  "
                    f"{row['server_cpu_ms_per_image'] or 0:6.3f} ms CPU/img  OTLP {row['otlp_kib_per_s']:7.1f} KiB/s")
    return {"model": model.name, "concurrency": CONCURRENCY, "seconds": seconds, "rounds": rows,
            "summary": summarize(rows)}


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant (first seen first): the medians, and their ratios to the first variant's."""
    names = list(dict.fromkeys(row["variant"] for row in rows))
    medians = {
        name: (median_known(r["images_per_s"] for r in rows if r["variant"] == name),
               median_known(r["server_cpu_ms_per_image"] for r in rows if r["variant"] == name))
        for name in names
    }
    rate0, cpu0 = medians[names[0]]
    return [{"variant": name, "images_per_s": rate, "cpu_ms_per_image": cpu,
             "rate_ratio": rate / rate0 if rate and rate0 else None,
             "cpu_ratio": cpu / cpu0 if cpu and cpu0 else None}
            for name, (rate, cpu) in medians.items()]


def render(result: dict[str, Any]) -> str:
    rounds = len({row["round"] for row in result["rounds"]})
    title = (f"\nOVERHEAD: {result['model']} /predict, wrk c={result['concurrency']}, {result['seconds']:g} s phases, "
             f"median of {rounds} interleaved rounds (ratios to the first row)")
    return title + "\n" + table(
        ["variant", "img/s", "ratio", "server CPU ms/img", "ratio"],
        [[s["variant"], s["images_per_s"], s["rate_ratio"], s["cpu_ms_per_image"], s["cpu_ratio"]] for s in result["summary"]],
    )

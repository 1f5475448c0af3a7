"""Soak test, run by hand: hours-long behaviour in 30 minutes at 70 % of the measured capacity.

    .venv/bin/python tests/soak.py --model-dir model_repository --model resnet20            # 30 min
    .venv/bin/python tests/soak.py --model-dir model_repository --model resnet20 --minutes 3
    .venv/bin/python tests/soak.py --url http://127.0.0.1:8000 --pid 12345 --model resnet18
    .venv/bin/python tests/soak.py --model-dir repo --model resnet20 --minutes 10 --new-version-every 30

``--new-version-every S`` (with ``--model-dir``) publishes a new version of the model every S seconds
while the load runs, as the exporter does (a copy of the newest ``model.onnx`` renamed into the next
numbered folder in one step; the two newest folders are kept), and counts the versions that answered:
the live repository must switch every time with no failed request and flat RSS.

With ``--model-dir`` it starts ``python -m service`` itself (on a free port); with ``--url`` it
drives a running server (``--pid`` lets it read that process's RSS from /proc). It measures the
capacity with a closed loop (the median of three 5 s rounds), then sends an open-loop load at
``--fraction`` of it, mixing valid images with a slice of hostile ones (``--hostile-every``), and
prints one line per minute (that minute's statuses, latency, RSS, and what the machine did: how late the
generator itself sent, the CPU the hypervisor stole and the CPU other processes took) plus a summary:
requests, errors by status, latency percentiles and RSS growth (first minute to last).

The generator is open-loop: a request that it could not send on time (its own process stalled) goes
out as soon as it can, so a stall of the generator becomes a burst at the server. The per-minute
``late`` column (the worst lateness of a send) and ``others`` (CPU taken by processes other than the
server and the generator, in cores) tell a burst the machine made from one the service caused.
Exit status 1 when a valid request failed, a 5xx appeared or RSS grew by more than ``--max-growth-mb``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS), str(TESTS.parent)]

from hostile import MODEL_QUERY, build_corpus, encode, gradient
from load import as_file, closed_loop, percentile, raw_http_request, send_raw
from server import run_server
from watch import rss_bytes

from servable.layout import publish_version


def publish_next_version(model_folder: Path) -> int:
    """Copy the newest version into the next number as the exporter publishes; drop all but the two newest."""
    versions = sorted(int(p.name) for p in model_folder.iterdir() if p.name.isdigit())
    newest, target = versions[-1], versions[-1] + 1
    payload = (model_folder / str(newest) / "model.onnx").read_bytes()
    publish_version(model_folder.parent, model_folder.name, target, payload)
    for old in versions[:-1]:
        shutil.rmtree(model_folder / str(old), ignore_errors=True)
    return target


class MachineClock:
    """CPU time of the whole machine, of the server and of this process, between two readings (Linux)."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.tick = os.sysconf("SC_CLK_TCK")
        self.last = self._read()

    def _read(self) -> tuple[float, list[int], float, float]:
        with open("/proc/stat") as stat:
            jiffies = [int(v) for v in stat.readline().split()[1:]]
        server = 0.0
        if self.server_pid:
            try:
                with open(f"/proc/{self.server_pid}/stat") as proc_stat:
                    fields = proc_stat.read().rsplit(")", 1)[1].split()
                server = (int(fields[11]) + int(fields[12])) / self.tick
            except OSError:
                pass
        own = time.process_time()
        return time.monotonic(), jiffies, server, own

    def since_last(self) -> dict[str, float]:
        """steal % of all CPUs, and cores used by the server, by the generator and by everything else."""
        now = self._read()
        (t0, j0, server0, own0), (t1, j1, server1, own1) = self.last, now
        self.last = now
        wall = max(1e-9, t1 - t0)
        delta = [b - a for a, b in zip(j0, j1)]
        total = max(1, sum(delta[:8]))  # user nice system idle iowait irq softirq steal
        busy = (total - delta[3] - delta[4] - delta[7]) / self.tick
        server, own = server1 - server0, own1 - own0
        return {
            "steal_percent": 100.0 * delta[7] / total,
            "server_cores": server / wall,
            "generator_cores": own / wall,
            "other_cores": max(0.0, busy - server - own) / wall,
        }


def answered_version(body: bytes) -> int | None:
    try:
        return int(json.loads(body)["version"])
    except (ValueError, KeyError, TypeError):
        return None


def valid_image() -> bytes:
    return encode(gradient(320, 240), "JPEG", quality=90)


async def soak(args: argparse.Namespace, port: int, pid: int | None) -> int:
    body, headers = as_file(valid_image(), "a.jpg")
    valid = raw_http_request(port, f"/predict?model={args.model}", body, headers)
    hostile = [
        raw_http_request(port, f"/predict?model={args.model}", case.body, case.headers)
        for case in build_corpus()
        if case.kind == "raw" and case.status != 200 and len(case.body) < 200_000 and case.query == MODEL_QUERY
        and getattr(case, "path", "/predict") == "/predict"
    ]
    # The median of three rounds: the best one overstated what the box sustains (494.8 against 415.9 req/s
    # on the same code and box, and 70 % of the best gave queue_full bursts in a 30-minute soak).
    rounds = sorted([(await closed_loop(port, valid, args.concurrency, 5.0))[0] for _ in range(3)])
    capacity = rounds[1]
    rate = args.fraction * capacity
    print(f"capacity {capacity:.1f} req/s (median of {', '.join(f'{r:.1f}' for r in rounds)}); soaking at "
          f"{rate:.1f} req/s for {args.minutes:g} min", flush=True)

    statuses: Counter[str] = Counter()
    valid_failures: Counter[str] = Counter()
    versions: Counter[int] = Counter()
    minute_versions: set[int] = set()
    published: list[int] = []
    latencies: list[float] = []
    minute_latencies: list[float] = []
    reported: Counter[str] = Counter()
    rss_samples: list[int] = []
    machine = MachineClock(pid)
    minute_late = 0.0
    worst_late = 0.0
    busy_minutes: list[str] = []

    async def one(index: int) -> None:
        is_hostile = args.hostile_every > 0 and index % args.hostile_every == 0
        request = hostile[(index // args.hostile_every) % len(hostile)] if is_hostile else valid
        answer = await send_raw(port, request, 60)
        outcome = str(answer.status) if answer.status else "transport-error"
        statuses[outcome] += 1
        if not is_hostile:
            if answer.status == 200:
                latencies.append(answer.seconds)
                minute_latencies.append(answer.seconds)
                version = answered_version(answer.body)
                if version is not None:
                    versions[version] += 1
                    minute_versions.add(version)
            else:
                valid_failures[f"{outcome} {answer.error_code() or ''}".strip()] += 1

    tasks: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    end = started + args.minutes * 60
    next_report = started + 60
    every = args.new_version_every
    next_version_at = started + every if every else float("inf")
    index = 0
    while time.perf_counter() < end:
        if time.perf_counter() >= next_version_at:
            published.append(await asyncio.to_thread(publish_next_version, args.model_dir / args.model))
            next_version_at += every
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            minute_late = max(minute_late, -delay)
        task = asyncio.create_task(one(index))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        index += 1
        if time.perf_counter() >= next_report:
            rss = rss_bytes(pid) if pid else 0
            rss_samples.append(rss)
            cpu = machine.since_last()
            worst_late = max(worst_late, minute_late)
            this_minute = statuses - reported
            if this_minute.get("503") or this_minute.get("transport-error"):
                busy_minutes.append(
                    f"minute {len(rss_samples)}: late {minute_late * 1000:.0f} ms, others {cpu['other_cores']:.2f} "
                    f"cores, steal {cpu['steal_percent']:.1f} %"
                )
            print(
                f"{(time.perf_counter() - started) / 60:5.1f} min  sent {index}  this minute {dict(this_minute)}  "
                f"valid failures so far {sum(valid_failures.values())}  "
                f"p50 {percentile(minute_latencies, 50) * 1000:.0f} ms  p99 {percentile(minute_latencies, 99) * 1000:.0f} ms"
                f"  RSS {rss / 1e6:.0f} MB  late {minute_late * 1000:.0f} ms  cores server {cpu['server_cores']:.2f} "
                f"generator {cpu['generator_cores']:.2f} others {cpu['other_cores']:.2f}  steal {cpu['steal_percent']:.1f} %"
                + (f"  versions {sorted(minute_versions)}" if every else ""),
                flush=True,
            )
            minute_late = 0.0
            minute_latencies.clear()
            minute_versions.clear()
            reported = statuses.copy()
            next_report += 60
    await asyncio.gather(*tasks)
    if pid:
        rss_samples.append(rss_bytes(pid))
    growth = (rss_samples[-1] - rss_samples[0]) / 1e6 if len(rss_samples) >= 2 else 0.0
    server_errors = sum(count for status, count in statuses.items() if status.startswith("5") and status != "503")
    print(
        f"SUMMARY: {index} requests in {args.minutes:g} min at {rate:.1f} req/s ({args.fraction:.0%} of "
        f"{capacity:.1f}); statuses {dict(statuses)}; valid failures {dict(valid_failures)}; "
        f"valid p50 {percentile(latencies, 50) * 1000:.0f} ms p99 {percentile(latencies, 99) * 1000:.0f} ms; "
        f"RSS first minute {rss_samples[0] / 1e6 if rss_samples else 0:.0f} MB -> end "
        f"{rss_samples[-1] / 1e6 if rss_samples else 0:.0f} MB (growth {growth:+.0f} MB); the generator was at "
        f"worst {worst_late * 1000:.0f} ms late",
        flush=True,
    )
    if busy_minutes:
        print("MINUTES WITH 503s OR TRANSPORT ERRORS: " + "; ".join(busy_minutes), flush=True)
    missed: list[int] = []
    if every:
        # The last version may have been published too close to the end to be seen.
        missed = [v for v in published[:-1] if versions[v] == 0]
        print(f"VERSIONS: published {len(published)} ({published[:1]}..{published[-1:]}); answers by version "
              f"{dict(sorted(versions.items()))}; never answered: {missed}", flush=True)
    return int(bool(valid_failures) or server_errors > 0 or growth > args.max_growth_mb or bool(missed))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model-dir", type=Path, help="start python -m service on this repository")
    target.add_argument("--url", help="drive a running server on this machine, e.g. http://127.0.0.1:8000")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id (for RSS and its CPU; without it, the server's CPU is counted "
                        "in 'others')")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--fraction", type=float, default=0.7, help="share of the measured capacity to send")
    parser.add_argument("--concurrency", type=int, default=16, help="clients of the capacity measurement")
    parser.add_argument("--hostile-every", type=int, default=20, help="every Nth request is hostile (0: none)")
    parser.add_argument("--max-growth-mb", type=float, default=100.0)
    parser.add_argument("--new-version-every", type=float, default=0.0,
                        help="with --model-dir: publish a new version of --model every this many seconds")
    parser.add_argument("server_args", nargs="*", help="extra flags for python -m service (after --)")
    args = parser.parse_args()
    if args.new_version_every and args.model_dir is None:
        parser.error("--new-version-every needs --model-dir (the repository it publishes into)")
    with ExitStack() as stack:
        if args.model_dir is not None:
            server = stack.enter_context(run_server(args.model_dir.resolve(), *args.server_args))
            port, pid = server.port, server.process.pid
        else:
            port, pid = int(args.url.rstrip("/").rsplit(":", 1)[1]), args.pid
        return asyncio.run(soak(args, port, pid))


if __name__ == "__main__":
    sys.exit(main())

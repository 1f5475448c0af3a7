"""The two windows per target (clean, then profiled) and the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks import wrk
from benchmarks.diagnose import profilers
from benchmarks.diagnose.flamegraph import flamegraph_svg
from benchmarks.diagnose.report import Diagnosis, assign_roles, attribute, render
from benchmarks.diagnose.stacks import Row, read_collapsed, thread_roles
from benchmarks.diagnose.targets import TARGETS, Load, start_target
from benchmarks.procstat import group_pids, is_python, process_name, thread_cpu
from benchmarks.workload import DEFAULT_CACHE_DIR, REPO_ROOT

#: Seconds of load before and after each window, so wrk's ramp-up and tail stay outside it.
SETTLE_S = 1.5
WARMUP_S = 3.0


def diagnose(target: str, args: argparse.Namespace, out: Path) -> Diagnosis:
    """Start ``target``, warm it, then measure a clean window and a profiled one under the same load."""
    py_spy = profilers.py_spy_binary()
    with start_target(target, args.model, args.cache_dir, args.spinning) as (pgid, load, config):
        load.concurrency = args.concurrency
        with load.running(WARMUP_S):
            pass  # warm-up, discarded
        pids, wrk_clean, threads = _clean_window(load, pgid, args.seconds)
        python_pids = [pid for pid in pids if is_python(pid) and profilers.has_python_frames(py_spy, pid)]
        wrk_profiled, rows, names, native, files = _profiled_window(load, target, pids, python_pids, py_spy, args, out)
    roles = thread_roles(rows, names)
    svg = out / f"{target}-{args.model}-c{args.concurrency}.svg"
    svg.write_text(flamegraph_svg(
        rows, f"{target} {args.model} wrk c={args.concurrency}: py-spy --native, every thread incl. blocked ones", roles))
    assign_roles(threads, roles, python_pids)
    return Diagnosis(target, config, wrk_clean, wrk_profiled, threads, attribute(threads, rows, roles), native,
                     [*files, str(svg)])


def _clean_window(load: Load, pgid: int, seconds: float) -> tuple[list[int], dict[str, Any], list[dict[str, Any]]]:
    """wrk's figures and every thread's CPU over ``seconds``, nothing attached: (pids, wrk, threads)."""
    with load.running(seconds + 2 * SETTLE_S) as figures:
        time.sleep(SETTLE_S)
        pids = group_pids(pgid)
        before, t0 = thread_cpu(pids), time.perf_counter()
        time.sleep(seconds)
        after, elapsed = thread_cpu(pids), time.perf_counter() - t0
    requests = figures["requests_per_s"] * elapsed
    threads = []
    for tid, (pid, comm, cpu_s) in after.items():
        used = cpu_s - before.get(tid, (pid, comm, 0.0))[2]
        threads.append({"pid": pid, "process": process_name(pid), "tid": tid, "comm": comm,
                        "cpu_percent": 100 * used / elapsed, "cpu_us_per_request": 1e6 * used / max(requests, 1)})
    return pids, figures, threads


def _profiled_window(
    load: Load, target: str, pids: list[int], python_pids: list[int], py_spy: str, args: argparse.Namespace,
    out: Path,
) -> tuple[dict[str, Any], list[Row], dict[int, str], dict[str, str], list[str]]:
    """py-spy on the Python processes and perf on the others under the same load: (wrk, rows, thread names,
    perf's top symbols by process, files written)."""
    other_pids = [pid for pid in pids if pid not in python_pids]
    with load.running(args.seconds + 2 * SETTLE_S) as figures:
        time.sleep(SETTLE_S)
        spies = [profilers.record_python(py_spy, pid, out / f"{target}-{pid}.collapsed.txt", args.seconds,
                                         args.rate, idle=False) for pid in python_pids]
        perfs = {pid: profilers.record_native(pid, out / f"{target}-{pid}.perf.data", args.seconds) for pid in other_pids}
        for proc in [*spies, *perfs.values()]:
            if proc is not None:
                proc.wait(timeout=args.seconds + 60)
    rows: list[Row] = []
    names: dict[int, str] = {}
    files: list[str] = []
    for pid in python_pids:
        path = out / f"{target}-{pid}.collapsed.txt"
        if path.exists():
            found, found_names = read_collapsed(path)
            rows.extend(found)
            names.update(found_names)
            files.append(str(path))
    native = {}
    for pid, proc in perfs.items():
        if proc is not None:
            text = profilers.native_report(out / f"{target}-{pid}.perf.data")
            (out / f"{target}-{pid}.perf.txt").write_text(text)
            native[f"{process_name(pid)} ({pid})"] = "\n".join(text.splitlines()[:40])
            files.append(str(out / f"{target}-{pid}.perf.txt"))
    return figures, rows, names, native, files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.diagnose",
                                     description="Where a server spends its CPU per request (wrk, /proc, py-spy).")
    parser.add_argument("targets", nargs="+", choices=TARGETS)
    parser.add_argument("--model", default="resnet20", choices=("resnet20", "resnet50"))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each window")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--spinning", choices=("on", "off"), default="on", help="the peer's onnxruntime spinning")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--output-dir", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not wrk.available():
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    out = args.output_dir or REPO_ROOT / "bench-results" / f"diagnose-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()}; writing {out}", flush=True)
    summary = {}
    for target in args.targets:
        result = diagnose(target, args, out)
        text = render(result)
        print(text, flush=True)
        (out / f"{target}-{args.model}-c{args.concurrency}.txt").write_text(text + "\n")
        summary[target] = dataclasses.asdict(result)
    (out / "diagnose.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"load average {os.getloadavg()}")
    return 0

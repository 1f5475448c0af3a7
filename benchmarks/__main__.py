"""``python -m benchmarks [raw|service|workers|naive|preprocess|pytriton|litserve|torchserve|int8|gpu|lifecycle|
overhead|all] [--quick]``: one run, one table, one JSON file (``gpu`` runs alone: see benchmarks/gpu.py)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.peers import PEER_NAMES
from benchmarks.workload import (
    BENCH_MODEL_NAMES,
    DEFAULT_CACHE_DIR,
    REPO_ROOT,
    BenchModel,
    MissingSharedData,
    bench_models,
    model_repository,
)
from export.progress import terminal

SUITES = ("preprocess", "raw", "service", "workers", "naive", "pytriton")
#: Outside ``all``, run when named: peers that each need a venv of their own (TorchServe: torch and Java) and
#: minutes per model; ``int8`` exports ten models and measures the accuracy of four; ``gpu`` is the GPU run
#: (its own models, checks and table; on a CPU host the same steps on the CPU); the lifecycle cases
#: (deadlines and hang-ups, on resnet50 whatever --models says); the cost of the lifecycle and of tracing
#: (resnet20, against --service-root when given).
OPT_IN = ("litserve", "torchserve", "int8", "gpu", "lifecycle", "overhead")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark the service against in-process onnxruntime (raw), FastAPI + PyTorch eager (naive) "
        "and peer servers (PyTriton; LitServe and TorchServe on request) serving the same ONNX file; on request, "
        "INT8 against fp32 in accuracy and raw speed (int8; finer switches: python -m benchmarks.int8 --help).",
    )
    parser.add_argument(
        "suites", nargs="*", choices=(*SUITES, *OPT_IN, "all"), default=["all"],
        help=f"what to run (default: all = {' '.join(SUITES)}; {', '.join(OPT_IN)} only when named)",
    )
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke run: fewer sizes, shorter phases")
    parser.add_argument(
        "--models", default=",".join(BENCH_MODEL_NAMES),
        help="comma-separated: resnet50 (224x224, random weights), resnet20 (real CIFAR-10 weights), and their "
        "-int8 exports (default: all four; naive and peers run the fp32 ones; int8 has its own)",
    )
    parser.add_argument("--no-perf-analyzer", action="store_true",
                        help="skip V2 gRPC (Triton's perf_analyzer, installed into the cache dir on first use)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="exported models are kept here")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default bench-results/bench-<time>.json)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per load phase (overrides the mode)")
    parser.add_argument("--no-wrk", action="store_true", help="skip the native wrk client")
    parser.add_argument("--cpu", action="store_true",
                        help="gpu: run the CPU provider's version of the steps even where a GPU is present")
    parser.add_argument("--no-freeze-idle", action="store_true",
                        help="peers: leave the idle server running during the other's slices (default: SIGSTOP it)")
    parser.add_argument("--service-root", type=Path, default=REPO_ROOT,
                        help="lifecycle, overhead: the service from this checkout (another branch: before/after)")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="no progress bar and no line as each phase starts: the figures and the table only "
                        "(the bar shows only on a terminal; elsewhere each phase prints one line as it starts)")
    return parser


def environment() -> dict[str, Any]:
    import onnxruntime

    cpu = "?"
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

Phase = tuple[str, Callable[[], None]]


def selected_suites(args: argparse.Namespace) -> tuple[str, ...]:
    """The suites named (``all``: every one of SUITES), in the order they run."""
    chosen = set(args.suites) | (set(SUITES) if "all" in args.suites else set())
    return tuple(s for s in (*SUITES, *OPT_IN) if s in chosen)


def _phases(
    args: argparse.Namespace, suites: tuple[str, ...], models: list[BenchModel], results: dict[str, Any],
    log: Callable[[str], None],
) -> list[Phase]:
    """What the run does, in order, as (name, step) pairs: counted up front, so progress can say "3 of 9".

    Each step writes its figures into ``results``; later steps read what earlier ones left in ``repos``.
    """
    peers = tuple(s for s in suites if s in PEER_NAMES)
    # PyTorch eager has no INT8 counterpart of the file, and the peers are compared on fp32.
    fp32_models = [model for model in models if not model.int8]
    repos: dict[str, Path] = {}
    phases: list[Phase] = []
    if set(suites) & {"raw", "service", "workers", *PEER_NAMES}:
        for model in models:
            def export(model: BenchModel = model) -> None:
                repos[model.name] = model_repository(model, args.cache_dir)

            phases.append((f"exporting {model.name} into {args.cache_dir} (skipped when already there)", export))
    if "preprocess" in suites:
        def preprocess() -> None:
            from benchmarks import preprocess_bench

            results["preprocess"] = preprocess_bench.run(quick=args.quick, log=log)

        phases.append(("preprocess", preprocess))
    if "raw" in suites:
        from benchmarks import raw

        results["raw"] = {}
        for model in models:
            def run_raw(model: BenchModel = model) -> None:
                results["raw"][model.name] = raw.run(model, repos[model.name], quick=args.quick, log=log)

            phases.append((f"raw {model.name}", run_raw))
    if "service" in suites:
        from benchmarks import service_bench

        analyzer: dict[str, Path | str] = {"binary": "skipped (--no-perf-analyzer or --no-wrk)"}
        if not args.no_perf_analyzer and not args.no_wrk:
            def install() -> None:
                from benchmarks import perf_analyzer

                analyzer["binary"] = perf_analyzer.ensure_installed(args.cache_dir, log)

            phases.append(("perf_analyzer (installed into the cache dir on first use)", install))
        results["service"] = {}
        for model in models:
            def run_service(model: BenchModel = model) -> None:
                results["service"][model.name] = service_bench.run(
                    model, repos[model.name], quick=args.quick, duration=args.duration, use_wrk=not args.no_wrk,
                    perf_analyzer=analyzer["binary"], log=log,
                )

            phases.append((f"service {model.name}", run_service))
    if "workers" in suites:
        def run_workers() -> None:
            from benchmarks import workers_bench

            results["workers"] = workers_bench.run(
                models, repos, cache_dir=args.cache_dir, quick=args.quick, duration=args.duration, log=log
            )

        phases.append(("workers: 1 against 2 worker processes", run_workers))
    if peers:
        from benchmarks.peers import peer
        from benchmarks.peers.runner import Paired
        from benchmarks.peers.runner import run as run_peer
        from benchmarks.service_bench import serving

        # The service runs beside each peer, and every phase alternates between the two (see runner).
        results["peers"] = {name: {} for name in peers}
        for model in fp32_models:
            def run_peers(model: BenchModel = model) -> None:
                with serving(model, repos[model.name]) as (url, body, pgid):
                    for name in peers:
                        results["peers"][name][model.name] = run_peer(
                            peer(name), model, repos[model.name], cache_dir=args.cache_dir, quick=args.quick,
                            duration=args.duration, log=log,
                            paired=Paired(url, body, pgid, freeze_idle=not args.no_freeze_idle),
                        )

            phases.append((f"{', '.join(peers)} {model.name} (interleaved with the service)", run_peers))
    if "int8" in suites:
        def run_int8() -> None:
            from benchmarks import int8

            results["int8"] = int8.run(args.cache_dir, quick=args.quick, log=log)

        phases.append(("int8", run_int8))
    if "lifecycle" in suites:
        def run_lifecycle() -> None:
            from benchmarks import lifecycle

            (resnet50,) = bench_models(["resnet50"])
            results["lifecycle"] = lifecycle.run(
                resnet50, model_repository(resnet50, args.cache_dir), service_root=args.service_root.resolve(), log=log
            )

        phases.append(("lifecycle resnet50 (deadlines and hang-ups)", run_lifecycle))
    if "overhead" in suites:
        def run_overhead() -> None:
            from benchmarks import overhead, wrk

            (resnet20,) = bench_models(["resnet20"])
            if not wrk.available() or args.no_wrk:
                log("note: overhead needs wrk (apt-get install wrk): skipped")
                return
            results["overhead"] = overhead.run(
                resnet20, model_repository(resnet20, args.cache_dir), service_root=args.service_root,
                seconds=args.duration or (3.0 if args.quick else 10.0), rounds=2 if args.quick else overhead.ROUNDS,
                log=log,
            )

        phases.append(("overhead resnet20 (interleaved: before, tracing off, tracing on)", run_overhead))
    if "naive" in suites:
        from benchmarks import naive

        results["naive"] = {}
        for model in fp32_models:
            def run_naive(model: BenchModel = model) -> None:
                results["naive"][model.name] = naive.run(
                    model, quick=args.quick, duration=args.duration, use_wrk=not args.no_wrk, log=log
                )

            phases.append((f"naive {model.name}", run_naive))
    return phases


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    suites = selected_suites(args)
    if "gpu" in suites:
        if len(suites) > 1:
            print("error: the gpu suite runs alone (its own models, checks and table)", file=sys.stderr)
            return 2
        from benchmarks import gpu

        try:
            return gpu.main(cache_dir=args.cache_dir, quick=args.quick, force_cpu=args.cpu, output=args.output)
        except MissingSharedData as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    peers = tuple(s for s in suites if s in PEER_NAMES)
    console = terminal(quiet=args.quiet)
    if peers and args.no_wrk:
        console.log(f"note: --no-wrk: skipping {', '.join(peers)} (peers are measured with wrk only)")
        suites, peers = tuple(s for s in suites if s not in peers), ()
    started = time.perf_counter()
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "environment": environment()}
    try:
        models = bench_models([name.strip() for name in args.models.split(",") if name.strip()])
        results["models"] = {
            model.name: {"arch": model.arch, "precision": model.precision, "weights": model.weights_note}
            for model in models
        }
        phases = _phases(args, suites, models, results, console.log)
        with console.progress.step("python -m benchmarks", len(phases), "phases") as advance:
            for name, run in phases:
                with console.progress.step(name):
                    run()
                advance(1)
    except MissingSharedData as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from benchmarks.headline import headline

    results["headline"] = headline(results)
    results["environment"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = round(time.perf_counter() - started, 1)
    output = args.output or REPO_ROOT / "bench-results" / f"bench-{datetime.now():%Y%m%d-%H%M%S}.json"
    report.write_json(results, output)
    print()
    print(report.render(results))
    print(f"\nwrote {output} in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m benchmarks workers``: one serving process against two (``WORKERS``), and one process's ceiling.

For resnet20 and resnet50 (fp32), a 1-worker and a 2-worker service run side by side (for resnet50 also
2 workers with every usable CPU as intra-op threads each, instead of half); rounds alternate between them
with the idle ones frozen (SIGSTOP of their process groups), each round wrk at c=1 and c=32 with one JPEG
a request. The same with a **near-free** classifier (a global average pool and a 3x10 matrix,
built with onnx.helper and imported with ``export.onnx_import``, so the file has the real wrapper and
card): there nothing but HTTP, decoding, batching and the event loop costs, so one worker's requests/s
at saturation is the per-process ceiling. Every phase also records the server's CPU per image and the
CPU its event-loop threads (each process's main thread) spent per request: the loop's share is what one
process cannot spread over more cores, so ``1000 / loop ms`` is the most one worker takes with a core
of its own. :func:`projection` turns the figures into the workers a 16- and a 64-core host needs.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks import loadgen, wrk
from benchmarks.procstat import CLOCK_TICKS, group_cpu_seconds, group_pids, server_cpu, stat_fields
from benchmarks.prometheus import samples
from benchmarks.report import median_known
from benchmarks.server import free_port, paused, python, running_server
from benchmarks.service_bench import service_env
from benchmarks.workload import BenchModel, cifar_jpegs, payloads_for
from service.settings import Settings

#: Each server of the comparison: its label and the settings that differ from the defaults.
VARIANTS: dict[str, dict[str, str]] = {"1w": {"RESNET_SERVE_WORKERS": "1"}, "2w": {"RESNET_SERVE_WORKERS": "2"}}
#: Where inference is the bound, also 2 workers keeping every usable CPU as intra-op threads each (instead of
#: usable / 2): a lone request then runs on as many threads as with one worker.
ALL_THREADS = "2w all threads"
CONCURRENCY = (1, 32)
NEAR_FREE = "nearfree"
#: A worker is planned at this fraction of its loop's ceiling: a saturated loop queues every request.
LOOP_TARGET = 0.8
HOST_CORES = (16, 64)

Log = Callable[[str], None]


def run(models: list[BenchModel], repos: dict[str, Path], *, cache_dir: Path, quick: bool,
        duration: float | None, log: Log = print) -> dict[str, Any]:
    """Every model of ``models`` (fp32 only) and the near-free one, 1 against 2 workers."""
    rounds = 1 if quick else 2
    results: dict[str, Any] = {"rounds": rounds, "models": {}}
    targets = [(m.name, repos[m.name], payloads_for(m), 20.0 if m.kind == "imagenet" else 10.0)
               for m in models if not m.int8]
    targets.append((NEAR_FREE, near_free_repository(cache_dir), cifar_jpegs(), 10.0))
    usable = Settings(model_dir=cache_dir).cpus.usable
    for name, repo, payloads, seconds in targets:
        variants = dict(VARIANTS)
        if seconds > 10.0:  # the ImageNet model
            variants[ALL_THREADS] = {"RESNET_SERVE_WORKERS": "2", "RESNET_SERVE_INTRA_OP_THREADS": str(usable)}
        seconds = duration or (seconds / 4 if quick else seconds)
        log(f"workers {name}: {', '.join(variants)}, {rounds} round(s) ...")
        body = loadgen.bodies(payloads, 1)[0]
        results["models"][name] = _compare(name, repo, body, seconds, rounds, variants, log)
    results["projection"] = projection(results["models"])
    return results


def _compare(name: str, repo: Path, body: loadgen.Body, seconds: float, rounds: int,
             variants: dict[str, dict[str, str]], log: Log) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    with ExitStack() as stack:
        servers = {label: stack.enter_context(_serving(repo, label, env)) for label, env in variants.items()}
        for pgid, url in servers.values():  # one short warm-up each, frozen sibling, not recorded
            with _alone(servers, pgid):
                wrk.run(url, body, concurrency=32, seconds=2)
                _settle(url)
        for round_number in range(1, rounds + 1):
            order = list(servers.items())  # every other round in reverse: no variant always goes first
            for variant, (pgid, url) in order if round_number % 2 else order[::-1]:
                with _alone(servers, pgid):
                    for concurrency in CONCURRENCY:
                        phase = seconds / 2 if concurrency == 1 else seconds
                        row = _measure(pgid, lambda u=url, c=concurrency, s=phase: wrk.run(
                            u, body, concurrency=c, seconds=s))
                        _settle(url)
                        row.update(variant=variant, concurrency=concurrency, round=round_number)
                        runs.append(row)
                        log(f"  {name} {variant:<14} c={concurrency:<3} {row['images_per_s']:8.1f} img/s  "
                            f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
                            f"cores {row['server_cores'] or 0:.2f}  "
                            f"cpu {row['server_cpu_ms_per_image'] or 0:.2f} ms/img  "
                            f"loop {row['loop_cpu_ms_per_request'] or 0:.3f} ms/req  errors {row['errors'] or 0}")
    return {"runs": runs, "summary": summarize(runs)}


@contextmanager
def _serving(repo: Path, label: str, settings: dict[str, str]) -> Iterator[tuple[int, str]]:
    port = free_port()
    env = {**service_env(repo, port), **settings}
    base = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.gettempdir()) / f"bench-workers-{repo.name}-{label.replace(' ', '-')}-{port}.log"
    with running_server([python(), "-m", "service"], env, f"{base}/health/ready", log_path=log_path) as process:
        yield process.pid, f"{base}/predict?top_k=5"


def _settle(url: str, timeout_s: float = 120.0) -> None:
    """Wait until the server has answered what the last phase left in flight (wrk stops sending, the
    server still finishes its queue: a resnet50 queue of 32 photos is seconds of work on 2 cores)."""
    metrics = url.split("/predict", 1)[0] + "/metrics"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = httpx.get(metrics, timeout=30).text
        if sum(value for name, _, value in samples(text) if name == "resnet_serve_inflight_images") == 0:
            return
        time.sleep(0.2)


@contextmanager
def _alone(servers: dict[int, tuple[int, str]], pgid: int) -> Iterator[None]:
    """The other servers frozen for the block."""
    with ExitStack() as stack:
        for other, _ in servers.values():
            if other != pgid:
                stack.enter_context(paused(other))
        yield


def _measure(pgid: int, phase: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    pids = group_pids(pgid)
    cpu_before, loop_before, started = group_cpu_seconds(pgid), _main_threads_cpu(pids), time.monotonic()
    row = phase()
    cpu_after, loop_after, wall = group_cpu_seconds(pgid), _main_threads_cpu(pids), time.monotonic() - started
    images = float(row["requests_ok"])  # type: ignore[arg-type]
    row.update(server_cpu(cpu_before, cpu_after, wall, images))
    row["loop_cpu_ms_per_request"] = 1000 * (loop_after - loop_before) / images if images else None
    return row


def _main_threads_cpu(pids: list[int]) -> float:
    """CPU seconds of each process's main thread: uvicorn's event loop runs there (the parent's is idle)."""
    total = 0.0
    for pid in pids:
        try:
            fields = stat_fields(Path(f"/proc/{pid}/task/{pid}/stat"))
        except (OSError, ValueError):
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds per (variant, concurrency), and each variant over one worker."""
    cells: dict[str, Any] = {}
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    for variant in variants:
        for concurrency in CONCURRENCY:
            rows = [r for r in runs if r["variant"] == variant and r["concurrency"] == concurrency]
            if not rows:
                continue
            cells[f"{variant} c={concurrency}"] = {
                key: median_known([r[key] for r in rows])
                for key in ("images_per_s", "p50_ms", "p99_ms", "server_cores", "server_cpu_ms_per_image",
                            "loop_cpu_ms_per_request")
            } | {"errors": sum(sum(r["errors"].values()) for r in rows if r["errors"]), "rounds": len(rows)}
    ratios = {}  # "<variant> c=<n> img/s" and "... p50": the variant's figure over one worker's
    for variant in variants[1:]:
        for concurrency in CONCURRENCY:
            one, other = cells.get(f"1w c={concurrency}"), cells.get(f"{variant} c={concurrency}")
            if one and other and one["images_per_s"]:
                ratios[f"{variant} c={concurrency} img/s"] = other["images_per_s"] / one["images_per_s"]
                ratios[f"{variant} c={concurrency} p50"] = other["p50_ms"] / one["p50_ms"] if one["p50_ms"] else None
    return {"cells": cells, "over_one_worker": ratios}


def projection(models: dict[str, Any]) -> dict[str, Any]:
    """Workers a host of 16 or 64 cores needs per model, from this run's per-image CPU and the loop's ceiling.

    One worker's loop takes at most ``1000 / loop ms per request`` requests/s with a core to itself (the
    near-free model's figure, where nothing else costs); a host of C cores serves at most
    ``C x 1000 / CPU ms per image`` images/s of a model (the least of its 1-worker phases, everything
    included: on a box shared with other work a phase can spend several times the CPU an image needs);
    the workers needed keep each loop at :data:`LOOP_TARGET` of its ceiling. CPU per image is taken on
    two cores: onnxruntime spreads a batch over more cores less than perfectly, so on a big host the
    throughput is lower and these counts are upper bounds."""
    free = models.get(NEAR_FREE, {}).get("summary", {}).get("cells", {}).get("1w c=32")
    if not free or not free.get("loop_cpu_ms_per_request"):
        return {}
    ceiling = 1000 / free["loop_cpu_ms_per_request"]
    rows = {}
    for name, figures in models.items():
        costs = [cell["server_cpu_ms_per_image"] for label, cell in figures["summary"]["cells"].items()
                 if label.startswith("1w ") and cell.get("server_cpu_ms_per_image")]
        if name == NEAR_FREE or not costs:
            continue
        cpu_ms = min(costs)
        per_core = 1000 / cpu_ms
        rows[name] = {
            "cpu_ms_per_image": cpu_ms,
            "cores_one_loop_feeds": LOOP_TARGET * ceiling / per_core,
            **{f"{cores} cores": {"images_per_s": cores * per_core,
                                  "workers": max(1, math.ceil(cores * per_core / (LOOP_TARGET * ceiling)))}
               for cores in HOST_CORES},
        }
    return {"loop_ceiling_requests_per_s": ceiling, "measured_1w_saturation_requests_per_s": free["images_per_s"],
            "loop_target": LOOP_TARGET, "models": rows}


def near_free_repository(cache_dir: Path) -> Path:
    """``<cache>/repos/nearfree``: a 32x32 classifier that averages the pixels and multiplies by a 3x10
    matrix, imported like any user's ONNX file (skipped when already there)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from export.onnx_import import import_onnx
    from export.presets import PreprocessingSpec

    repo = cache_dir / "repos" / NEAR_FREE
    repo.mkdir(parents=True, exist_ok=True)
    weights = np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["pixel_values"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "weights", "bias"], ["logits"]),
        ],
        "nearfree",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(np.zeros(10, np.float32), "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)  # onnxruntime reads <= 13
    source = cache_dir / f"{NEAR_FREE}.onnx"
    onnx.save(model, source)
    import_onnx(source, model_dir=repo, name=NEAR_FREE, outputs="logits", log=lambda line: None,
                preprocessing=PreprocessingSpec(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    return repo


def render(section: dict[str, Any], table: Callable[..., str]) -> list[str]:
    """The WORKERS table (medians over rounds) and the projection."""
    title = (f"\nWORKERS: 1 against 2 serving processes, wrk, one JPEG a request, medians of {section['rounds']} "
             "interleaved round(s) (the idle server frozen)")
    parts = [title]
    rows = []
    for name, figures in section["models"].items():
        for label, cell in figures["summary"]["cells"].items():
            rows.append([name, label, cell["images_per_s"], cell["p50_ms"], cell["p99_ms"], cell["server_cores"],
                         cell["server_cpu_ms_per_image"], cell["loop_cpu_ms_per_request"], cell["errors"]])
        for label, ratio in figures["summary"]["over_one_worker"].items():
            rows.append([name, f"{label} / 1w", ratio, None, None, None, None, None, None])
    parts.append(table(["model", "scenario", "img/s", "p50 ms", "p99 ms", "srv cores", "cpu ms/img",
                        "loop ms/req", "errors"], rows))
    plan = section.get("projection")
    if plan:
        parts.append(
            f"\nPROJECTION: one worker's loop takes {plan['loop_ceiling_requests_per_s']:,.0f} req/s with a core of its "
            f"own (near-free model; {plan['measured_1w_saturation_requests_per_s']:,.0f} req/s measured at c=32 on "
            f"this box); workers planned at {plan['loop_target']:.0%} of it")
        parts.append(table(
            ["model", "cpu ms/img", "cores one loop feeds", *[f"{c} cores: img/s, workers" for c in HOST_CORES]],
            [[name, row["cpu_ms_per_image"], row["cores_one_loop_feeds"],
              *[f"{row[f'{c} cores']['images_per_s']:,.0f}, {row[f'{c} cores']['workers']}" for c in HOST_CORES]]
             for name, row in plan["models"].items()],
        ))
    return parts


def goals(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 30's goals on this box: resnet20 2w >= 1.10x 1w at c=32 with 0 errors; resnet50 >= 0.95x, and
    its one-client p50 with 2 workers no worse than 1.1x (also shown with every thread in each worker)."""
    lines = []
    for name, minimum in (("resnet20", 1.10), ("resnet50", 0.95)):
        summary = section["models"].get(name, {}).get("summary")
        if not summary or "2w c=32 img/s" not in summary["over_one_worker"]:
            continue
        ratio = summary["over_one_worker"]["2w c=32 img/s"]
        errors = sum(cell["errors"] for label, cell in summary["cells"].items() if label.split(" c=")[0] in VARIANTS)
        lines.append({"figure": f"workers 2/1 {name} img/s (wrk c=32, errors {errors})", "value": ratio,
                      "goal": f">= {minimum}, 0 errors", "met": ratio >= minimum and errors == 0})
        for variant in ("2w", ALL_THREADS) if name == "resnet50" else ():
            p50 = summary["over_one_worker"].get(f"{variant} c=1 p50")
            if p50 is not None:
                lines.append({"figure": f"workers {variant}/1w resnet50 p50 at c=1", "value": p50,
                              "goal": "<= 1.1", "met": p50 <= 1.1})
    return lines

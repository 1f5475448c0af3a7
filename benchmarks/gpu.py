"""``python -m benchmarks gpu [--quick] [--cpu]``: the GPU run, ready for the first device, in one script.

In order: the checks of :mod:`benchmarks.gpu_checks` on resnet20 (its first minute), then resnet50 fp32
and fp16 (exported in a background process while the checks run), the GPU-marked tests, model-only
images/s at batch 1-256 (IO binding beside the host-array path), ``/predict`` end to end with JPEG uploads
at 64 and 256 clients with 1 and 4 workers, and one table with the goals (H100: resnet50 fp16 model-only
>= 30,000 img/s; JPEG end to end >= 5,000 img/s and what bounds it).

Without a GPU (or with ``--cpu``) the same steps run on the CPU provider at small sizes and every line
says CPU; ``--quick`` there is the CI run (resnet20 only, one worker, two-second phases). The JSON of the
run goes to ``bench-results/gpu-<time>.json``. The exit status is 1 when a check or a GPU test failed.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import tempfile
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np

from benchmarks import gpu_checks, gpu_load, report
from benchmarks.gpu_checks import Check, Log, Mode
from benchmarks.server import python
from benchmarks.workload import (
    REPO_ROOT,
    BenchModel,
    bench_models,
    cifar_jpegs,
    model_repository,
    photo_jpegs,
)
from servable.images import preprocess_image
from service.engine.runtime import LoadedModel
from service.limits.cpus import cpu_budget

#: Goals of issue 30 for an H100.
RAW_GOAL_IMAGES_PER_S = 30_000
E2E_GOAL_IMAGES_PER_S = 5_000
POWERS_TO_256 = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: GPU or CPU, full or quick."""

    check_models: tuple[str, ...]
    models: tuple[str, ...]
    e2e_model: str
    batches: tuple[int, ...]
    max_batch: int
    check_max_batch: int
    raw_seconds: float
    clients: tuple[int, ...]
    workers: tuple[int, ...]
    phase_seconds: float


def plan_for(mode: Mode, *, quick: bool) -> Plan:
    if mode.gpu:
        return Plan(("resnet20", "resnet20-fp16"), ("resnet50", "resnet50-fp16"), "resnet50-fp16",
                    (1, 16, 64, 256) if quick else POWERS_TO_256, 256, 64, 0.5 if quick else 1.0,
                    (64, 256), (1, 4), 5.0 if quick else 10.0)
    if quick:
        return Plan(("resnet20",), ("resnet20",), "resnet20", (1, 8, 32), 32, 8, 0.3, (64, 256), (1,), 2.0)
    return Plan(("resnet20", "resnet20-fp16"), ("resnet50", "resnet50-fp16"), "resnet50", (1, 2, 4, 8, 16, 32),
                32, 16, 2.0, (64, 256), (1, 4), 10.0)


def export_in_background(models: list[BenchModel], cache_dir: Path) -> tuple[ProcessPoolExecutor, dict[str, Future[Path]]]:
    """Export ``models`` in another process (spawned: this one will hold a CUDA context) during the checks."""
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    return pool, {model.name: pool.submit(model_repository, model, cache_dir) for model in models}


def gpu_tests(workdir: Path, log: Log) -> dict[str, Any]:
    """Run every test marked ``gpu`` (they skip, saying why, without a GPU); counts from pytest's JUnit XML."""
    files = [str(p) for p in sorted((REPO_ROOT / "tests").glob("test_*.py")) if "mark.gpu" in p.read_text()]
    if not files:
        return {"files": [], "note": "no test is marked gpu"}
    junit = workdir / "gpu-tests.xml"
    command = [python(), "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *files]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False)
    log("\n".join("  " + line for line in done.stdout.strip().splitlines()[-6:]))
    try:
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    except (OSError, ElementTree.ParseError, IndexError) as exc:
        return {"files": files, "exit": done.returncode, "note": f"no JUnit report ({exc}): {done.stdout[-300:]}"}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"files": [Path(f).name for f in files], "exit": done.returncode, "passed": passed, **counts}


def crops(jpegs: list[tuple[str, bytes]], model: LoadedModel) -> np.ndarray:
    """The model's own input for each JPEG (decoded, resized, cropped as the service does)."""
    return np.stack([preprocess_image(data, model.card.preprocessing) for _, data in jpegs])


def run(*, cache_dir: Path, quick: bool, force_cpu: bool, log: Log) -> dict[str, Any]:
    started = time.perf_counter()
    mode = gpu_checks.detect_mode(cache_dir, force_cpu=force_cpu)
    plan = plan_for(mode, quick=quick)
    workdir = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    usable = cpu_budget().usable
    results: dict[str, Any] = {"mode": mode.label, "gpu": mode.gpu, "quick": quick, "plan": asdict(plan),
                               "checks": [], "raw": [], "e2e": [], "notes": [], "seconds": {}}
    log(f"{mode.label.upper()}; {'quick' if quick else 'full'} plan, providers {mode.providers}")
    heavy = [m for m in bench_models(list(plan.models)) if m.name not in plan.check_models]
    pool, exports = export_in_background(heavy, cache_dir) if heavy else (None, {})
    checks: list[Check] = results["checks"]

    def step(name: str) -> None:
        results["seconds"][name] = round(time.perf_counter() - started, 1)

    try:
        check_repos = {m.name: model_repository(m, cache_dir) for m in bench_models(list(plan.check_models))}
        step("check exports")
        checks.append(gpu_checks.timed(lambda: gpu_checks.check_libraries(mode)))
        pixels = np.empty(0)
        for name, repo in check_repos.items():
            loading = time.perf_counter()
            model = gpu_checks.open_version(repo, name, 1, mode.settings(repo, plan.check_max_batch))
            pixels = pixels if pixels.size else crops(cifar_jpegs(32), model)
            checks.append(gpu_checks.check_strict_session(name, model, mode, log))
            checks[-1].seconds = time.perf_counter() - loading  # the session's creation: engine builds
            checks.append(gpu_checks.timed(lambda m=model, n=name: gpu_checks.check_buckets(n, m)))
            model.close()
        first = next(iter(check_repos.items()))
        source = first[1] / first[0] / "1" / "model.onnx"
        checks.append(gpu_checks.timed(
            lambda: gpu_checks.check_two_versions(source, workdir, mode, pixels, plan.check_max_batch)))
        checks.append(gpu_checks.timed(
            lambda: gpu_checks.check_service(first[1], first[0], mode, cifar_jpegs(8), workdir, plan.check_max_batch)))
        for check in checks:
            log(f"  check {check.name}: {_verdict(check.ok)} ({check.seconds:.1f} s) {check.detail}")
        step("checks")
        repos = {**check_repos, **{name: future.result() for name, future in exports.items()}}
        step("exports")
        log("GPU-marked tests ...")
        results["tests"] = gpu_tests(workdir, log)
        step("gpu tests")
        photos = photo_jpegs()
        for name in plan.models:
            model = gpu_checks.open_version(repos[name], name, 1, mode.settings(repos[name], plan.max_batch))
            pixels = crops(photos if "resnet50" in name else cifar_jpegs(64), model)
            results["raw"] += gpu_load.model_only(name, model, pixels, plan.batches, seconds=plan.raw_seconds,
                                                  mode=mode, device_id=0, log=log)
            model.close()
        step("model-only")
        raw_rows = [r for r in results["raw"] if r["model"] == plan.e2e_model]
        rows, notes = gpu_load.end_to_end(
            mode, repos[plan.e2e_model], plan.e2e_model, photos if "resnet50" in plan.e2e_model else cifar_jpegs(64),
            raw_rows, clients=plan.clients, workers=plan.workers, seconds=plan.phase_seconds,
            max_batch=plan.max_batch, usable_cpus=usable, log=log)
        results["e2e"], results["notes"] = rows, notes
        step("end to end")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    results["checks"] = [asdict(check) for check in checks]
    results["goals"] = goals(results, mode)
    return results


def _verdict(ok: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "n/a"}[ok]


def goals(results: dict[str, Any], mode: Mode) -> list[dict[str, Any]]:
    """The issue's two goals, judged only on a GPU (a CPU run says n/a)."""
    raw = [max(r["images_per_s"], r.get("iobinding_images_per_s") or 0) for r in results["raw"]
           if r["model"] == "resnet50-fp16"]
    clean = [r for r in results["e2e"] if not r.get("errors")]
    e2e = [r["images_per_s"] for r in clean]
    best_e2e = max(clean, key=lambda r: r["images_per_s"], default=None)  # what bounds the row judged
    return [
        {"figure": "resnet50 fp16 model-only img/s (host arrays or IO binding, the better)", "value": max(raw, default=None),
         "goal": f">= {RAW_GOAL_IMAGES_PER_S:,}", "met": (max(raw, default=0) >= RAW_GOAL_IMAGES_PER_S) if mode.gpu else None},
        {"figure": "JPEG /predict end to end img/s", "value": max(e2e, default=None),
         "goal": f">= {E2E_GOAL_IMAGES_PER_S:,}", "met": (max(e2e, default=0) >= E2E_GOAL_IMAGES_PER_S) if mode.gpu else None,
         "bound": best_e2e["bound"] if best_e2e else None},
    ]


def render(results: dict[str, Any]) -> str:
    """One table: checks, tests, model-only rows, end-to-end rows and the goals."""
    rows: list[list[Any]] = []
    for check in results["checks"]:
        rows.append(["check", "", check["name"], None, None, None, _verdict(check["ok"]), check["detail"][:110]])
    tests = results.get("tests", {})
    if tests:
        summary = (f"{tests.get('passed', 0)} passed, {tests.get('failures', 0) + tests.get('errors', 0)} failed, "
                   f"{tests.get('skipped', 0)} skipped") if "tests" in tests else tests.get("note", "")
        rows.append(["gpu tests", "", "pytest -m gpu", None, None, None,
                     _verdict(not (tests.get("failures") or tests.get("errors"))) if "tests" in tests else "n/a", summary])
    for r in results["raw"]:
        rows.append(["model-only", r["model"], f"batch {r['batch']}", r["images_per_s"], r.get("iobinding_images_per_s"),
                     r["latency_ms_p50"], "", ""])
    for r in results["e2e"]:
        errors = sum(int(v) for v in (r.get("errors") or {}).values() if str(v).isdigit())
        rows.append(["/predict JPEG", r["model"], f"{r['workers']} worker(s), {r['clients']} clients",
                     r["images_per_s"], None, r["p50_ms"], "", (f"bound: {r['bound']} {r['shares']}; p99 "
                     f"{r['p99_ms']:.1f} ms; errors {errors}; mean batch {r.get('mean_batch_size') or 0:.1f}")])
    for g in results["goals"]:
        rows.append(["goal", "", g["figure"], g["value"], None, None, _verdict(g["met"]),
                     f"{g['goal']}" + (f"; bound: {g['bound']}" if g.get("bound") else "")])
    head = f"{results['mode']} ({'quick' if results['quick'] else 'full'}); step times (s since start) {results['seconds']}"
    notes = "".join(f"\nnote: {n}" for n in results["notes"])
    return head + "\n" + report.table(
        ["step", "model", "setting", "img/s", "img/s IO binding", "p50 ms", "result", "detail"], rows) + notes


def failed(results: dict[str, Any]) -> bool:
    tests = results.get("tests", {})
    return any(c["ok"] is False for c in results["checks"]) or bool(tests.get("failures") or tests.get("errors"))


def main(*, cache_dir: Path, quick: bool, force_cpu: bool, output: Path | None) -> int:
    log: Log = lambda line: print(line, flush=True)
    results = run(cache_dir=cache_dir, quick=quick, force_cpu=force_cpu, log=log)
    path = output or REPO_ROOT / "bench-results" / f"gpu-{datetime.now():%Y%m%d-%H%M%S}.json"
    report.write_json(results, path)
    print()
    print(render(results))
    total = max(results["seconds"].values(), default=0)
    print(f"\nwrote {path}; {total:.0f} s in all")
    return 1 if failed(results) else 0

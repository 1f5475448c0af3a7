"""Drive one peer beside the service: same ONNX file, same JPEG, same wrk phases, after a correctness check.

Each variant (onnxruntime spinning on/off) gets a fresh server: start, check that one answer matches
in-process onnxruntime on the same crop, warm up with discarded load, then ``wrk`` at concurrency 1
and 32 with one JPEG per request. The service runs all along (started by the caller), and each phase
alternates between the two in slices, service then peer, ``ROUNDS`` times: on a shared machine whose
load drifts by the minute, both see the same machine, so the ratio compares like with like. The idle
one is frozen meanwhile (``Paired.freeze_idle``), and each slice records both servers' CPU.
Anything that fails (install, start, a wrong answer) is recorded with its reason and the run carries on.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from benchmarks import wrk
from benchmarks.loadgen import Body
from benchmarks.peers import venv
from benchmarks.peers.base import Peer, PeerRequest, check_scores
from benchmarks.phases import PEER_CONCURRENCY, phase_seconds, plan_for
from benchmarks.procstat import group_cpu_seconds, server_cpu
from benchmarks.server import ServerFailed, paused, running_server
from benchmarks.workload import BenchModel, payloads_for
from servable.card import INPUT_NAME, OUTPUT_NAME, ModelCard
from servable.images import preprocess_image


def onnx_file(repo: Path, model: BenchModel) -> Path:
    """The very file the service serves: ``<repo>/<name>/<version>/model.onnx`` (highest version)."""
    versions = sorted((p for p in (repo / model.name).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        raise FileNotFoundError(f"no exported version of {model.name} in {repo}")
    return versions[-1] / "model.onnx"


def expected_probabilities(onnx: Path, jpeg: bytes) -> np.ndarray:
    """In-process onnxruntime on the service's crop of ``jpeg``: what every peer must answer."""
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    card = ModelCard.from_metadata(session.get_modelmeta().custom_metadata_map)
    pixels = preprocess_image(jpeg, card.preprocessing)[None]
    (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: pixels})
    return probabilities[0]


def warmup_seconds(quick: bool) -> float:
    return 1.0 if quick else 3.0


#: Slices per phase and server (service, peer, service, peer): each gets the phase's length in total.
ROUNDS = 2


@dataclass(frozen=True)
class Paired:
    """The running service the peer is measured against: its URL and the multipart body wrk posts."""

    url: str
    body: Body
    #: The service's process group (its pid): each slice also reads how much CPU the idle one took.
    pgid: int | None = None
    #: Freeze the idle server (SIGSTOP its process group) during the other's slices.
    freeze_idle: bool = True


def run(
    peer: Peer, model: BenchModel, repo: Path, *, cache_dir: Path, quick: bool, duration: float | None,
    paired: Paired, log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Figures for ``peer`` serving ``model``: {"config", "runs", "failures", "skipped"}; each run carries
    the service's figures from the interleaved slices as ``run["service"]``."""
    result: dict[str, Any] = {"runs": [], "failures": {}, "skipped": None, "config": {}}
    if not wrk.available():
        result["skipped"] = "wrk not installed (apt-get install wrk): peers are measured with wrk only"
        log(f"  {peer.name}: skipped: {result['skipped']}")
        return result
    try:
        python = venv.ensure(cache_dir / "peers" / f"{peer.name}-venv", peer.requirements(), log=log)
    except venv.PeerUnavailable as exc:
        result["skipped"] = str(exc)
        log(f"  {peer.name}: skipped: {exc}")
        return result
    plan = plan_for(model, quick=quick, duration=duration)
    onnx = onnx_file(repo, model)
    jpeg = payloads_for(model)[0]  # the body the service's wrk phases post, too
    expected = expected_probabilities(onnx, jpeg[1])
    request = peer.request(model, jpeg)
    for variant in peer.variants[:1] if quick else peer.variants:
        result["config"][variant.label] = peer.config(variant)
        with tempfile.TemporaryDirectory(prefix=f"bench-{peer.name}-") as workdir:
            launch = peer.launch(model, onnx, python, Path(workdir), variant)
            log_path = Path(tempfile.gettempdir()) / f"bench-{peer.name}-{model.name}-{variant.label.replace(' ', '-')}.log"
            try:
                with running_server(launch.argv, launch.env, launch.ready_url, log_path=log_path,
                                    timeout_s=launch.timeout_s, cwd=launch.cwd) as server:
                    problem = _check(peer, launch.infer_url, request, expected)
                    if problem:
                        raise venv.PeerUnavailable(f"wrong answer: {problem}")
                    service = PeerRequest(paired.body, wrk.LUA_SCRIPT)
                    for url, req in ((paired.url, service), (launch.infer_url, request)):
                        _wrk(url, req, concurrency=max(PEER_CONCURRENCY), seconds=warmup_seconds(quick))
                        _drain(url, req)
                    rounds = 1 if quick else ROUNDS
                    for concurrency in PEER_CONCURRENCY:
                        seconds = phase_seconds(plan, concurrency) / rounds
                        ours, theirs = [], []
                        for _ in range(rounds):
                            ours.append(_slice(paired.url, service, concurrency, seconds, paired.pgid, server.pid,
                                               freeze=paired.freeze_idle))
                            _drain(paired.url, service)
                            theirs.append(_slice(launch.infer_url, request, concurrency, seconds, server.pid,
                                                 paired.pgid, freeze=paired.freeze_idle))
                            _drain(launch.infer_url, request)
                        row = merge_slices(theirs)
                        row["variant"] = variant.label
                        row["service"] = merge_slices(ours)
                        result["runs"].append(row)
                        log(line("service", model.name, {**row["service"], "variant": f"beside {variant.label}"}))
                        log(line(peer.name, model.name, row))
            except (ServerFailed, venv.PeerUnavailable, RuntimeError, httpx.HTTPError) as exc:
                result["failures"][variant.label] = f"{type(exc).__name__}: {exc}"[-1500:]
                log(f"  {peer.name} {model.name} [{variant.label}] failed (log {log_path}): {str(exc)[-600:]}")
    return result


#: Statuses a peer answers while its model is still loading (TorchServe's /ping is up before its worker).
_LOADING = frozenset({404, 503, 507})


def merge_slices(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from a server's slices: throughput over their summed time, p50 the slices' mean, p90/p99 their
    worst (wrk reports percentiles, not samples, so they cannot be pooled exactly)."""
    seconds = sum(float(r["seconds"]) for r in rows)
    ok = sum(int(r["requests_ok"]) for r in rows)
    images = sum(int(r["requests_ok"]) * int(r["images_per_request"]) for r in rows)
    errors: dict[str, int] = {}
    for r in rows:
        for name, count in (r.get("errors") or {}).items():
            errors[name] = errors.get(name, 0) + int(count)
    merged = {
        "scenario": rows[0]["scenario"], "images_per_request": rows[0]["images_per_request"],
        "seconds": round(seconds, 2), "requests_ok": ok,
        "requests_per_s": ok / seconds if seconds else 0.0, "images_per_s": images / seconds if seconds else 0.0,
        "p50_ms": sum(float(r["p50_ms"]) for r in rows) / len(rows),
        "p90_ms": max(float(r["p90_ms"]) for r in rows), "p99_ms": max(float(r["p99_ms"]) for r in rows),
        "errors": errors, "slices": len(rows),
        "load_average_1m": max(float(r.get("load_average_1m") or 0.0) for r in rows),
        "idle_frozen": all(bool(r.get("idle_frozen")) for r in rows),
    }
    return {**merged, **_merged_cpu(rows, images)}


def _slice(
    url: str, request: PeerRequest, concurrency: int, seconds: float, measured: int | None, beside: int | None,
    *, freeze: bool,
) -> dict[str, object]:
    """One wrk slice, with the CPU of the measured server's process group and of the idle one beside it,
    which ``freeze`` stops for the slice (see ``benchmarks.server.paused``).

    The idle one matters: a peer whose idle processes poll (LitServe's worker loop, say) takes cores
    from the service's slices, so its CPU during them is part of what the ratio measured."""
    def cpu(pgid: int | None) -> float | None:
        return group_cpu_seconds(pgid) if pgid is not None else None

    with paused(beside if freeze else None) as frozen:
        before, beside_before, started = cpu(measured), cpu(beside), time.monotonic()
        row = _wrk(url, request, concurrency=concurrency, seconds=seconds)
        # Read as wrk exits: CPU spent on requests still in flight counts, their images do not (both
        # servers alike; a partial batch in a 10 s resnet50 slice is a few percent).
        after, beside_after, wall = cpu(measured), cpu(beside), time.monotonic() - started
    row["idle_frozen"] = frozen
    row["cpu_s"] = _spent(before, after)
    row["beside_cpu_s"] = _spent(beside_before, beside_after)
    row["wall_s"] = wall
    return row


def _spent(before: float | None, after: float | None) -> float | None:
    return after - before if after is not None and before is not None else None


def _merged_cpu(rows: list[dict[str, Any]], images: int) -> dict[str, float | None]:
    """Cores and CPU ms per image over the slices' summed wall time; None where a slice could not say."""
    wall = sum(float(r.get("wall_s") or 0.0) for r in rows)

    def total(key: str) -> float | None:
        known = [float(r[key]) for r in rows if r.get(key) is not None]
        return sum(known) if len(known) == len(rows) else None

    beside = server_cpu(0.0, total("beside_cpu_s"), wall, images)["server_cores"]
    return {**server_cpu(0.0, total("cpu_s"), wall, images), "beside_cores": beside}


def _drain(url: str, request: PeerRequest) -> None:
    """wrk stops with requests in flight; one answered request means the queue ahead of it is empty."""
    httpx.post(url, content=request.body.content,
               headers={"Content-Type": request.body.content_type, **request.headers}, timeout=120.0)


def _check(peer: Peer, url: str, request: PeerRequest, expected: np.ndarray, *, wait_s: float = 120.0) -> str | None:
    """None when the peer answers the benchmark's JPEG as in-process onnxruntime does, else why not."""
    deadline = time.monotonic() + wait_s
    while True:
        response = httpx.post(url, content=request.body.content,
                              headers={"Content-Type": request.body.content_type, **request.headers}, timeout=60.0)
        if response.status_code not in _LOADING or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    try:
        scores = peer.scores(response)
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable answer ({exc}): {response.content[:200]!r}"
    return check_scores(scores, expected)


def _wrk(url: str, request: PeerRequest, *, concurrency: int, seconds: float) -> dict[str, object]:
    return wrk.run(url, request.body, concurrency=concurrency, seconds=seconds,
                   script=request.script, script_env=request.script_env)


def line(server: str, model: str, row: dict[str, object]) -> str:
    variant = f" [{row['variant']}]" if row.get("variant") else ""
    return (
        f"  {server} {model} {row['scenario']}{variant:<12} {row['images_per_s']:8.1f} img/s  "
        f"p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms  errors {row['errors'] or 0}"
    )

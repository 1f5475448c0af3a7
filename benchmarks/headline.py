"""The ratios and goals the issue asks for, computed from one run's results."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.phases import DOORS, PEER_CONCURRENCY, PREDICT_DOOR
from benchmarks.raw import batch1_latency_ms, ceiling, fastest_batch

#: The service's default MAX_BATCH_SIZE: raw is compared at batch sizes the service can run.
SERVICE_MAX_BATCH = 32


def _runs(results: dict[str, Any], section: str, model: str) -> list[dict[str, Any]]:
    return results.get(section, {}).get(model, {}).get("runs", [])


def _best(runs: list[dict[str, Any]], *, single_image: bool | None = None, closed_only: bool = True) -> dict[str, Any] | None:
    chosen = [
        r for r in runs
        if (not closed_only or r["scenario"].startswith(("closed", "wrk")))
        and (single_image is None or (r.get("images_per_request", 1) == 1) == single_image)
        and not r.get("errors") and r.get("requests_ok", 1) > 0
    ]
    return max(chosen, key=lambda r: r["images_per_s"], default=None)


def _scenario(runs: list[dict[str, Any]], scenario: str) -> dict[str, Any] | None:
    return next((r for r in runs if r["scenario"] == scenario and r.get("images_per_request", 1) == 1), None)


def headline(results: dict[str, Any]) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []

    def add(figure: str, value: float | None, goal: str, met: bool | None) -> None:
        lines.append({"figure": figure, "value": value, "goal": goal, "met": met})

    raw = results.get("raw", {})
    if "resnet50" in raw:
        best = max(row["images_per_s"] for row in raw["resnet50"]["batches"])
        add("raw resnet50 fp32 img/s (best batch)", best, ">= 22", best >= 22)
    for fp32, int8 in (("resnet50", "resnet50-int8"), ("resnet20", "resnet20-int8")):
        if fp32 in raw and int8 in raw:
            ratio = _best_raw(raw[int8]) / _best_raw(raw[fp32])
            goal = 2.5 if fp32 == "resnet50" else None
            add(f"raw {int8}/{fp32} img/s (best batch of each)", ratio, f">= {goal}" if goal else "-",
                ratio >= goal if goal else None)
    for model, ratio_goal, naive_goal in (
        ("resnet50", 0.9, 2.0), ("resnet20", None, 5.0), ("resnet50-int8", 0.9, None), ("resnet20-int8", None, None),
    ):
        service_runs = _runs(results, "service", model)
        naive_runs = _runs(results, "naive", model)
        service_single = _best(service_runs, single_image=True, closed_only=True)
        service_any = _best(service_runs)
        if model in raw and service_single:
            ratio = service_single["images_per_s"] / ceiling(raw[model], SERVICE_MAX_BATCH)
            add(f"service/raw {model} ({service_single['scenario']}, JPEG, 1 img/req)", ratio,
                f">= {ratio_goal}" if ratio_goal else "-", ratio >= ratio_goal if ratio_goal else None)
        cpu_ratio = _raw_cpu_over_service(raw.get(model), service_single)
        if cpu_ratio is not None and service_single:
            add(f"  CPU per image: raw best batch's over the service's ({service_single['scenario']}; what the door, "
                "decoding and batching cost besides inference)", cpu_ratio, "-", None)
        if model in raw and service_any and service_any is not service_single:
            ratio = service_any["images_per_s"] / ceiling(raw[model], SERVICE_MAX_BATCH)
            add(f"service/raw {model} ({service_any['scenario']}, {service_any.get('images_per_request', 1)} img/req)",
                ratio, "-", None)
        naive_best = _best(naive_runs)
        if service_single and naive_runs:
            same = _scenario(naive_runs, service_single["scenario"])
            if same:
                ratio = service_single["images_per_s"] / max(same["images_per_s"], 1e-9)
                add(f"service/naive {model} (same load: {service_single['scenario']}, 1 img/req)", ratio,
                    f">= {naive_goal}", ratio >= naive_goal)
        if service_any and naive_best and service_any is not service_single:
            ratio = service_any["images_per_s"] / max(naive_best["images_per_s"], 1e-9)
            add(f"service/naive {model} (service best {service_any.get('images_per_request', 1)} img/req vs naive best)",
                ratio, f">= {naive_goal}", ratio >= naive_goal)
        predict_rate, predict_rounds = median_rate(service_runs, PREDICT_DOOR)
        for door, scenario, ratio_goal_v2 in _v2_doors(model):
            v2_rate, v2_rounds = median_rate(service_runs, scenario)
            if v2_rate is not None and predict_rate:
                ratio = v2_rate / predict_rate
                rounds = f", median of {min(v2_rounds, predict_rounds)} interleaved rounds" if v2_rounds > 1 else ""
                add(f"{door}/predict {model} (c=32, 1 JPEG/req{rounds})", ratio, f">= {ratio_goal_v2}",
                    ratio >= ratio_goal_v2)
            door_cpu, predict_cpu = median_cpu_ms(service_runs, scenario), median_cpu_ms(service_runs, PREDICT_DOOR)
            if door_cpu and predict_cpu:
                add(f"  images per server CPU-second, {door} over /predict (median ms/img {predict_cpu:.2f} "
                    f"/ {door_cpu:.2f})", predict_cpu / door_cpu, "-", None)
        # wrk's latency excludes the Python client's own CPU time; prefer it where it ran.
        single = _scenario(service_runs, "wrk c=1") or _scenario(service_runs, "closed c=1")
        if model in raw and single:
            gap = single["p50_ms"] - batch1_latency_ms(raw[model])
            add(f"{model} p50 at c=1 ({single['scenario']}) minus raw batch-1 (ms)", gap, "<= 3", gap <= 3)
            decode_ms = _service_decode_ms(results) if model == "resnet50" else None
            if decode_ms is not None:
                add("  of which decoding one 500x375 JPEG (preprocess suite, ms)", decode_ms, "-", None)
    lines.extend(resnet20_goals(results))
    if "workers" in results:
        from benchmarks.workers_bench import goals as worker_goals

        lines.extend(worker_goals(results["workers"]))
    lines.extend(peer_ratios(results))
    return lines


def _door_figures(runs: list[dict[str, Any]], scenario: str, key: str) -> list[float]:
    """``key`` of the clean one-image rows of ``scenario`` (one per door round) that recorded it."""
    return [r[key] for r in runs
            if r["scenario"] == scenario and r.get("images_per_request", 1) == 1 and _clean(r) and r.get(key)]


def median_rate(runs: list[dict[str, Any]], scenario: str) -> tuple[float | None, int]:
    """The median images/s of the clean one-image rows of ``scenario``, and how many."""
    rates = _door_figures(runs, scenario, "images_per_s")
    return (statistics.median(rates) if rates else None), len(rates)


def median_cpu_ms(runs: list[dict[str, Any]], scenario: str) -> float | None:
    """The median server CPU ms per image of the clean one-image rows of ``scenario``."""
    costs = _door_figures(runs, scenario, "server_cpu_ms_per_image")
    return statistics.median(costs) if costs else None


def _raw_cpu_over_service(raw: dict[str, Any] | None, service_row: dict[str, Any] | None) -> float | None:
    """CPU ms per image of raw's fastest batch (the one service/raw divides by) over the service row's."""
    if not raw or not service_row or not service_row.get("server_cpu_ms_per_image"):
        return None
    raw_ms = fastest_batch(raw, SERVICE_MAX_BATCH).get("cpu_ms_per_image")  # absent in results from before
    return float(raw_ms) / float(service_row["server_cpu_ms_per_image"]) if raw_ms else None


def _best_raw(raw: dict[str, Any]) -> float:
    return max(row["images_per_s"] for row in raw["batches"])


def _v2_doors(model: str) -> list[tuple[str, str, float]]:
    """(door, scenario, goal): V2 at >= 0.95x /predict for resnet50, >= 0.9x for the overhead-bound resnet20.

    REST is driven by wrk like /predict; gRPC by perf_analyzer (the ecosystem's client, 5x wrk's CPU per
    request on the same cores) and, where installed, by h2load (as cheap as wrk): both are shown."""
    goal = 0.95 if model.startswith("resnet50") else 0.9
    return [(door, scenario, goal) for door, scenario in DOORS[1:]]


def resnet20_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """resnet20 through /predict: >= 1,500 images/s (any request size) and >= 600 req/s at 32 clients with one
    JPEG per request (wrk); the better of fp32 and INT8, named."""
    lines = []
    candidates = [(name, run) for name in ("resnet20", "resnet20-int8") for run in _runs(results, "service", name)]
    best = [(name, run) for name, run in candidates if run["scenario"].startswith(("closed", "wrk")) and _clean(run)]
    if best:
        name, run = max(best, key=lambda pair: pair[1]["images_per_s"])
        lines.append({"figure": f"resnet20 img/s through /predict (best: {name}, {run['scenario']}, "
                                f"{run.get('images_per_request', 1)} img/req)",
                      "value": run["images_per_s"], "goal": ">= 1500", "met": run["images_per_s"] >= 1500})
    single = [(name, run) for name, run in candidates
              if run["scenario"] == "wrk c=32" and run.get("images_per_request", 1) == 1 and _clean(run)]
    if single:
        name, run = max(single, key=lambda pair: pair[1]["requests_per_s"])
        lines.append({"figure": f"resnet20 req/s through /predict (wrk c=32, 1 JPEG/req, best: {name})",
                      "value": run["requests_per_s"], "goal": ">= 600", "met": run["requests_per_s"] >= 600})
    return lines


#: The issue's goal: the service >= 1.1x every peer at 32 clients, and still ahead at one.
PEER_GOALS = {1: ("> 1", lambda ratio: ratio > 1.0), 32: (">= 1.1", lambda ratio: ratio >= 1.1)}


def peer_ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """service/<peer> images/s under the same wrk load, slice by slice, against the peer's best variant.

    Each peer run carries the service's figures from the slices interleaved with it; the ratio shown is
    the lowest over the peer's variants (spinning on/off): the service against the peer at its best."""
    lines = []
    for name, by_model in results.get("peers", {}).items():
        for model, peer in by_model.items():
            for concurrency in PEER_CONCURRENCY:
                scenario = f"wrk c={concurrency}"
                goal, met = PEER_GOALS.get(concurrency, ("-", lambda ratio: None))
                figure = f"service/{name} {model} ({scenario}, 1 img/req, interleaved)"
                ratios = [
                    (run["service"]["images_per_s"] / run["images_per_s"], run)
                    for run in peer.get("runs", [])
                    if run["scenario"] == scenario and run.get("service") and _clean(run) and _clean(run["service"])
                ]
                if not ratios:
                    why = peer.get("skipped") or "; ".join(peer.get("failures", {}).values()) or "no clean run"
                    lines.append({"figure": f"{figure}: not measured ({why[:120]})", "value": None, "goal": goal,
                                  "met": None})
                    continue
                ratio, run = min(ratios, key=lambda pair: pair[0])
                lines.append({
                    "figure": f"{figure}, vs {name} [{run.get('variant', '-')}]",
                    "value": ratio, "goal": goal, "met": met(ratio),
                })
                cpu = _peer_cpu_line(name, run)
                if cpu:
                    lines.append(cpu)
    return lines


def _peer_cpu_line(name: str, run: dict[str, Any]) -> dict[str, Any] | None:
    """Images per server CPU-second, service over peer, and the cores each idle server took meanwhile."""
    ours, theirs = run["service"].get("server_cpu_ms_per_image"), run.get("server_cpu_ms_per_image")
    if not ours or not theirs:
        return None
    idle_peer, idle_service = run["service"].get("beside_cores"), run.get("beside_cores")
    return {"figure": f"  images per server CPU-second, service over {name} (ms/img: {name} {theirs:.2f}, service "
                      f"{ours:.2f}; idle {name} took {_cores(idle_peer)} cores in the service's slices, the idle "
                      f"service {_cores(idle_service)} in {name}'s)",
            "value": theirs / ours, "goal": "-", "met": None}


def _cores(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def _clean(run: dict[str, Any]) -> bool:
    return not run.get("errors") and run.get("requests_ok", 0) > 0 and run.get("images_per_s", 0) > 0


#: The preprocess suite's name for the service's own exact path (older results: "pillow (service, exact)").
SERVICE_DECODER = "service (exact)"


def _service_decode_ms(results: dict[str, Any]) -> float | None:
    """Per-image decode + resize + crop time of the service's exact path on 500x375 photos."""
    for decoder in results.get("preprocess", {}).get("decoders", []):
        if decoder["name"] in (SERVICE_DECODER, "pillow (service, exact)"):
            return 1000.0 / decoder["images_per_s_500x375"]
    return None

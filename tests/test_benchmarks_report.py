"""What the benchmark report makes of the figures: headline ratios, medians of interleaved rounds, merged
slices, the workers projection (tables of figures in, lines out; nothing is run)."""

from __future__ import annotations

import pytest

from benchmarks.phases import GRPC_DOOR, PREDICT_DOOR, REST_DOOR


def _wrk_row(scenario: str, images_per_s: float, **extra: object) -> dict[str, object]:
    return {"scenario": scenario, "images_per_request": 1, "images_per_s": images_per_s, "requests_ok": 10,
            "errors": {}, **extra}


def test_headline_ratio_is_against_the_peers_best_variant_each_with_its_own_service_slices() -> None:
    from benchmarks.headline import peer_ratios

    def run(scenario: str, peer: float, service: float, variant: str) -> dict[str, object]:
        return _wrk_row(scenario, peer, variant=variant, service=_wrk_row(scenario, service))

    results = {"peers": {"pytriton": {"resnet20": {"runs": [
        run("wrk c=1", 100.0, 400.0, "spin on"), run("wrk c=32", 800.0, 1000.0, "spin on"),
        run("wrk c=1", 80.0, 360.0, "spin off"), run("wrk c=32", 900.0, 990.0, "spin off"),
    ]}}}}
    lines = {line["figure"]: line for line in peer_ratios(results)}
    c1 = lines["service/pytriton resnet20 (wrk c=1, 1 img/req, interleaved), vs pytriton [spin on]"]
    c32 = lines["service/pytriton resnet20 (wrk c=32, 1 img/req, interleaved), vs pytriton [spin off]"]
    assert c1["value"] == pytest.approx(4.0) and c1["met"] is True
    assert c32["value"] == pytest.approx(1.1) and c32["goal"] == ">= 1.1" and c32["met"] is True


def _raw(*rates: tuple[int, float]) -> dict[str, object]:
    return {"batches": [{"batch": batch, "images_per_s": rate, "latency_ms_p50": 1000 * batch / rate}
                         for batch, rate in rates]}


def test_headline_int8_v2_and_resnet20_goals_come_from_the_same_runs() -> None:
    from benchmarks.headline import headline

    predict = _wrk_row("wrk c=32", 20.0, requests_per_s=20.0, p50_ms=5.0)
    results = {
        "models": {"resnet50": {"arch": "resnet50", "precision": "fp32"},
                   "resnet50-int8": {"arch": "resnet50", "precision": "int8"}},
        "raw": {"resnet50": _raw((1, 15.0), (32, 22.0)), "resnet50-int8": _raw((1, 40.0), (32, 60.0)),
                "resnet20": _raw((1, 900.0), (32, 1900.0)), "resnet20-int8": _raw((1, 1200.0), (32, 2600.0))},
        "service": {
            "resnet50-int8": {"runs": [
                {**predict, "images_per_s": 55.0}, _wrk_row(PREDICT_DOOR, 55.0, round=1),
                _wrk_row(REST_DOOR, 53.0, round=1), _wrk_row(GRPC_DOOR, 50.0, round=1),
            ]},
            "resnet20": {"runs": [_wrk_row("wrk c=32", 700.0, requests_per_s=700.0),
                                  _wrk_row("wrk c=4", 1600.0, requests_per_s=100.0, images_per_request=16)]},
            "resnet20-int8": {"runs": [_wrk_row("wrk c=32", 800.0, requests_per_s=800.0),
                                       _wrk_row("wrk c=4", 1400.0, requests_per_s=90.0, images_per_request=16)]},
        },
    }
    lines = {line["figure"]: line for line in headline(results)}
    int8 = lines["raw resnet50-int8/resnet50 img/s (best batch of each)"]
    assert int8["value"] == pytest.approx(60 / 22) and int8["goal"] == ">= 2.5" and int8["met"] is True
    assert lines["raw resnet20-int8/resnet20 img/s (best batch of each)"]["met"] is None
    served = lines["service/raw resnet50-int8 (wrk c=32, JPEG, 1 img/req)"]
    assert served["value"] == pytest.approx(55 / 60) and served["met"] is True
    rest = lines["V2 REST (wrk)/predict resnet50-int8 (c=32, 1 JPEG/req)"]
    assert rest["value"] == pytest.approx(53 / 55) and rest["goal"] == ">= 0.95" and rest["met"] is True
    grpc = lines["V2 gRPC (perf_analyzer)/predict resnet50-int8 (c=32, 1 JPEG/req)"]
    assert grpc["value"] == pytest.approx(50 / 55) and grpc["met"] is False
    best = lines["resnet20 img/s through /predict (best: resnet20, wrk c=4, 16 img/req)"]
    assert best["value"] == 1600.0 and best["met"] is True
    rps = lines["resnet20 req/s through /predict (wrk c=32, 1 JPEG/req, best: resnet20-int8)"]
    assert rps["value"] == 800.0 and rps["met"] is True


@pytest.mark.parametrize(
    ("predict", "grpc", "failed_round", "expected"),
    [
        # One slow round of a door (the box was busy) moves the median, not the verdict.
        ((1000.0, 1100.0, 900.0), (950.0, 700.0, 960.0), None, 950.0 / 1000.0),
        ((1000.0, 1000.0, 1000.0), (880.0, 890.0, 870.0), None, 0.88),
        # A round with errors is left out of that door's median.
        ((1000.0, 1000.0, 1000.0), (950.0, 990.0, 10.0), 3, 970.0 / 1000.0),
    ],
)
def test_door_ratios_are_medians_of_the_interleaved_rounds(
    predict: tuple[float, ...], grpc: tuple[float, ...], failed_round: int | None, expected: float,
) -> None:
    from benchmarks.headline import headline
    from benchmarks.report import door_rounds

    runs = [_wrk_row("wrk c=32", 5000.0, requests_per_s=5000.0)]  # not what the doors are compared with
    for index, (p, g) in enumerate(zip(predict, grpc, strict=True), start=1):
        # The server's CPU per image: 2 ms through /predict; through gRPC 2.0, 3.0 and 2.5 ms, or 10 ms in
        # the failed (third) round: counted, it would move the median from 2.5 to 3.0.
        runs.append(_wrk_row(PREDICT_DOOR, p, requests_per_s=p, round=index, server_cores=1.7,
                             server_cpu_ms_per_image=2.0))
        errors = {"perf_analyzer": "exit 1"} if index == failed_round else {}
        cost = 10.0 if index == failed_round else (2.0, 3.0, 2.5)[index - 1]
        runs.append({**_wrk_row(GRPC_DOOR, g, round=index, server_cores=1.6, server_cpu_ms_per_image=cost),
                     "errors": errors})
    lines = {line["figure"]: line for line in headline({"service": {"resnet20": {"runs": runs}}})}
    rounds = 2 if failed_round else 3
    grpc_line = lines[f"V2 gRPC (perf_analyzer)/predict resnet20 (c=32, 1 JPEG/req, median of {rounds} interleaved rounds)"]
    assert grpc_line["value"] == pytest.approx(expected)
    assert grpc_line["met"] is (expected >= 0.9)
    cpu_line = next(line for figure, line in lines.items() if figure.startswith("  images per server CPU-second, V2 gRPC"))
    assert cpu_line["value"] == pytest.approx(2.0 / 2.5) and cpu_line["met"] is None
    report = "\n".join(door_rounds({"service": {"resnet20": {"runs": runs}}}))
    grpc_row = next(line for line in report.splitlines() if "V2 gRPC" in line)
    assert ("failed" in grpc_row) is (failed_round is not None)
    # The last columns: median/predict, the cores per round, CPU ms per image and /predict's over it.
    assert grpc_row.split()[-8:] == [f"{expected:.2f}", "1.60", "/", "1.60", "/", "1.60", "2.50", "0.80"], grpc_row


def test_report_puts_fp32_and_int8_side_by_side() -> None:
    from benchmarks.report import precision_side_by_side

    results = {
        "models": {"resnet20": {"arch": "resnet20", "precision": "fp32"},
                   "resnet20-int8": {"arch": "resnet20", "precision": "int8"}},
        "raw": {"resnet20": _raw((1, 1000.0), (8, 2000.0)), "resnet20-int8": _raw((1, 1500.0), (8, 3000.0))},
        "service": {  # V2 REST in rounds: its median (800 and 1,000), not its first round, is compared
            "resnet20": {"runs": [_wrk_row("wrk c=32", 800.0), *(_wrk_row(REST_DOOR, r, round=i + 1)
                                                                 for i, r in enumerate((700.0, 900.0, 800.0)))]},
            "resnet20-int8": {"runs": [_wrk_row("wrk c=32", 1000.0), *(_wrk_row(REST_DOOR, r, round=i + 1)
                                                                      for i, r in enumerate((1100.0, 1000.0, 900.0)))]},
        },
    }
    text = "\n".join(precision_side_by_side(results))
    assert "resnet20 (fp32) vs resnet20-int8 (int8)" in text
    rows = [line.split() for line in text.splitlines() if line.startswith(("raw", "service"))]
    assert [row[-1] for row in rows] == ["1.50", "1.50", "1.25", "1.25"]


def test_headline_says_why_a_peer_was_not_measured() -> None:
    from benchmarks.headline import peer_ratios

    results = {
        "peers": {"torchserve": {"resnet50": {"runs": [], "skipped": "TorchServe needs Java 17+", "failures": {}}},
                  "litserve": {"resnet50": {"runs": [
                      _wrk_row("wrk c=1", 0.0, requests_ok=0, variant="spin on", service=_wrk_row("wrk c=1", 20.0)),
                  ], "skipped": None, "failures": {"spin off": "ServerFailed: exited with 1"}}}},
    }
    lines = peer_ratios(results)
    assert len(lines) == 4 and all(line["value"] is None and "not measured" in line["figure"] for line in lines)
    assert sum("TorchServe needs Java 17+" in line["figure"] for line in lines) == 2
    assert sum("exited with 1" in line["figure"] for line in lines) == 2  # a phase with no answer gives no ratio


def test_interleaved_slices_merge_into_one_row() -> None:
    from benchmarks.peers.runner import merge_slices

    slices = [
        {**_wrk_row("wrk c=32", 0.0), "seconds": 5.0, "requests_ok": 500, "requests_per_s": 100.0,
         "p50_ms": 10.0, "p90_ms": 20.0, "p99_ms": 30.0, "load_average_1m": 1.5},
        {**_wrk_row("wrk c=32", 0.0), "seconds": 5.0, "requests_ok": 1500, "requests_per_s": 300.0,
         "p50_ms": 20.0, "p90_ms": 25.0, "p99_ms": 50.0, "errors": {"timeout": 2}, "load_average_1m": 2.5},
    ]
    row = merge_slices(slices)
    assert row["images_per_s"] == pytest.approx(200.0) and row["requests_ok"] == 2000 and row["seconds"] == 10.0
    assert row["p50_ms"] == 15.0 and row["p99_ms"] == 50.0 and row["errors"] == {"timeout": 2}
    assert row["slices"] == 2 and row["load_average_1m"] == 2.5
    assert row["server_cores"] is None and row["beside_cores"] is None  # slices without CPU readings


@pytest.mark.parametrize(
    ("cpu_s", "beside_cpu_s", "expected"),
    [
        # 9 s of CPU over 5 s of slices and 2,000 images: 1.8 cores, 4.5 ms an image; the idle peer 0.4 cores.
        ((4.0, 5.0), (1.0, 1.0), {"server_cores": 1.8, "server_cpu_ms_per_image": 4.5, "beside_cores": 0.4}),
        # One slice could not read the idle server (no such group any more): that figure only is unknown.
        ((4.0, 5.0), (1.0, None), {"server_cores": 1.8, "server_cpu_ms_per_image": 4.5, "beside_cores": None}),
        ((None, 5.0), (1.0, 1.0), {"server_cores": None, "server_cpu_ms_per_image": None, "beside_cores": 0.4}),
    ],
)
def test_slices_merge_their_cpu_over_their_wall_time(
    cpu_s: tuple[float | None, ...], beside_cpu_s: tuple[float | None, ...], expected: dict[str, float | None],
) -> None:
    from benchmarks.peers.runner import merge_slices

    slices = [
        {**_wrk_row("wrk c=32", 0.0), "seconds": 2.5, "requests_ok": ok, "p50_ms": 10.0, "p90_ms": 20.0,
         "p99_ms": 30.0, "wall_s": 2.5, "cpu_s": cpu, "beside_cpu_s": beside}
        for ok, cpu, beside in zip((1000, 1000), cpu_s, beside_cpu_s, strict=True)
    ]
    row = merge_slices(slices)
    assert {key: row[key] for key in expected} == pytest.approx(expected)


def test_the_peer_headline_adds_cpu_per_image_and_what_the_idle_server_took() -> None:
    from benchmarks.headline import peer_ratios

    run = _wrk_row("wrk c=32", 18.0, variant="spin on", server_cpu_ms_per_image=110.0, beside_cores=0.05,
                   service=_wrk_row("wrk c=32", 15.0, server_cpu_ms_per_image=88.0, beside_cores=0.35))
    lines = peer_ratios({"peers": {"litserve": {"resnet50": {"runs": [run]}}}})
    cpu = next(line for line in lines if line["figure"].startswith("  images per server CPU-second"))
    assert cpu["value"] == pytest.approx(110.0 / 88.0) and cpu["met"] is None
    assert "ms/img: litserve 110.00, service 88.00; idle litserve took 0.35 cores in the service's slices, " \
        "the idle service 0.05" in cpu["figure"]


def test_every_plan_gives_the_service_the_peers_wrk_phases() -> None:
    from benchmarks.phases import PEER_CONCURRENCY, plan_for, wrk_phases
    from benchmarks.workload import BenchModel

    for kind in ("imagenet", "cifar"):
        for quick in (True, False):
            plan = plan_for(BenchModel("m", "resnet20", None, kind), quick=quick, duration=None)
            phases = wrk_phases(plan)
            assert phases[: len(PEER_CONCURRENCY)] == [(c, 1) for c in PEER_CONCURRENCY]
            assert (plan.saturating, 1) in phases and len(phases) == len(set(phases))


@pytest.mark.parametrize(
    ("raw_rows", "service_ms", "expected"),
    [
        # The fastest batch the service may run (<= 32) sets the raw cost: batch 16 here, not 64.
        ([(8, 70.0, 27.0), (16, 78.0, 25.0), (64, 80.0, 24.0)], 31.25, 25.0 / 31.25),
        ([(1, 50.0, 40.0)], 40.0, 1.0),
        ([(16, 78.0, None)], 31.25, None),  # results from before raw recorded its CPU
        ([(16, 78.0, 25.0)], None, None),
    ],
)
def test_service_raw_cpu_ratio_uses_the_fastest_raw_batch(
    raw_rows: list[tuple[int, float, float | None]], service_ms: float | None, expected: float | None,
) -> None:
    from benchmarks.headline import headline

    raw = {"batches": [{"batch": b, "images_per_s": rate, "latency_ms_mean": 1.0, "latency_ms_p50": 1.0,
                        "cpu_ms_per_image": cpu, "runs": 3} for b, rate, cpu in raw_rows]}
    service = _wrk_row("wrk c=32", 60.0, requests_per_s=60.0, server_cpu_ms_per_image=service_ms)
    lines = headline({"raw": {"resnet50-int8": raw}, "service": {"resnet50-int8": {"runs": [service]}}})
    found = [line for line in lines if line["figure"].startswith("  CPU per image: raw best batch's over the service's")]
    if expected is None:
        assert found == []
    else:
        assert [line["value"] for line in found] == [pytest.approx(expected)]


def cell(**figures: float) -> dict:
    return {"summary": {"cells": {"1w c=32": figures}}}


@pytest.mark.parametrize(("cpu_ms", "on_16", "on_64"), [(2.0, 5, 20), (100.0, 1, 1), (0.5, 20, 80)])
def test_the_projection_keeps_each_loop_under_its_ceiling(cpu_ms: float, on_16: int, on_64: int) -> None:
    """A loop taking 0.5 ms a request carries 2,000 req/s, planned at 80 %: 1,600 img/s per worker. A model
    costing ``cpu_ms`` a image gives 1000 / cpu_ms img/s per core, so C cores need C x that / 1,600 workers."""
    from benchmarks.workers_bench import NEAR_FREE, projection

    plan = projection({NEAR_FREE: cell(loop_cpu_ms_per_request=0.5, images_per_s=900.0),
                       "m": cell(server_cpu_ms_per_image=cpu_ms)})
    assert plan["loop_ceiling_requests_per_s"] == 2000.0
    row = plan["models"]["m"]
    assert (row["16 cores"]["workers"], row["64 cores"]["workers"]) == (on_16, on_64)
    assert row["cores_one_loop_feeds"] == pytest.approx(1600 / (1000 / cpu_ms))

"""The load each server gets: the same phases for the service and the naive baseline."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.workload import BenchModel


@dataclass(frozen=True)
class Plan:
    """Closed-loop concurrencies, multi-image requests (service only) and phase lengths for one model."""

    single_concurrency: tuple[int, ...]  # closed loop, one image per request
    #: (concurrency, images per request), service only; concurrency x images stays within the
    #: service's default queue of 128 images, so overload (503) does not muddle throughput.
    multi: tuple[tuple[int, int], ...]
    seconds: float
    warmup_s: float
    open_fraction: float = 0.7  # open-loop rate as a fraction of the saturated closed-loop rate

    @property
    def saturating(self) -> int:
        return max(self.single_concurrency)


def plan_for(model: BenchModel, *, quick: bool, duration: float | None) -> Plan:
    if model.kind == "imagenet":
        # Saturation needs a full batch queued while another runs: 2 x max batch (32) clients.
        plan = Plan((1, 64), (), seconds=4.0 if quick else 20.0, warmup_s=2.0 if quick else 6.0)
    else:
        plan = Plan((1, 32), ((4, 16),), seconds=3.0 if quick else 10.0, warmup_s=1.0 if quick else 2.0)
    if duration is not None:
        plan = Plan(plan.single_concurrency, plan.multi, duration, plan.warmup_s, plan.open_fraction)
    return plan


#: wrk concurrencies every peer gets, and the service too (c=32 is the issue's saturation point for both models).
PEER_CONCURRENCY = (1, 32)


def wrk_phases(plan: Plan) -> list[tuple[int, int]]:
    """(concurrency, images per request) for the service's wrk runs: c=1, c=32, saturation, multi-image."""
    phases = [(concurrency, 1) for concurrency in PEER_CONCURRENCY]
    for phase in ((plan.saturating, 1), *plan.multi):
        if phase not in phases:
            phases.append(phase)
    return phases


def phase_seconds(plan: Plan, concurrency: int) -> float:
    """Concurrency 1 needs less time for stable percentiles than a saturated queue."""
    return plan.seconds / 2 if concurrency == 1 else plan.seconds


#: The door comparison (``/predict``, V2 REST, V2 gRPC, one JPEG per request) runs at the peers' saturation point.
DOOR_CONCURRENCY = 32
#: Each door's scenario in the interleaved rounds (``wrk c=32`` is the stand-alone phase before them).
PREDICT_DOOR = f"predict wrk c={DOOR_CONCURRENCY}"
REST_DOOR = f"v2 rest wrk c={DOOR_CONCURRENCY}"
GRPC_DOOR = f"perf_analyzer grpc c={DOOR_CONCURRENCY}"
#: The gRPC door again with a client as cheap as wrk (``benchmarks/h2load.py``): what the door itself costs.
H2LOAD_GRPC_DOOR = f"h2load grpc c={DOOR_CONCURRENCY}"
#: (door, scenario), ``/predict`` first: what the rounds run, the headline compares and the report prints.
DOORS = (
    ("/predict (wrk)", PREDICT_DOOR),
    ("V2 REST (wrk)", REST_DOOR),
    ("V2 gRPC (perf_analyzer)", GRPC_DOOR),
    ("V2 gRPC (h2load)", H2LOAD_GRPC_DOOR),
)

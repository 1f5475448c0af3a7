"""Terminal tables and the JSON file; the headline ratios come from figures of the same run."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.headline import median_cpu_ms, median_rate
from benchmarks.phases import DOOR_CONCURRENCY, DOORS, REST_DOOR


def median_known(values: Iterable[Any]) -> float | None:
    """The median of the values that were measured (None and NaN left out); None when there are none."""
    known = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(known) if known else None


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    for row, raw in zip(cells, rows):
        lines.append(
            "  ".join(c.rjust(w) if isinstance(v, (int, float)) else c.ljust(w) for c, v, w in zip(row, raw, widths))
        )
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def write_json(results: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    return path


def render(results: dict[str, Any]) -> str:
    """Every section present in ``results`` as text, headline ratios last."""
    parts: list[str] = []
    env = results.get("environment", {})
    parts.append(
        f"machine: {env.get('cpu', '?')}, {env.get('cores', '?')} cores, load average at start "
        f"{env.get('load_average_start', '?')}, onnxruntime {env.get('onnxruntime', '?')}, mode {results.get('mode')}"
    )
    if "preprocess" in results:
        pre = results["preprocess"]
        parts.append("\nPREPROCESS: decode + resize(232) + crop(224), one thread (= per core)")
        parts.append(
            table(
                ["decoder", "img/s 500x375", "img/s 2048x1536", "parity mean|d|", "parity max|d|", "2048 vs exact mean|d|"],
                [
                    [d["name"], d["images_per_s_500x375"], d["images_per_s_2048x1536"], d["parity_mean_abs"],
                     d["parity_max_abs"], d["large_vs_exact_mean_abs"]]
                    for d in pre["decoders"]
                ],
            )
        )
        for name, why in pre.get("skipped", {}).items():
            parts.append(f"  skipped {name}: {why}")

    def precision(name: str) -> str:
        return str(results.get("models", {}).get(name, {}).get("precision", "fp32"))

    for name, raw in results.get("raw", {}).items():
        parts.append(
            f"\nRAW onnxruntime in process: {name} ({precision(name)}, {raw['weights']} weights), "
            f"providers {raw['providers']}"
        )
        parts.append(
            table(
                ["batch", "img/s", "ms/call mean", "ms/call p50", "cpu ms/img", "runs"],
                [[r["batch"], r["images_per_s"], r["latency_ms_mean"], r["latency_ms_p50"], r.get("cpu_ms_per_image"),
                  r["runs"]] for r in raw["batches"]],
            )
        )
    parts.extend(precision_side_by_side(results))
    if "int8" in results:
        parts.extend(int8_tables(results["int8"]))
    load_rows = []
    for section in ("service", "naive"):
        for name, runs in results.get(section, {}).items():
            for run in runs.get("runs", []):
                load_rows.append(
                    [section, name, precision(name), run["scenario"] + (f" (round {run['round']})" if run.get("round") else ""),
                     run.get("images_per_request", 1), run["images_per_s"],
                     run["requests_per_s"], run["p50_ms"], run["p90_ms"], run["p99_ms"], _errors(run),
                     run.get("mean_batch_size"), run.get("load_average_1m"), run.get("server_cores"),
                     run.get("server_cpu_ms_per_image"), None]
                )
    for peer, by_model in results.get("peers", {}).items():
        for name, figures in by_model.items():
            for run in figures.get("runs", []):
                pairs = [("service", run["service"], f" [beside {peer} {run.get('variant', '')}]")] if run.get("service") else []
                for server, row, note in (*pairs, (peer, run, f" [{run['variant']}]" if run.get("variant") else "")):
                    load_rows.append(
                        [server, name, precision(name), row["scenario"] + note, row.get("images_per_request", 1),
                         row["images_per_s"],
                         row["requests_per_s"], row["p50_ms"], row["p90_ms"], row["p99_ms"], _errors(row),
                         row.get("mean_batch_size"), row.get("load_average_1m"), row.get("server_cores"),
                         row.get("server_cpu_ms_per_image"), row.get("beside_cores")]
                    )
    if load_rows:
        parts.append("\nLOAD over HTTP (real servers on 127.0.0.1, real JPEG uploads; peers serve the same ONNX file)")
        parts.append(
            table(
                ["server", "model", "precision", "scenario", "img/req", "img/s", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors",
                 "mean batch", "load 1m", "srv cores", "srv cpu ms/img", "idle other cores"],
                load_rows,
            )
        )
    parts.extend(door_rounds(results))
    stage_rows = [
        [name, run["scenario"], run.get("images_per_request", 1), *run["server_stage_means_ms"].values()]
        for name, runs in results.get("service", {}).items() for run in runs.get("runs", [])
        if run.get("server_stage_means_ms")
    ]
    if stage_rows:
        parts.append("\nSERVICE latency by stage (means from /metrics, ms): server total, decode per request, queue wait per image, inference per batch")
        parts.append(table(["model", "scenario", "img/req", "server total", "decode", "queue wait", "inference/batch"], stage_rows))
    for name, runs in results.get("service", {}).items():
        if runs.get("batch_histogram"):
            parts.append(f"  {name} batch sizes achieved (whole run, from /metrics): {runs['batch_histogram']}")
        if runs.get("wrk_note"):
            parts.append(f"  {name} wrk: {runs['wrk_note']}")
        if runs.get("v2_note"):
            parts.append(f"  {name} V2: {runs['v2_note']}")
    frozen = {run["idle_frozen"] for by_model in results.get("peers", {}).values()
              for figures in by_model.values() for run in figures.get("runs", []) if "idle_frozen" in run}
    if frozen:  # results from before the freeze carry no such key and get no line
        how = {frozenset({True}): "frozen (SIGSTOP of its process group)",
               frozenset({False}): "left running (--no-freeze-idle, or it could not be stopped)"}.get(
            frozenset(frozen), "frozen in some slices and not in others")
        parts.append(f"  peers: the idle server was {how} during the other's slices")
    for peer, by_model in results.get("peers", {}).items():
        configs = {label: text for figures in by_model.values() for label, text in figures.get("config", {}).items()}
        for label, text in configs.items():
            parts.append(f"  {peer} [{label}]: {text}")
        for name, figures in by_model.items():
            if figures.get("skipped"):
                parts.append(f"  {peer} {name} skipped: {figures['skipped']}")
            for label, why in figures.get("failures", {}).items():
                parts.append(f"  {peer} {name} [{label}] failed: {why[-400:]}")
    if "workers" in results:
        from benchmarks.workers_bench import render as render_workers

        parts.extend(render_workers(results["workers"], table))
    if "lifecycle" in results:
        from benchmarks.lifecycle import render as lifecycle_table  # they print with this module's table()

        parts.append(lifecycle_table(results["lifecycle"]))
    if "overhead" in results:
        from benchmarks.overhead import render as overhead_table

        parts.append(overhead_table(results["overhead"]))
    if results.get("headline"):
        parts.append("\nHEADLINE (one run, same machine)")
        parts.append(table(["figure", "value", "goal", "met"], [[h["figure"], h["value"], h["goal"], h["met"]] for h in results["headline"]]))
    return "\n".join(parts)


def door_rounds(results: dict[str, Any]) -> list[str]:
    """Each door's images/s per interleaved round, the median, the median against ``/predict``'s, and
    the same for the server's CPU per image (cores the server had, per round)."""
    rows: list[list[Any]] = []
    for name, runs in results.get("service", {}).items():
        by_round = [r for r in runs.get("runs", []) if r.get("round")]
        predict, _ = median_rate(by_round, DOORS[0][1])
        predict_cpu = median_cpu_ms(by_round, DOORS[0][1])
        for door, scenario in DOORS:
            rates = [r["images_per_s"] if not r.get("errors") else None for r in by_round if r["scenario"] == scenario]
            median, _ = median_rate(by_round, scenario)
            cpu = median_cpu_ms(by_round, scenario)
            if rates:
                shown = " / ".join("failed" if rate is None else f"{rate:.1f}" for rate in rates)
                cores = " / ".join(_cell(r.get("server_cores")) for r in by_round if r["scenario"] == scenario)
                rows.append([name, door, shown, median, median / predict if median and predict else None,
                             cores, cpu, predict_cpu / cpu if cpu and predict_cpu else None])
    if not rows:
        return []
    title = (f"\nDOORS at {DOOR_CONCURRENCY} clients, one JPEG per request, interleaved rounds (img/s per round, median, "
             "median/predict; cores the server had per round; its CPU ms per image, median, and /predict's over the door's)")
    return [title,
            table(["model", "door", "rounds", "median", "/predict", "server cores", "cpu ms/img", "/predict cpu"], rows)]


def precision_side_by_side(results: dict[str, Any]) -> list[str]:
    """fp32 and INT8 of one architecture in one table: raw per batch size, then the service's best."""
    parts: list[str] = []
    models = results.get("models", {})
    for int8_name, spec in models.items():
        fp32_name = next((n for n, s in models.items() if s["arch"] == spec["arch"] and s["precision"] == "fp32"), None)
        if spec["precision"] != "int8" or fp32_name is None:
            continue
        rows: list[list[Any]] = []
        raw = results.get("raw", {})
        if fp32_name in raw and int8_name in raw:
            int8_rows = {r["batch"]: r for r in raw[int8_name]["batches"]}
            for r in raw[fp32_name]["batches"]:
                q = int8_rows.get(r["batch"])
                if q:
                    rows.append([f"raw batch {r['batch']}", r["images_per_s"], q["images_per_s"],
                                 q["images_per_s"] / r["images_per_s"]])
        service = results.get("service", {})
        for scenario in ("wrk c=1", "wrk c=32", REST_DOOR):  # the door: the median of its rounds
            fp32, int8 = (median_rate(service.get(name, {}).get("runs", []), scenario)[0] for name in (fp32_name, int8_name))
            if fp32 and int8:
                rows.append([f"service {scenario}, 1 JPEG/req", fp32, int8, int8 / fp32])
        if rows:
            parts.append(f"\nPRECISION {spec['arch']}: {fp32_name} (fp32) vs {int8_name} (int8), images/s, one run")
            parts.append(table(["what", "fp32 img/s", "int8 img/s", "int8/fp32"], rows))
    return parts


def int8_tables(int8: dict[str, Any]) -> list[str]:
    """The int8 suite: accuracy and agreement of each CIFAR ResNet's INT8 file, then raw speed by batch."""
    parts: list[str] = []
    if int8.get("accuracy"):
        parts.append("\nINT8 ACCURACY, CIFAR-10 sample, top-1 %: all 1,000 images / the 700 held out (not calibrated "
                     "on); agreement = same top-1 as fp32; gate = the card's agreement with fp32 PyTorch, held out")
        parts.append(table(
            ["model", "via", "published", "fp32", "int8", "fp32 held", "int8 held", "agree", "agree held", "gate"],
            [[r["model"], r["via"], r["published"], r["fp32_acc"], r["int8_acc"], r["fp32_acc_held"], r["int8_acc_held"],
              r["agree_all"], r["agree_held"], r["gate_vs_pytorch"]] for r in int8["accuracy"]],
        ))
    if int8.get("speed"):
        parts.append(f"\nINT8 SPEED, raw onnxruntime (the service's session, {int8['intra_op_threads']} threads): "
                     f"images/s = batch / the fastest of {int8['speed_runs']} alternating calls (x5 for CIFAR nets)")
        parts.append(table(
            ["model", "batch", "fp32 img/s", "int8 img/s", "x", "fp32 cpu ms/img", "int8 cpu ms/img", "cpu x"],
            [[r["model"], str(r["batch"]), r["fp32"], r["int8"], r["ratio"], r["cpu_ms_fp32"], r["cpu_ms_int8"],
              r["cpu_ms_fp32"] / r["cpu_ms_int8"] if r["cpu_ms_fp32"] and r["cpu_ms_int8"] else None]
             for r in int8["speed"]],
        ))
    return parts


def _errors(run: dict[str, Any]) -> str:
    errors = run.get("errors") or {}
    return ",".join(f"{status}:{count}" for status, count in sorted(errors.items())) or "0"

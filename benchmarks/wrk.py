"""Native load client (Debian's ``wrk``): the Python client shares the same two cores as the server,
so for the small model its own CPU cost would cap the figure; wrk costs a fraction of it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from benchmarks.loadgen import Body, client_row

LUA_SCRIPT = Path(__file__).with_name("multipart.lua")


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str, body: Body, *, concurrency: int, seconds: float, threads: int = 1,
    script: Path = LUA_SCRIPT, script_env: Mapping[str, str] | None = None,
) -> dict[str, object]:
    """Closed loop with ``concurrency`` connections for ``seconds`` (check :func:`available` first).

    ``script`` posts the body file; ``script_env`` passes it what else the request needs (a peer's
    protocol headers: ``BENCH_INFERENCE_HEADER_LENGTH`` for a KServe V2 binary body).
    """
    with tempfile.NamedTemporaryFile(suffix=".body") as body_file:
        body_file.write(body.content)
        body_file.flush()
        env = {**os.environ, **(script_env or {}), "BENCH_BODY_FILE": body_file.name,
               "BENCH_CONTENT_TYPE": body.content_type}
        completed = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
             "-s", str(script), url],
            env=env, capture_output=True, text=True, timeout=seconds + 60, check=False,
        )
    line = next((l for l in completed.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary (exit {completed.returncode}): {completed.stdout}{completed.stderr}")
    figures = json.loads(line.removeprefix("BENCH_JSON "))
    duration = figures["duration_us"] / 1e6
    failed = figures["status"] + figures["connect"] + figures["read"] + figures["write"] + figures["timeout"]
    ok = figures["requests"] - figures["status"]
    errors = {name: figures[name] for name in ("status", "connect", "read", "write", "timeout") if figures[name]}
    if errors.get("status"):
        errors["non-2xx"] = errors.pop("status")
    return client_row(
        f"wrk c={concurrency}", requests_ok=ok, requests_per_s=ok / duration, seconds=duration,
        p50_ms=figures["p50_us"] / 1000, p90_ms=figures["p90_us"] / 1000, p99_ms=figures["p99_us"] / 1000,
        errors=errors if failed else {}, images_per_request=body.images,
    )

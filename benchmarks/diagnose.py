"""``python -m benchmarks.diagnose [service] [pytriton] ...``: where a server spends its CPU per request.

For each target (the service as ``service_bench`` starts it, or the PyTriton peer) under wrk at one
concurrency with one JPEG per request:

1. a clean window: wrk's figures and every thread's CPU time from ``/proc/<pid>/task/<tid>/stat``
   (all processes of the server's process group: Triton's server and backend stub too);
2. a profiled window: ``py-spy record --native`` on every Python process (collapsed stacks, turned
   into a flamegraph SVG here), ``perf record`` on the non-Python ones (tritonserver) when perf works;
   samples whose innermost frame is a wait are counted apart: blocked, or waiting for the GIL.

Threads are given roles from their stacks (event loop, decode pool, inference, onnxruntime pool,
...); each role's CPU comes from window 1 and is split over functions by window 2's samples, so the
figures read as microseconds of CPU per request. Everything lands in ``bench-results/diagnose-<time>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from benchmarks import wrk
from benchmarks.loadgen import bodies
from benchmarks.peers.base import SPIN_OFF, SPIN_ON, PeerRequest
from benchmarks.procstat import CLOCK_TICKS, group_pids, stat_fields
from benchmarks.server import free_port, python, running_server
from benchmarks.workload import DEFAULT_CACHE_DIR, REPO_ROOT, bench_models, model_repository, payloads_for

# --- /proc: per-thread CPU of a process group -------------------------------------------------------

def process_name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    names = [Path(a.decode(errors="replace")).name for a in argv if a]
    if names and names[0].startswith("python"):
        script = next((n for n in names[1:] if not n.startswith("-")), None)
        if "-c" in names[1:] or script is None:
            return f"{names[0]} (helper: {' '.join(names[1:3])[:30]})"
        return script
    return names[0] if names else "?"


def thread_cpu(pids: list[int]) -> dict[int, tuple[int, str, float]]:
    """tid -> (pid, thread name, CPU seconds so far) for every thread of ``pids``."""
    out = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                fields = stat_fields(task / "stat")
                comm = (task / "comm").read_text().strip()
            except OSError:
                continue
            out[int(task.name)] = (pid, comm, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return out


def is_python(pid: int) -> bool:
    try:
        return "libpython" in Path(f"/proc/{pid}/maps").read_text() or "python" in process_name(pid)
    except OSError:
        return False


# --- load: wrk in the background --------------------------------------------------------------------

@dataclass
class Load:
    url: str
    request: PeerRequest
    concurrency: int

    @contextmanager
    def running(self, seconds: float) -> Iterator[dict[str, Any]]:
        """wrk for ``seconds`` in a thread; the dict holds its figures once the block has ended."""
        figures: dict[str, Any] = {}

        def drive() -> None:
            figures.update(wrk.run(self.url, self.request.body, concurrency=self.concurrency, seconds=seconds,
                                   script=self.request.script, script_env=self.request.script_env))

        thread = threading.Thread(target=drive, daemon=True)
        thread.start()
        try:
            yield figures
        finally:
            thread.join(timeout=seconds + 90)


# --- stacks: roles, categories, flamegraph -----------------------------------------------------------

#: (role, pattern on the joined stack): the first match names a thread's role.
ROLES = (
    ("inference thread", r"_infer \(service/batcher|\binfer \((?:\S*/)?pytriton_app|handle \((?:\S*/)?torchserve_handler"),
    ("decode pool", r"decode \(service/app|preprocess_image"),
    ("event loop", r"uvicorn|run_until_complete|_run_once|uvloop"),
    ("onnxruntime pool", r"onnxruntime|libonnxruntime|MlasExecuteThreaded|ThreadPoolTempl"),
    ("pytriton proxy", r"pytriton|zmq|triton_python_backend_stub|pb_stub|c_python_backend_utils"),
)

#: (category, pattern on a frame): the first category any frame of a sample matches.
CATEGORIES = (
    ("onnxruntime run", r"run \(onnxruntime|InferenceSession|libonnxruntime|onnxruntime_pybind|Mlas"),
    ("decode: preprocess_image", r"preprocess_image|ImagingDecode|libjpeg|ImagingResample|_imaging"),
    ("multipart parsing (service.doors.upload + python-multipart)", r"service/upload|multipart"),
    ("JSON / response rendering", r"json|JSONResponse|render \(|_top_k"),
    ("Prometheus metrics", r"prometheus|metrics\.py"),
    ("HTTP protocol (uvicorn httptools)", r"httptools|h11|protocols/http|on_body|on_headers|data_received"),
    ("batcher (service.engine.batcher)", r"service/batcher"),
    ("Starlette/FastAPI routing + middleware", r"starlette|fastapi|routing|middleware"),
    ("predict handler (service.app)", r"service/app"),
    ("asyncio / uvloop scheduling", r"asyncio|uvloop|base_events|events\.py|futures\.py|tasks\.py"),
    ("thread pool hand-off", r"concurrent/futures|threading\.py|queue\.py"),
    ("pytriton proxy (zmq, (de)serialisation)", r"pytriton|zmq|pb_stub|shm|c_python_backend_utils"),
    ("numpy", r"numpy|multiarray"),
)


def read_collapsed(path: Path) -> tuple[list[tuple[int, list[str], int]], dict[int, str]]:
    """py-spy ``--threads -f raw`` lines -> [(tid, frames root first, samples)], {tid: Python thread name}."""
    rows, names = [], {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        match = re.match(r"thread \((0x[0-9a-fA-F]+|\d+)\)(?::\s*(.*))?", frames[0])
        tid = int(match.group(1), 0) if match else 0
        if match and match.group(2):
            names[tid] = match.group(2)
        rows.append((tid, frames[1:] if match else frames, int(count)))
    return rows, names


#: Python thread names (py-spy shows them) -> role; the service names its pools.
NAMED_ROLES = ((r"^infer-", "inference thread"), (r"^decode", "decode pool"), (r"^uvloop", "uvloop default executor"))


def thread_roles(rows: list[tuple[int, list[str], int]], names: dict[int, str]) -> dict[int, str]:
    """Each thread's role: from its Python name where the service named it, else from its busiest stack."""
    votes: dict[int, Counter[str]] = defaultdict(Counter)
    for tid, frames, count in rows:
        if state(frames) != "cpu":
            continue
        joined = ";".join(frames)
        role = next((name for name, pattern in ROLES if re.search(pattern, joined)), "other")
        votes[tid][role] += count
    roles = {}
    for tid in {tid for tid, _, _ in rows}:
        named = next((role for pattern, role in NAMED_ROLES if re.search(pattern, names.get(tid, ""))), None)
        counts = votes.get(tid, Counter())
        roles[tid] = named or next((r for r, _ in counts.most_common() if r != "other"), f"thread {names.get(tid, tid)}")
    return roles


#: Innermost named frames of a thread that waits. CPython 3.11 takes the GIL in take_gil (not in the
#: symbol table here) with pthread_cond_timedwait, and nothing else in these servers' Python threads
#: uses a timed condition wait, so that frame innermost means "waiting for the GIL".
_WAITS = frozenset({"PyThread_acquire_lock_timed", "epoll_pwait", "epoll_wait", "sem_wait", "sem_timedwait",
                    "sem_clockwait", "pthread_cond_wait", "select", "poll", "nanosleep", "clock_nanosleep",
                    "accept4", "__futex_abstimed_wait_common", "zmq_poll", "recv", "recvfrom", "read"})
_GIL = frozenset({"pthread_cond_timedwait", "take_gil"})


def state(frames: list[str]) -> str:
    """'gil' (waiting for the GIL), 'wait' (blocked, idle) or 'cpu' (running or runnable)."""
    name = self_function(frames).split(" (")[0]
    if name in _GIL:
        return "gil"
    return "wait" if name in _WAITS else "cpu"


_CATEGORY_PATTERNS = tuple((name, re.compile(pattern)) for name, pattern in CATEGORIES)


def category(frames: list[str]) -> str:
    """The category of the innermost frame that has one: the work being done, not its callers."""
    for frame in reversed(frames):
        for name, regex in _CATEGORY_PATTERNS:
            if regex.search(frame):
                return name
    return "other"


def python_function(frames: list[str]) -> str:
    """The innermost Python frame: which line of Python code the sample is working for."""
    for frame in reversed(frames):
        if ".py:" in frame:
            return frame.rsplit(":", 1)[0] + ")"
    return "(native only)"


def self_function(frames: list[str]) -> str:
    """The innermost named frame (unresolved addresses are skipped: libc here has no symbols)."""
    for frame in reversed(frames):
        if not frame.startswith("0x"):
            return frame
    return frames[-1] if frames else "?"


def flamegraph_svg(rows: list[tuple[int, list[str], int]], title: str, roles: dict[int, str]) -> str:
    """A plain flamegraph (root at the bottom, hover for names and sample counts) from collapsed stacks."""
    tree: dict[str, Any] = {"n": 0, "c": {}}
    for tid, frames, count in rows:
        node = tree
        node["n"] += count
        for frame in [f"{roles.get(tid, 'other')} (thread {tid})", *frames]:
            node = node["c"].setdefault(frame, {"n": 0, "c": {}})
            node["n"] += count
    width, row_height = 1800.0, 16
    total = max(tree["n"], 1)
    rects: list[str] = []

    def depth_of(node: dict[str, Any]) -> int:
        return 1 + max((depth_of(child) for child in node["c"].values()), default=0)

    depth = depth_of(tree)
    height = (depth + 2) * row_height

    def place(node: dict[str, Any], x: float, level: int) -> None:
        for name, child in sorted(node["c"].items()):
            w = width * child["n"] / total
            if w >= 0.3:
                y = height - (level + 2) * row_height
                hue = 30 + (hash(name.split(" (")[0]) % 30)
                label = escape(name if len(name) * 6.5 < w else name[: max(0, int(w / 6.5) - 2)] + ".." if w > 20 else "")
                rects.append(
                    f'<g><title>{escape(name)}: {child["n"]} samples ({100 * child["n"] / total:.1f}%)</title>'
                    f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_height - 1}" fill="hsl({hue},85%,60%)"/>'
                    f'<text x="{x + 2:.1f}" y="{y + 12}" font-size="11">{label}</text></g>'
                )
                place(child, x, level + 1)
            x += w

    place(tree, 0.0, 0)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" font-family="monospace">'
        f'<text x="4" y="14" font-size="13">{escape(title)} ({total} samples)</text>{"".join(rects)}</svg>\n'
    )


# --- targets ------------------------------------------------------------------------------------------

@contextmanager
def start_target(target: str, model_name: str, cache_dir: Path, variant: str) -> Iterator[tuple[int, Load, str]]:
    """(process group id, load description, config text) for a started target."""
    (model,) = bench_models([model_name])
    repo = model_repository(model, cache_dir)
    jpeg = payloads_for(model)[0]
    log_path = Path(tempfile.gettempdir()) / f"diagnose-{target}-{model_name}.log"
    if target == "service":
        from benchmarks.service_bench import service_env

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        (body,) = bodies([jpeg], 1)
        with running_server([python(), "-m", "service"], service_env(repo, port), f"{base}/health/ready",
                            log_path=log_path) as process:
            yield process.pid, Load(f"{base}/predict?model={model.name}&top_k=5", PeerRequest(body, wrk.LUA_SCRIPT), 0), \
                "python -m service, default settings (as benchmarks/service_bench.py starts it)"
        return
    from benchmarks.peers import peer, venv
    from benchmarks.peers.runner import onnx_file

    chosen = peer(target)
    py = venv.ensure(cache_dir / "peers" / f"{target}-venv", chosen.requirements())
    spin = {"on": SPIN_ON, "off": SPIN_OFF}[variant]
    with tempfile.TemporaryDirectory(prefix=f"diagnose-{target}-") as workdir:
        launch = chosen.launch(model, onnx_file(repo, model), py, Path(workdir), spin)
        with running_server(launch.argv, launch.env, launch.ready_url, log_path=log_path, cwd=launch.cwd,
                            timeout_s=launch.timeout_s) as process:
            request = chosen.request(model, jpeg)
            _wait_answering(launch.infer_url, request)
            yield process.pid, Load(launch.infer_url, request, 0), chosen.config(spin)


def _wait_answering(url: str, request: PeerRequest, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = httpx.post(url, content=request.body.content,
                              headers={"Content-Type": request.body.content_type, **request.headers}, timeout=60)
        if response.status_code == 200:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{url} does not answer 200")


# --- one diagnosis ----------------------------------------------------------------------------------------

@dataclass
class Diagnosis:
    target: str
    config: str
    wrk_clean: dict[str, Any] = field(default_factory=dict)
    wrk_profiled: dict[str, Any] = field(default_factory=dict)
    threads: list[dict[str, Any]] = field(default_factory=list)
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    categories: dict[str, dict[str, float]] = field(default_factory=dict)
    category_functions: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    top_self: list[dict[str, Any]] = field(default_factory=list)
    thread_states: dict[str, dict[str, float]] = field(default_factory=dict)
    native: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def diagnose(target: str, args: argparse.Namespace, out: Path) -> Diagnosis:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with start_target(target, args.model, args.cache_dir, args.spinning) as (pgid, load, config):
        load.concurrency = args.concurrency
        result = Diagnosis(target, config)
        with load.running(3.0):
            pass  # warm-up, discarded
        # 1. clean window: wrk + per-thread CPU.
        settle = 1.5
        with load.running(args.seconds + 2 * settle) as clean:
            time.sleep(settle)
            pids = group_pids(pgid)
            before, t0 = thread_cpu(pids), time.perf_counter()
            time.sleep(args.seconds)
            after, elapsed = thread_cpu(pids), time.perf_counter() - t0
        result.wrk_clean = clean
        requests = clean["requests_per_s"] * elapsed
        for tid, (pid, comm, seconds) in after.items():
            used = seconds - before.get(tid, (pid, comm, 0.0))[2]
            result.threads.append({"pid": pid, "process": process_name(pid), "tid": tid, "comm": comm,
                                   "cpu_percent": 100 * used / elapsed, "cpu_us_per_request": 1e6 * used / max(requests, 1)})
        # 2. profiled window: py-spy on Python processes, perf on the others.
        python_pids = [pid for pid in pids if is_python(pid) and _has_python_frames(py_spy, pid)]
        other_pids = [pid for pid in pids if pid not in python_pids]
        with load.running(args.seconds + 2 * settle) as profiled:
            time.sleep(settle)
            spies = {pid: _py_spy(py_spy, pid, out / f"{target}-{pid}.collapsed.txt", args.seconds, args.rate, idle=False)
                     for pid in python_pids}
            perfs = {pid: _perf(pid, out / f"{target}-{pid}.perf.data", args.seconds) for pid in other_pids}
            for proc in [*spies.values(), *perfs.values()]:
                if proc is not None:
                    proc.wait(timeout=args.seconds + 60)
        result.wrk_profiled = profiled
        rows: list[tuple[int, list[str], int]] = []
        names: dict[int, str] = {}
        for pid in python_pids:
            path = out / f"{target}-{pid}.collapsed.txt"
            if path.exists():
                found, found_names = read_collapsed(path)
                rows.extend(found)
                names.update(found_names)
                result.files.append(str(path))
        for pid, proc in perfs.items():
            if proc is not None:
                report = _perf_report(out / f"{target}-{pid}.perf.data")
                (out / f"{target}-{pid}.perf.txt").write_text(report)
                result.native[f"{process_name(pid)} ({pid})"] = "\n".join(report.splitlines()[:40])
                result.files.append(str(out / f"{target}-{pid}.perf.txt"))
        roles = thread_roles(rows, names)
        svg = out / f"{target}-{args.model}-c{args.concurrency}.svg"
        svg.write_text(flamegraph_svg(
            rows, f"{target} {args.model} wrk c={args.concurrency}: py-spy --native, every thread incl. blocked ones", roles))
        result.files.append(str(svg))
        _attribute(result, rows, roles, python_pids=python_pids)
    return result


def _has_python_frames(py_spy: str, pid: int) -> bool:
    completed = subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30, check=False)
    return completed.returncode == 0 and "Thread" in completed.stdout


def _py_spy(py_spy: str, pid: int, path: Path, seconds: float, rate: int, *, idle: bool) -> subprocess.Popen[bytes] | None:
    argv = [py_spy, "record", "--native", "--threads", "-r", str(rate), "-d", str(round(seconds)), "-f", "raw",
            "-o", str(path), "--pid", str(pid), *(["--idle"] if idle else [])]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _perf(pid: int, path: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    if shutil.which("perf") is None:
        return None
    return subprocess.Popen(["perf", "record", "-F", "199", "-g", "-p", str(pid), "-o", str(path), "--", "sleep",
                             str(round(seconds))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _perf_report(path: Path) -> str:
    if not path.exists():
        return "(perf recorded nothing: not permitted here?)"
    completed = subprocess.run(["perf", "report", "-i", str(path), "--stdio", "--no-children", "-g", "none",
                                "--sort", "comm,dso,sym", "--percent-limit", "0.7"],
                               capture_output=True, text=True, timeout=300, check=False)
    return "\n".join(line for line in completed.stdout.splitlines() if line and not line.startswith("#"))


def _attribute(result: Diagnosis, rows: list[tuple[int, list[str], int]], roles: dict[int, str],
               *, python_pids: list[int]) -> None:
    """Role CPU (clean window) split over categories and self functions (profiled samples)."""
    role_cpu: Counter[str] = Counter()
    for thread in result.threads:
        role = roles.get(thread["tid"])
        if role is None:  # no Python thread state: py-spy never sees it
            if thread["comm"].startswith("ZMQbg"):
                role = "zmq I/O threads"
            elif thread["pid"] in python_pids:  # onnxruntime's pool threads keep the process's name
                role = "native threads (onnxruntime intra-op pool)"
            else:
                role = f"{thread['process']} (native)"
        thread["role"] = role
        role_cpu[role] += thread["cpu_us_per_request"]
    samples_by_role: Counter[str] = Counter()
    by_category: dict[str, Counter[str]] = defaultdict(Counter)
    by_self: dict[str, Counter[str]] = defaultdict(Counter)
    by_function: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    states: dict[str, Counter[str]] = defaultdict(Counter)
    for tid, frames, count in rows:
        role = roles.get(tid, "other")
        kind = state(frames)
        states[role][kind] += count
        if kind != "cpu":
            continue
        samples_by_role[role] += count
        by_category[role][category(frames)] += count
        by_function[role][category(frames)][python_function(frames)] += count
        by_self[role][self_function(frames)] += count
    for role, counts in states.items():
        total = sum(counts.values())
        result.thread_states[role] = {kind: 100 * counts[kind] / total for kind in ("cpu", "gil", "wait")}
    for role, us in sorted(role_cpu.items(), key=lambda item: -item[1]):
        result.roles[role] = {"cpu_us_per_request": us, "cpu_percent": sum(
            t["cpu_percent"] for t in result.threads if t["role"] == role), "threads": sum(
            1 for t in result.threads if t["role"] == role and t["cpu_percent"] > 0.5)}
        total = samples_by_role.get(role, 0)
        if total:
            result.categories[role] = {name: us * n / total for name, n in by_category[role].most_common()}
            result.category_functions[role] = {
                name: {fn: us * k / total for fn, k in functions.most_common(4)}
                for name, functions in by_function[role].items()
            }
            for name, n in by_self[role].most_common(12):
                result.top_self.append({"role": role, "function": name, "share": n / total, "us_per_request": us * n / total})


def render(result: Diagnosis) -> str:
    w = result.wrk_clean
    lines = [f"== {result.target}: {result.config}",
             (f"wrk clean: {w['requests_per_s']:.0f} req/s, p50 {w['p50_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms; "
             f"under py-spy: {result.wrk_profiled.get('requests_per_s', 0):.0f} req/s"),
             "CPU by thread role (clean window): %CPU of one core, CPU us per request, busy threads"]
    for role, figures in result.roles.items():
        if figures["cpu_percent"] >= 0.5:
            lines.append(f"  {role:<40} {figures['cpu_percent']:6.1f}%  {figures['cpu_us_per_request']:8.0f} us/req"
                         f"  threads {figures['threads']}")
    total = sum(f["cpu_us_per_request"] for f in result.roles.values())
    lines.append(f"  {'total':<40} {sum(f['cpu_percent'] for f in result.roles.values()):6.1f}%  {total:8.0f} us/req")
    for role, cats in result.categories.items():
        lines.append(f"where {role} spends it (us CPU per request, from py-spy samples):")
        for name, us in cats.items():
            if us < 1:
                continue
            lines.append(f"    {name:<55} {us:7.0f}")
            functions = result.category_functions.get(role, {}).get(name, {})
            lines.extend(f"        {fus:6.0f}  {fn}" for fn, fus in functions.items() if fus >= max(2.0, 0.1 * us))
    lines.append("top self functions (us CPU per request):")
    for row in sorted(result.top_self, key=lambda r: -r["us_per_request"])[:30]:
        lines.append(f"    {row['us_per_request']:7.0f}  {100 * row['share']:5.1f}% of {row['role']:<18} {row['function']}")
    if result.thread_states:
        lines.append("py-spy samples by thread state (% of each role's samples): running/runnable, GIL wait, blocked")
        lines.extend(f"    {role:<40} cpu {st['cpu']:5.1f}%  gil {st['gil']:5.1f}%  blocked {st['wait']:5.1f}%"
                     for role, st in sorted(result.thread_states.items()))
    for name, text in result.native.items():
        lines.append(f"perf (native) {name}: top symbols")
        lines.append(text)
    lines.append("files: " + ", ".join(result.files))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.diagnose", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="+", choices=("service", "pytriton", "litserve", "torchserve"))
    parser.add_argument("--model", default="resnet20", choices=("resnet20", "resnet50"))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each window")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--spinning", choices=("on", "off"), default="on", help="the peer's onnxruntime spinning")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--output-dir", type=Path, default=None)
    args = parser.parse_args(argv)
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
        summary[target] = result.__dict__
    (out / "diagnose.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

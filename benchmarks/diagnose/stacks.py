"""py-spy's collapsed stacks: read them, and say of each sample its thread's role, state and category.

The patterns name the service's modules by path (``service/engine/batcher``, ``service/pipeline/decode``,
``service/doors/...``), so they follow its layout (ARCHITECTURE.md) when it moves.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

#: One sample row: (thread id, frames root first, sample count).
Row = tuple[int, list[str], int]

#: (role, pattern on the joined stack): the first match names a thread's role.
ROLES = (
    ("inference thread",
     r"_timed \((?:\S*/)?service/engine/batcher|\binfer \((?:\S*/)?pytriton_app|handle \((?:\S*/)?torchserve_handler"),
    ("decode pool", r"_decode_(?:range|opened) \((?:\S*/)?service/pipeline/decode|preprocess_image"),
    ("event loop", r"uvicorn|run_until_complete|_run_once|uvloop"),
    ("onnxruntime pool", r"onnxruntime|libonnxruntime|MlasExecuteThreaded|ThreadPoolTempl"),
    ("pytriton proxy", r"pytriton|zmq|triton_python_backend_stub|pb_stub|c_python_backend_utils"),
)

#: (category, pattern on a frame): the first category any frame of a sample matches.
CATEGORIES = (
    ("onnxruntime run", r"run \(onnxruntime|InferenceSession|libonnxruntime|onnxruntime_pybind|Mlas"),
    ("decode: preprocess_image",
     r"preprocess_image|servable/(?:images|jpeg)|simplejpeg|ImagingDecode|libjpeg|ImagingResample|_imaging"),
    ("multipart parsing (service.doors.upload + python-multipart)", r"service/doors/(?:upload|multipart)|multipart"),
    ("JSON / response rendering", r"json|JSONResponse|render \(|_top_k|service/doors/topk"),
    ("Prometheus metrics", r"prometheus|metrics\.py"),
    ("HTTP protocol (uvicorn httptools)", r"httptools|h11|protocols/http|on_body|on_headers|data_received"),
    ("batcher (service.engine.batcher)", r"service/engine/batcher"),
    ("Starlette/FastAPI routing + middleware", r"starlette|fastapi|routing|middleware"),
    ("doors and pipeline (service.doors, service.pipeline)", r"service/(?:doors|pipeline|app)"),
    ("asyncio / uvloop scheduling", r"asyncio|uvloop|base_events|events\.py|futures\.py|tasks\.py"),
    ("thread pool hand-off", r"concurrent/futures|threading\.py|queue\.py"),
    ("pytriton proxy (zmq, (de)serialisation)", r"pytriton|zmq|pb_stub|shm|c_python_backend_utils"),
    ("numpy", r"numpy|multiarray"),
)

#: Python thread names (py-spy shows them) -> role; the service names its pools.
NAMED_ROLES = ((r"^infer-", "inference thread"), (r"^decode", "decode pool"), (r"^uvloop", "uvloop default executor"))

#: Innermost named frames of a thread that waits. CPython 3.11 takes the GIL in take_gil (not in the
#: symbol table here) with pthread_cond_timedwait, and nothing else in these servers' Python threads
#: uses a timed condition wait, so that frame innermost means "waiting for the GIL".
_WAITS = frozenset({"PyThread_acquire_lock_timed", "epoll_pwait", "epoll_wait", "sem_wait", "sem_timedwait",
                    "sem_clockwait", "pthread_cond_wait", "select", "poll", "nanosleep", "clock_nanosleep",
                    "accept4", "__futex_abstimed_wait_common", "zmq_poll", "recv", "recvfrom", "read"})
_GIL = frozenset({"pthread_cond_timedwait", "take_gil"})

_CATEGORY_PATTERNS = tuple((name, re.compile(pattern)) for name, pattern in CATEGORIES)


def read_collapsed(path: Path) -> tuple[list[Row], dict[int, str]]:
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


def thread_roles(rows: list[Row], names: dict[int, str]) -> dict[int, str]:
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


def state(frames: list[str]) -> str:
    """'gil' (waiting for the GIL), 'wait' (blocked, idle) or 'cpu' (running or runnable)."""
    name = self_function(frames).split(" (")[0]
    if name in _GIL:
        return "gil"
    return "wait" if name in _WAITS else "cpu"


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

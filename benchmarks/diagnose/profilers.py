"""The samplers: ``py-spy record --native`` on Python processes, ``perf record`` on native ones."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def py_spy_binary() -> str:
    """py-spy on PATH, else beside this interpreter (the bench extra installs it into the venv)."""
    return shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


def has_python_frames(binary: str, pid: int) -> bool:
    """Whether py-spy can read Python stacks from ``pid`` (a helper without an interpreter state has none)."""
    completed = subprocess.run([binary, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30, check=False)
    return completed.returncode == 0 and "Thread" in completed.stdout


def record_python(binary: str, pid: int, path: Path, seconds: float, rate: int, *, idle: bool) -> subprocess.Popen[bytes]:
    """``py-spy record`` of every thread of ``pid`` into ``path`` (collapsed stacks, raw format), started."""
    argv = [binary, "record", "--native", "--threads", "-r", str(rate), "-d", str(round(seconds)), "-f", "raw",
            "-o", str(path), "--pid", str(pid), *(["--idle"] if idle else [])]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def record_native(pid: int, path: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    """``perf record -g`` of ``pid`` into ``path``, started; None where perf is not installed."""
    if shutil.which("perf") is None:
        return None
    return subprocess.Popen(["perf", "record", "-F", "199", "-g", "-p", str(pid), "-o", str(path), "--", "sleep",
                             str(round(seconds))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def native_report(path: Path) -> str:
    """The top symbols of a ``perf record`` file by process, library and symbol, as text."""
    if not path.exists():
        return "(perf recorded nothing: not permitted here?)"
    completed = subprocess.run(["perf", "report", "-i", str(path), "--stdio", "--no-children", "-g", "none",
                                "--sort", "comm,dso,sym", "--percent-limit", "0.7"],
                               capture_output=True, text=True, timeout=300, check=False)
    return "\n".join(line for line in completed.stdout.splitlines() if line and not line.startswith("#"))

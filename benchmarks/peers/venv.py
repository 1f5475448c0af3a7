"""One virtual environment per peer under ``.cache/bench/peers/<peer>-venv``, created on first use.

Peers pin versions the project does not (PyTriton wants numpy < 2, TorchServe wants torch), so they
never enter the project's environment. A stamp file holds the requirement list installed; a changed
list reinstalls, an unchanged one costs nothing. Failures become :class:`PeerUnavailable` with pip's
last lines, so ``python -m benchmarks`` says why and carries on.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

#: Minutes pip may take per peer (TorchServe's venv pulls torch: about 2 minutes from the local wheel).
INSTALL_TIMEOUT_S = 1500


class PeerUnavailable(RuntimeError):
    """The peer cannot be installed or started here; the message says why."""


def project_version(distribution: str, *alternatives: str) -> str | None:
    """The version installed in the project's env, so a peer runs the very same release."""
    for name in (distribution, *alternatives):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def shared_requirements() -> list[str]:
    """What every peer app imports from the project (preprocessing, model card) at the project's versions."""
    pins = []
    for package, alternatives in (("onnxruntime", ("onnxruntime-gpu",)), ("pillow", ()), ("pydantic", ())):
        version = project_version(package, *alternatives)
        pins.append(f"{package}=={version}" if version else package)
    return pins


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure(
    venv: Path, requirements: Sequence[str], *, log: Callable[[str], None] = print, timeout_s: float = INSTALL_TIMEOUT_S
) -> Path:
    """The venv's python with exactly ``requirements`` installed (created or updated when they changed)."""
    stamp = venv / ".bench-requirements"
    wanted = "\n".join(requirements) + "\n"
    python = venv_python(venv)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    log(f"  installing {venv.name} (first use, a few minutes): {' '.join(requirements)}")
    started = time.perf_counter()
    venv.parent.mkdir(parents=True, exist_ok=True)
    run_checked([sys.executable, "-m", "venv", "--clear", str(venv)], timeout_s=120, what=f"creating {venv}")
    run_checked([str(python), "-m", "pip", "install", "--quiet", *requirements], timeout_s=timeout_s,
                what=f"pip install {' '.join(requirements)}")
    stamp.write_text(wanted)
    log(f"  installed {venv.name} in {time.perf_counter() - started:.0f} s")
    return python


def run_checked(
    argv: list[str], *, timeout_s: float, what: str, env: dict[str, str] | None = None, tail_lines: int = 8
) -> str:
    """``argv``'s stdout, or :class:`PeerUnavailable` saying ``what`` failed and pip's (or the tool's) last lines."""
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False, env=env)
    except subprocess.TimeoutExpired:
        raise PeerUnavailable(f"{what}: no result after {timeout_s:.0f} s") from None
    except OSError as exc:
        raise PeerUnavailable(f"{what}: {exc}") from None
    if completed.returncode != 0:
        lines = [line for line in (completed.stdout + completed.stderr).splitlines() if "WARNING: Location" not in line]
        tail = " | ".join(line[:160] for line in lines[-tail_lines:])  # pip's "from versions: ..." line runs long
        raise PeerUnavailable(f"{what} failed (exit {completed.returncode}): {tail}")
    return completed.stdout

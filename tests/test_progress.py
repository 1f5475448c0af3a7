"""What a person sees while ``python -m export`` works: bars on a terminal, one plain line as each long step
starts in a log, only the result lines with ``--quiet``. Real runs: the real resnet20 checkpoint downloaded
from a local HTTP server, traced, verified on the CIFAR sample and written; the terminal is a pseudo-terminal."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SHARED_DIR, cifar_checkpoint
from file_server import FileServer, Route, serve_files

from export.progress import Bars, terminal
from models.progress import Lines, Silent

#: The transcript of ``python -m export resnet20 --weights <local URL>``, in order: ("start", ...) lines say
#: a long step began (logs only), ("result", ...) lines what each step did (every mode).
TRANSCRIPT = [
    ("start", r"\[resnet20\] downloading my-resnet20\.th from 127\.0\.0\.1: 1\.1 MB \.\.\."),
    ("result", (r"\[resnet20\] loaded http://127\.0\.0\.1:\d+/my-resnet20\.th#sha256=[0-9a-f]{64}"
                r" -> .+/my-resnet20\.th \(sha256 12fca82f[0-9a-f]{56}\)")),
    ("result", r"\[resnet20\] resnet20: 0\.27 M parameters, 10 classes, labels cifar10, input 32x32 \(resize 32 bilinear\)"),
    ("start", r"\[resnet20\] tracing to ONNX \(opset 17, fp32\) \.\.\."),
    ("result", r"\[resnet20\] exported ONNX opset 17 fp32 in \d+\.\d s: \d+ nodes \(19 Conv, 0 BatchNorm left\)"),
    ("start", r"\[resnet20\] verifying against PyTorch \S+ fp32: 100 images \.\.\."),
    ("result", (r"\[resnet20\] verified: 100 real images \(100 data/cifar10-sample\): max \|Δprob\| \S+,"
                r" top-1 agreement 100\.0% \(0 differ\), batch 1 vs 8 max \|Δprob\| \S+ \(\d+\.\d s\)")),
    ("result", r"\[resnet20\] wrote .+/resnet20/1/model\.onnx \(1\.1 MB\) version 1, total \d+\.\d s"),
]
#: What each step's bar looks like while it runs (drawn at least once, when the step starts).
BARS = [
    r"\[resnet20\] downloading my-resnet20\.th from 127\.0\.0\.1: .*/1\.\d\dM \[",
    r"\[resnet20\] tracing to ONNX \(opset 17, fp32\) \[00:\d\d\]",
    r"\[resnet20\] verifying against PyTorch \S+ fp32: +\d+%\|.*\| \d+/100 images \[",
]
#: mode -> (in a terminal, extra arguments, bars drawn, start lines printed)
MODES: dict[str, tuple[bool, tuple[str, ...], bool, bool]] = {
    "log (not a terminal)": (False, (), False, True),
    "terminal": (True, (), True, False),
    "terminal --quiet": (True, ("--quiet",), False, False),
}


@pytest.fixture(scope="module")
def weights_server() -> Iterator[FileServer]:
    """The real resnet20 checkpoint over HTTP on 127.0.0.1, as a published file would be."""
    with serve_files() as server:
        server.routes["/my-resnet20.th"] = Route(cifar_checkpoint("resnet20").read_bytes())
        yield server


def run_in_terminal(command: Sequence[str], env: dict[str, str], timeout_s: float = 300) -> tuple[int, str]:
    """``command`` on a pseudo-terminal of 120 columns (stdin, stdout and stderr): (exit status, all it drew)."""
    controller, terminal_side = pty.openpty()
    fcntl.ioctl(terminal_side, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdin=terminal_side, stdout=terminal_side, stderr=terminal_side
    )
    os.close(terminal_side)
    drawn = bytearray()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                process.kill()
                pytest.fail(f"{command} did not finish within {timeout_s} s:\n{drawn.decode(errors='replace')}")
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the program's side is closed
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(controller)
    return process.wait(timeout=60), drawn.decode()


def visible_lines(drawn: str) -> list[str]:
    """The lines a terminal keeps once the bars are gone: each line's text after its last carriage return."""
    rows = (row.rsplit("\r", 1)[-1].rstrip() for row in drawn.replace("\r\n", "\n").split("\n"))
    return [row for row in rows if row]


def assert_transcript(lines: list[str], *, starts: bool) -> None:
    expected = [pattern for kind, pattern in TRANSCRIPT if starts or kind == "result"]
    assert len(lines) == len(expected), "\n".join(lines)
    for line, pattern in zip(lines, expected):
        assert re.fullmatch(pattern, line), f"{line!r} does not match {pattern!r}"


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_what_an_export_shows(mode: str, weights_server: FileServer, tmp_path: Path) -> None:
    in_terminal, extra, bars, starts = MODES[mode]
    spec = weights_server.url("/my-resnet20.th") + "#sha256=" + "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"
    command = [sys.executable, "-m", "export", "resnet20", "--weights", spec, "--model-dir", str(tmp_path / "repo"), *extra]
    env = {key: value for key, value in os.environ.items() if not key.startswith("RESNET_SERVE_")}
    env.update(RESNET_SERVE_CACHE_DIR=str(tmp_path / "cache"), RESNET_SERVE_SHARED_DIR=str(SHARED_DIR), TERM="xterm")
    if in_terminal:
        status, drawn = run_in_terminal(command, env)
        lines = visible_lines(drawn)
    else:
        completed = subprocess.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        status, drawn, lines = completed.returncode, completed.stdout + completed.stderr, completed.stdout.splitlines()
        assert completed.stderr == "", "nothing is drawn into a log"
    assert status == 0, drawn
    assert_transcript(lines, starts=starts)
    for pattern in BARS:
        assert bool(re.search(pattern, drawn)) == bars, f"bar {pattern!r} {'missing' if bars else 'drawn'}:\n{drawn!r}"
    if not bars:
        assert "\x1b" not in drawn and "\r" not in drawn.replace("\r\n", "\n"), "no cursor movement without bars"


def test_terminal_picks_bars_on_a_terminal_lines_in_a_log_and_nothing_with_quiet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    controller, terminal_side = pty.openpty()
    with os.fdopen(terminal_side, "w") as a_terminal:
        cases = [  # (stream, quiet, TERM, the progress it gets)
            (a_terminal, False, "xterm", Bars),
            (a_terminal, False, "dumb", Lines),
            (a_terminal, True, "xterm", Silent),
            (io.StringIO(), False, "xterm", Lines),
            (io.StringIO(), True, "xterm", Silent),
        ]
        for stream, quiet, term, kind in cases:
            monkeypatch.setenv("TERM", term)
            assert type(terminal(quiet=quiet, stream=stream).progress) is kind, (stream, quiet, term)
    os.close(controller)


def test_bars_show_bytes_in_mb_with_a_rate_counts_against_their_total_and_put_lines_above(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each bar is drawn as its step starts (tqdm redraws later at most every 0.1 s, so the first drawing is
    the one a test can rely on) and cleared when it ends; a log line goes to stdout."""
    drawn = io.StringIO()
    bars = Bars(drawn)
    with bars.step("downloading w.th", 2_000_000, "B") as advance:
        advance(1_500_000)
        bars.write("a result line")
    with bars.step("verifying", 100, "images") as advance:
        advance(64)
    with bars.step("tracing"):
        pass
    shown = visible_lines(drawn.getvalue().replace("\r", "\n"))
    assert [re.sub(r" +", " ", line) for line in shown] == [
        "downloading w.th: 0%| | 0.00/2.00M [00:00<?, ?B/s]",
        "verifying: 0%| | 0/100 images [00:00<?]",
        "tracing [00:00]",
    ]
    assert re.search(r"\r +\r$", drawn.getvalue()), "the last bar is cleared"
    assert capsys.readouterr().out == "a result line\n"

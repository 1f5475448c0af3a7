"""Version switch timeline, run by hand: export a new version into a serving repository under load.

    .venv/bin/python tests/switch_timeline.py                  # resnet20 -> resnet32 under the name "cifar"
    .venv/bin/python tests/switch_timeline.py --clients 8 --poll-s 1 --rounds 3

Starts ``python -m service`` on a repository holding ``cifar`` v1 (CIFAR resnet20), keeps ``--clients``
clients posting real CIFAR images, exports a new version with ``export.export_model`` (resnet32 and
resnet20 weights alternately, so every round is a new file), and prints for each round: export finished
-> scan found it -> session created -> warmed -> first answer from the new version -> old version
released, plus failed requests (must be 0) and RSS before / peak / after.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import cifar_checkpoint, cifar_sample
from load import as_file, raw_http_request, send_raw
from server import run_server
from watch import RssSampler, rss_bytes

SERVING = re.compile(r"^(\S+ \S+) .*model cifar v(\d+) serving: session ([\d.]+) s, warm-up ([\d.]+) s")
RELEASED = re.compile(r"^(\S+ \S+) .*model cifar v(\d+) released: (\d+) requests held it, drained in ([\d.]+) s")


def log_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


class Clients(threading.Thread):
    """``count`` asyncio clients with prebuilt raw requests; every (finish time, status, version) kept."""

    def __init__(self, port: int, count: int) -> None:
        super().__init__(daemon=True)
        images = [path.read_bytes() for path, _ in cifar_sample()[::50]]
        self.requests = [raw_http_request(port, "/predict?model=cifar&top_k=1", *as_file(i, "x.jpg")) for i in images]
        self.port, self.count = port, count
        self.answers: list[tuple[float, int, int | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import json

        async def client(offset: int) -> None:
            index = offset
            while not self.stop.is_set():
                answer = await send_raw(self.port, self.requests[index % len(self.requests)], 60)
                version = json.loads(answer.body).get("version") if answer.status == 200 else None
                self.answers.append((time.time(), answer.status, version))
                index += self.count

        await asyncio.gather(*(client(i) for i in range(self.count)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from export import export_model

    repo = Path(tempfile.mkdtemp(prefix="switch-timeline-"))
    export_model("resnet20", str(cifar_checkpoint("resnet20")), model_dir=repo, name="cifar", log=lambda line: None)
    failures = 0
    with run_server(repo, "--repository-poll-s", str(args.poll_s), "--log-level", "info") as server:
        clients = Clients(server.port, args.clients)
        clients.start()
        time.sleep(3.0)
        rss_before = rss_bytes(server.process.pid)
        sampler = RssSampler(server.process.pid)
        sampler.start()
        print(f"{args.clients} clients, poll {args.poll_s:g} s; RSS before {rss_before / 1e6:.0f} MB")
        print("version  export done   +load began  +warmed, serving  +first answer  +old released  (s after the export)")
        for round_index in range(args.rounds):
            arch = ("resnet32", "resnet20")[round_index % 2]
            export_model(arch, str(cifar_checkpoint(arch)), model_dir=repo, name="cifar", log=lambda line: None)
            done = time.time()
            version = round_index + 2
            deadline = done + 120
            serving = released = None
            while time.time() < deadline and (serving is None or released is None):
                for line in server.log().splitlines():
                    if (m := SERVING.match(line)) and int(m[2]) == version:
                        serving = (log_time(m[1]), float(m[3]), float(m[4]))
                    if (m := RELEASED.match(line)) and int(m[2]) == version - 1:
                        released = log_time(m[1])
                time.sleep(0.1)
            first = min((t for t, status, v in clients.answers if v == version), default=float("nan"))
            assert serving is not None and released is not None, server.log()[-3000:]
            warmed_at, session_s, warm_s = serving
            print(f"{version:7d}  {datetime.fromtimestamp(done):%H:%M:%S.%f}"[:-3]
                  + f"  {warmed_at - warm_s - session_s - done:+11.2f}  {warmed_at - done:+16.2f}"
                  f"  {first - done:+13.2f}  {released - done:+14.2f}")
            time.sleep(2.0)
        clients.stop.set()
        clients.join(timeout=60)
        peak = sampler.stop()
        rss_after = rss_bytes(server.process.pid)
        failures = sum(1 for _, status, _ in clients.answers if status != 200)
        print(f"{len(clients.answers)} requests, {failures} failed; RSS before {rss_before / 1e6:.0f} MB, "
              f"peak {peak / 1e6:.0f} MB, after {rss_after / 1e6:.0f} MB")
    return int(failures > 0)


if __name__ == "__main__":
    sys.exit(main())

"""The hostile-input corpus against a real uvicorn process, while valid requests keep flowing.

Every case of :mod:`hostile_corpus` is sent to ``python -m service`` on 127.0.0.1; each must get its
documented status and the service's JSON error shape (never a 500), a background client sending a
valid image meanwhile must only ever see 200, and the server's memory must stay bounded:

* peak RSS during the corpus below :data:`PEAK_RSS_LIMIT` (1.5 GB; the default pixel cap of 50 MP
  bounds one decoded image at 150 MB, and the corpus never gets past the header checks with more);
* RSS after the corpus at most :data:`RSS_GROWTH_LIMIT` above RSS before it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import shared_path
from hostile_corpus import (
    BODY_TIMEOUT_S,
    MAX_FILES,
    MAX_UPLOAD_BYTES,
    Answer,
    HostileCase,
    RssSampler,
    ValidLoad,
    build_corpus,
    copy_model,
    rss_bytes,
    send_case,
)
from server import RunningServer, run_server

PEAK_RSS_LIMIT = 1_500_000_000
RSS_GROWTH_LIMIT = 200_000_000


@functools.cache
def corpus() -> tuple[HostileCase, ...]:
    return tuple(build_corpus())


@pytest.fixture(scope="module")
def hostile_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("hostile_repo")
    copy_model(model_repo, "resnet20", repo)
    with run_server(
        repo,
        "--max-upload-bytes", str(MAX_UPLOAD_BYTES),
        "--max-files", str(MAX_FILES),
        "--body-timeout-s", str(BODY_TIMEOUT_S),
        "--max-batch-delay-ms", "2",
    ) as server:
        yield server


def check_answer(case: HostileCase, answer: Answer) -> str | None:
    """Why ``answer`` is not what ``case`` documents, or None when it is."""
    if answer.status != case.status:
        return f"status {answer.status}, expected {case.status}: {json.dumps(answer.body)[:300]}"
    body = answer.body
    if case.code is None:
        if not isinstance(body, dict) or not ("predictions" in body or "results" in body):
            return f"200 without predictions: {body!r:.300}"
        return None
    if not isinstance(body, dict) or set(body) != {"error"}:
        return f"error body is not {{'error': {{...}}}}: {body!r:.300}"
    error = body["error"]
    if not isinstance(error, dict) or set(error) != {"code", "message"} or not error["message"]:
        return f"error object lacks code/message: {error!r:.300}"
    if error["code"] != case.code:
        return f"code {error['code']!r}, expected {case.code!r}: {error['message'][:200]}"
    return None


@pytest.mark.slow
def test_hostile_corpus_gets_documented_errors_while_valid_requests_succeed(hostile_server: RunningServer) -> None:
    cases = corpus()
    assert len(cases) >= 40
    pid = hostile_server.process.pid
    valid = shared_path("data", "photos", "chelsea.jpg").read_bytes()
    rss_before = rss_bytes(pid)
    sampler = RssSampler(pid)
    sampler.start()
    background = ValidLoad(hostile_server.base_url, valid)
    background.start()
    problems: list[str] = []
    rows: list[str] = []
    try:
        for case in cases:
            answer = send_case(hostile_server.base_url, case)
            rows.append(f"| {case.name} | {answer.status} | {answer.seconds * 1000:.0f} ms |")
            problem = check_answer(case, answer)
            if problem:
                problems.append(f"{case.name}: {problem}")
            if case.kind == "stall" and answer.seconds > BODY_TIMEOUT_S + 10:
                problems.append(f"{case.name}: cut off only after {answer.seconds:.1f} s")
    finally:
        background.stop()
        peak = sampler.stop()
    rss_after = rss_bytes(pid)
    print("\n| case | status | time to answer |\n| --- | --- | --- |\n" + "\n".join(rows))
    print(f"RSS before {rss_before / 1e6:.0f} MB, peak {peak / 1e6:.0f} MB, after {rss_after / 1e6:.0f} MB; "
          f"{len(background.statuses)} valid requests meanwhile")
    assert not problems, "\n".join(problems)
    assert hostile_server.alive()
    assert not background.errors, background.errors[:5]
    assert background.statuses and set(background.statuses) == {200}, sorted(set(background.statuses))
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 1e6:.0f} MB"
    assert rss_after - rss_before < RSS_GROWTH_LIMIT, f"RSS grew {(rss_after - rss_before) / 1e6:.0f} MB"
    assert "Traceback" not in hostile_server.log(), hostile_server.log()[-3000:]


def test_long_and_non_ascii_filenames_are_echoed_safely(hostile_server: RunningServer) -> None:
    by_name = {case.name: case for case in corpus()}
    long_answer = send_case(hostile_server.base_url, by_name["long filename"])
    assert long_answer.status == 200
    (result,) = long_answer.body["results"]  # type: ignore[index]
    assert 0 < len(result["filename"]) <= 200 and set(result["filename"]) == {"n"}
    unicode_answer = send_case(hostile_server.base_url, by_name["non-ascii filename"])
    assert unicode_answer.body["results"][0]["filename"] == "chat-\u732b-\u00e9t\u00e9-\U0001f431.jpg"  # type: ignore[index]

"""The hostile-input corpus against a real uvicorn process, while valid requests keep flowing.

Every case of :mod:`hostile` (/predict and the KServe V2 REST door) is sent to
``python -m service`` on 127.0.0.1; each must get its documented status in its protocol's error
shape (never a 5xx, no message over 400 characters), a background client sending a valid image
meanwhile must only ever see 200, and the server's memory must stay bounded:

* peak RSS during the corpus below :data:`PEAK_RSS_LIMIT` (1.5 GB; the default pixel cap of 50 MP
  bounds one decoded image at 150 MB, and the corpus never gets past the header checks with more);
* RSS after the corpus at most :data:`RSS_GROWTH_LIMIT` above RSS before it.
"""

from __future__ import annotations

import functools
from urllib.parse import quote

import httpx
import pytest
from hostile import (
    BODY_TIMEOUT_S,
    HTTP_SHAPE,
    MAX_FILES,
    MAX_INFLIGHT_BYTES,
    MAX_MESSAGE_CHARS,
    MAX_UPLOAD_BYTES,
    MODEL_QUERY,
    PREDICT_SHAPE,
    V2_SHAPE,
    Answer,
    HostileCase,
    build_corpus,
    encode,
    error_message,
    error_problem,
    gradient,
    send_case,
)
from load import PostingLoad, as_file
from server import RunningServer, photo, server_fixture
from watch import watched

PEAK_RSS_LIMIT = 1_500_000_000
RSS_GROWTH_LIMIT = 200_000_000


@functools.cache
def corpus() -> tuple[HostileCase, ...]:
    return tuple(build_corpus())


hostile_server = server_fixture(
    "--max-upload-bytes", str(MAX_UPLOAD_BYTES),
    "--max-files", str(MAX_FILES),
    "--max-inflight-bytes", str(MAX_INFLIGHT_BYTES),
    "--body-timeout-s", str(BODY_TIMEOUT_S),
    "--max-batch-delay-ms", "2",
)


def check_answer(case: HostileCase, answer: Answer) -> str | None:
    """Why ``answer`` is not what ``case`` documents, or None when it is."""
    # A head past 64 KiB is refused by httptools (400) or by service/http.py (431), whichever sees it first.
    head_refusal = case.shape == HTTP_SHAPE and case.status == 400 and answer.status == 431
    if answer.status != case.status and not head_refusal:
        return f"status {answer.status}, expected {case.status}: {answer.raw[:300]!r}"
    body = answer.body
    if case.status == 200:
        expected = "outputs" if case.shape == V2_SHAPE else "predictions"
        if not isinstance(body, dict) or not (expected in body or "results" in body):
            return f"200 without {expected}: {body!r:.300}"
        return None
    problem = error_problem(case.shape, body, answer.raw)
    if problem:
        return problem
    message = error_message(body)
    if case.shape == PREDICT_SHAPE and case.code is not None:
        assert isinstance(body, dict)
        if body["error"]["code"] != case.code:
            return f"code {body['error']['code']!r}, expected {case.code!r}: {message[:200]}"
    if case.words and case.words not in message:
        return f"message lacks {case.words!r}: {message[:200]!r}"
    return None


@pytest.mark.slow
def test_hostile_corpus_gets_documented_errors_while_valid_requests_succeed(hostile_server: RunningServer) -> None:
    cases = corpus()
    assert len(cases) >= 200
    valid = PostingLoad(hostile_server.url("/predict" + MODEL_QUERY), [photo("chelsea.jpg")])
    problems: list[str] = []
    rows: list[str] = []
    with watched(hostile_server, liveness=False) as watch, valid:
        for case in cases:
            answer = send_case(hostile_server.base_url, case)
            rows.append(f"| {case.name} | {answer.status} | {answer.seconds * 1000:.0f} ms |")
            problem = check_answer(case, answer)
            if problem:
                problems.append(f"{case.name}: {problem}")
            if case.kind == "stall" and answer.seconds > BODY_TIMEOUT_S + 10:
                problems.append(f"{case.name}: cut off only after {answer.seconds:.1f} s")
    grown = watch.rss_after - watch.rss_before
    print("\n| case | status | time to answer |\n| --- | --- | --- |\n" + "\n".join(rows))
    print(f"RSS before {watch.rss_before / 1e6:.0f} MB, peak {watch.rss_peak / 1e6:.0f} MB, after "
          f"{watch.rss_after / 1e6:.0f} MB; {len(valid.attempts)} valid requests meanwhile")
    assert not problems, "\n".join(problems)
    assert hostile_server.alive()
    assert valid.attempts and not valid.failures(), [(a.status, a.detail) for a in valid.failures()[:5]]
    assert watch.rss_peak < PEAK_RSS_LIMIT, f"peak RSS {watch.rss_peak / 1e6:.0f} MB"
    assert grown < RSS_GROWTH_LIMIT, f"RSS grew {grown / 1e6:.0f} MB"
    assert "Traceback" not in hostile_server.log(), hostile_server.log()[-3000:]


def test_long_and_non_ascii_filenames_are_echoed_safely(hostile_server: RunningServer) -> None:
    by_name = {case.name: case for case in corpus()}
    long_answer = send_case(hostile_server.base_url, by_name["long filename"])
    assert long_answer.status == 200
    (result,) = long_answer.body["results"]  # type: ignore[index]
    assert 0 < len(result["filename"]) <= 200 and set(result["filename"]) == {"n"}
    unicode_answer = send_case(hostile_server.base_url, by_name["non-ascii filename"])
    assert unicode_answer.body["results"][0]["filename"] == "chat-\u732b-\u00e9t\u00e9-\U0001f431.jpg"  # type: ignore[index]


#: Cases whose input is 5,000 to 100,000 characters long: the message names it but echoes at most 200.
LONG_ECHOES = {
    "model 60,000 characters": "m",
    "v2 model 60,000 characters": "m",
    "top_k 5,000 digits": "9",
    "top_k 60,000 digits": "7",
    "version 5,000 digits": "9",
    "v2 version 5,000 digits": "9",
    "v2 json unknown field of 100,000 characters": "k",
    "v2 json input name of 100,000 characters": "n",
    "v2 json output name of 100,000 characters": "o",
}


@pytest.mark.parametrize(("name", "letter"), LONG_ECHOES.items(), ids=list(LONG_ECHOES))
def test_echoed_input_is_cut_to_200_characters(hostile_server: RunningServer, name: str, letter: str) -> None:
    """A 60,000-character model name once came back whole in the 404; every echo is cut now."""
    case = {case.name: case for case in corpus()}[name]
    answer = send_case(hostile_server.base_url, case)
    assert answer.status == case.status, answer.raw[:300]
    message = error_message(answer.body)
    assert 0 < len(message) < MAX_MESSAGE_CHARS, message[:300]
    assert letter * 201 not in message, message[:300]  # at most 200 characters of the input


#: Unprintable input: cut to 200 characters, then escaped by repr() (``\x00`` is 4 characters, ``\U00018cd6``
#: 10), so the echo is up to 2,000 characters. Measured messages: 2,062 / 862 / 482 / 876 characters.
ESCAPED_ECHOES = {
    "predict model of 1,000 U+18CD6": "/predict?model=" + quote("\U00018cd6" * 1000),
    "predict model of 1,000 NUL": "/predict?model=" + "%00" * 1000,
    "predict top_k of 100 U+18CD6": "/predict?model=resnet20&top_k=" + quote("\U00018cd6" * 100),
    "v2 model of 1,000 NUL": "/v2/models/" + "%00" * 1000 + "/infer",
}


# service.parsing.shown() cuts the escaped text: unprintable characters cannot make an echo longer.
@pytest.mark.parametrize("target", ESCAPED_ECHOES.values(), ids=list(ESCAPED_ECHOES))
def test_escaped_echoes_are_short(hostile_server: RunningServer, target: str) -> None:
    body, headers = as_file(encode(gradient(40, 40), "JPEG"))
    if target.startswith("/v2/"):
        body, headers = b"{}", {"content-type": "application/json"}
    response = httpx.post(hostile_server.url(target), content=body, headers=headers, timeout=30)
    assert response.status_code in (404, 422), response.text[:300]
    message = error_message(response.json())
    assert 0 < len(message) < MAX_MESSAGE_CHARS, f"{len(message)} characters: {message[:120]}..."

"""Sending a hostile case the way its ``kind`` says, and judging the error answer's shape."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
from load import send_early

from .case import HTTP_SHAPE, MAX_MESSAGE_CHARS, V2_SHAPE, HostileCase


@dataclass
class Answer:
    """What came back for one case: status, parsed JSON body (or None), seconds to answer, raw body."""

    status: int
    body: object
    seconds: float
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""


def error_problem(shape: str, body: object, raw: bytes = b"", max_message: int = MAX_MESSAGE_CHARS) -> str | None:
    """Why an error answer is not in ``shape``'s layout or echoes too much; None when it is right.

    ``body`` is the parsed JSON (None when the body is not JSON), ``raw`` the bytes as received.
    """
    if shape == HTTP_SHAPE:  # the HTTP layer's own text answer, before any application code ran
        if body is not None:
            return f"expected the HTTP layer's plain-text answer, got JSON: {raw[:200]!r}"
        return None
    if not isinstance(body, dict) or set(body) != {"error"}:
        return f"error body is not {{'error': ...}}: {raw[:300]!r}"
    error = body["error"]
    if shape == V2_SHAPE:
        message = error
        if not isinstance(message, str) or not message:
            return f"V2 error is not a non-empty string: {error!r:.300}"
    else:
        if not isinstance(error, dict) or set(error) != {"code", "message"} or not error["message"]:
            return f"error object lacks code/message: {error!r:.300}"
        message = error["message"]
        if not isinstance(message, str):
            return f"message is not a string: {message!r:.300}"
    if len(message) > max_message:
        return f"message of {len(message)} characters echoes too much: {message[:200]!r}..."
    return None


def error_message(body: object) -> str:
    """The message of either error shape ('' when there is none)."""
    if not isinstance(body, dict):
        return ""
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("message", ""))
    return error if isinstance(error, str) else ""


def send_case(base_url: str, case: HostileCase, *, timeout_s: float = 60.0) -> Answer:
    """Send one case the way its ``kind`` says and return the server's answer."""
    url = base_url + case.target
    started = time.perf_counter()
    if case.kind == "stall":
        status, body = _send_and_stall(base_url, case, timeout_s)
        return Answer(status, body, time.perf_counter() - started)
    if case.kind == "socket":
        port = int(base_url.rsplit(":", 1)[1])
        answer = asyncio.run(send_early(port, case.body, timeout_s))
        try:
            parsed: object = json.loads(answer.body)
        except ValueError:
            parsed = None
        status = answer.status if answer.error is None or answer.status else 0
        return Answer(status, parsed, answer.seconds, answer.headers, answer.body)
    if case.kind == "chunked":
        payload = case.body

        def chunks() -> Iterator[bytes]:
            for offset in range(0, len(payload), 65536):
                yield payload[offset: offset + 65536]

        content: bytes | Iterator[bytes] = chunks()
    else:
        content = case.body
    headers = {name: value.encode("utf-8") for name, value in case.headers.items()}  # UTF-8 bytes as given
    with httpx.Client(timeout=timeout_s) as client:
        request = client.build_request("POST", url, content=content, headers=headers)
        if "content-type" not in headers:
            request.headers.pop("content-type", None)
        response = client.send(request)
    try:
        body: object = response.json()
    except ValueError:
        body = None
    return Answer(response.status_code, body, time.perf_counter() - started, dict(response.headers), response.content)


def _send_and_stall(base_url: str, case: HostileCase, timeout_s: float) -> tuple[int, object]:
    """Headers plus half of the body, then nothing: read whatever the server answers."""
    host, port = base_url.removeprefix("http://").split(":")
    head = [f"POST {case.target} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(case.body)}"]
    head += [f"{key}: {value}" for key, value in case.headers.items()]
    with socket.create_connection((host, int(port)), timeout=timeout_s) as connection:
        connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + case.body[: len(case.body) // 2])
        received = b""
        while b"\r\n\r\n" not in received or len(received) < _expected_length(received):
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    status = int(status_line.split()[1]) if status_line else 0
    _, _, payload = rest.partition(b"\r\n\r\n")
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, None


def _expected_length(received: bytes) -> int:
    head, _, _ = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value.strip())
    return len(received)

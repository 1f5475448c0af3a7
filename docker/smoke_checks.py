"""HTTP checks docker/smoke-test.sh runs against the containerised API (standard library only).

    python3 docker/smoke_checks.py http://127.0.0.1:PORT chelsea.jpg CIFAR_SAMPLE_DIR

Exits non-zero on the first wrong answer, printing what came back.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

MODEL = "cifar10-resnet20"
#: Exported from a local checkpoint file mounted at /weights ("your own weights").
OWN_MODEL = "my-resnet32"
#: resnet20 scores 80.4 % on the whole 1,000-image sample; a broken pipeline (channel order, scaling,
#: resize) lands near chance (10 %), so this bound separates the two on 50 images.
MIN_BATCH_ACCURACY = 0.6
IMAGES_PER_CLASS = 5


def request(
    base: str, path: str, body: bytes | None = None, content_type: str | None = None
) -> tuple[int, Any]:
    """One HTTP exchange; returns the status and the decoded JSON (or text) body, 4xx/5xx included."""
    headers = {"Content-Type": content_type} if content_type else {}
    req = urllib.request.Request(base + path, data=body, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            status, raw, kind = response.status, response.read(), response.headers.get_content_type()
    except urllib.error.HTTPError as error:
        status, raw, kind = error.code, error.read(), error.headers.get_content_type()
    return status, json.loads(raw) if kind == "application/json" else raw.decode()


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body with one repeated ``files`` field per image."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n"
        for name, data in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def expect(condition: bool, what: str, got: Any) -> None:
    if not condition:
        print(f"  FAIL {what}: got {json.dumps(got)[:600]}")
        sys.exit(1)
    print(f"  ok   {what}")


def main(base: str, photo: Path, cifar_dir: Path) -> None:
    status, body = request(base, "/health/live")
    expect(status == 200, "GET /health/live -> 200", body)
    status, body = request(base, "/health/ready")
    expect(status == 200 and body["ready"] is True, "GET /health/ready -> 200 ready", body)

    status, body = request(base, "/models")
    names = [model.get("name") for model in body.get("models", [])] if status == 200 else []
    expect(sorted(names) == sorted([MODEL, OWN_MODEL]), f"GET /models lists {MODEL} and {OWN_MODEL}", body)
    providers = sorted({provider for model in body["models"] for provider in model["active_providers"]})
    expect(providers == ["CPUExecutionProvider"], f"the models run on {providers}", body)

    status, body = request(base, f"/predict?model={MODEL}&top_k=3", photo.read_bytes(), "image/jpeg")
    top = body.get("predictions", [{}])[0] if status == 200 else {}
    expect(top.get("label") == "cat", f"POST {photo.name} (451x300 photo of a tabby) -> top-1 'cat'", body)
    print(f"       {body['predictions']}")

    cat = cifar_dir / "cat" / "0000.jpg"
    status, body = request(base, f"/predict?model={MODEL}&top_k=3", cat.read_bytes(), "image/jpeg")
    top = body.get("predictions", [{}])[0] if status == 200 else {}
    expect(top.get("label") == "cat", "POST cifar10-sample/cat/0000.jpg -> top-1 'cat'", body)
    print(f"       {body['predictions']}")
    status, body = request(base, f"/predict?model={OWN_MODEL}&top_k=1", cat.read_bytes(), "image/jpeg")
    top = body.get("predictions", [{}])[0] if status == 200 else {}
    expect(top.get("label") == "cat", f"POST the same image to {OWN_MODEL} -> top-1 'cat'", body)

    classes = sorted(folder.name for folder in cifar_dir.iterdir() if folder.is_dir())
    files = [
        (f"{name}/{image.name}", image.read_bytes())
        for name in classes
        for image in sorted((cifar_dir / name).glob("*.jpg"))[:IMAGES_PER_CLASS]
    ]
    payload, content_type = multipart(files)
    status, body = request(base, f"/predict?model={MODEL}&top_k=1", payload, content_type)
    results = body.get("results", []) if status == 200 else []
    correct = sum(
        result["filename"].split("/")[0] == result["predictions"][0]["label"] for result in results
    )
    accuracy = correct / len(files)
    expect(
        len(results) == len(files) and accuracy >= MIN_BATCH_ACCURACY,
        f"POST {len(files)} CIFAR images in one multipart request -> {correct}/{len(files)} correct"
        f" ({accuracy:.0%}, need >= {MIN_BATCH_ACCURACY:.0%})",
        body,
    )

    status, body = request(base, f"/predict?model={MODEL}", b"not an image", "text/plain")
    expect(400 <= status < 500 and "error" in body, f"POST text/plain -> {status} JSON error", body)
    status, body = request(base, f"/predict?model={MODEL}", b"\xff\xd8 truncated jpeg", "image/jpeg")
    expect(400 <= status < 500 and "error" in body, f"POST a broken JPEG -> {status} JSON error", body)

    status, body = request(base, "/metrics")
    expect(status == 200 and "resnet_serve" in body, "GET /metrics -> Prometheus text", body[:300])


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(sys.argv[1].rstrip("/"), Path(sys.argv[2]), Path(sys.argv[3]))

"""schemathesis against a real server's /openapi.json: generated requests to every operation, no 5xx.

Positive and negative data (wrong types, missing parts, random bodies for /predict's multipart and
image/* forms) are generated from the schema the service publishes; the only check is that no
answer is a server error (a 504 ``timeout`` is the answer a request that asked for a deadline of a few
milliseconds deserves, not a failure). The budget is :data:`EXAMPLES` examples per operation.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from server import RunningServer, server_fixture

EXAMPLES = 40


openapi_server = server_fixture("--max-upload-bytes", "1000000")


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda mode: mode.value)
def test_no_generated_request_gets_a_server_error(openapi_server: RunningServer, mode: schemathesis.GenerationMode) -> None:
    """Every operation, positive (schema-valid) and negative (schema-violating) data.

    schemathesis' own pytest plugin does not load under this pytest, so its strategies are driven
    with hypothesis directly: same generation, same ``not_a_server_error`` check.
    """
    schema = schemathesis.openapi.from_url(openapi_server.url("/openapi.json"))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /predict", "GET /models", "GET /health/ready"}
    seen: dict[str, set[int]] = {}
    for operation in operations:
        try:
            seen[operation.label] = statuses_of(operation, mode, openapi_server.base_url)
        except Unsatisfiable:  # negative mode: an operation without parameters has nothing to violate
            assert mode is schemathesis.GenerationMode.NEGATIVE and operation.label.startswith("GET "), operation.label
            seen[operation.label] = set()
    print(f"\n{mode.value}: statuses per operation {seen}")
    assert openapi_server.alive()


def statuses_of(operation: Any, mode: schemathesis.GenerationMode, base_url: str) -> set[int]:
    """Run :data:`EXAMPLES` generated requests to ``operation``: the statuses seen (a server error fails)."""
    seen: set[int] = set()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, timeout=30)
        seen.add(response.status_code)
        if response.status_code == 504 and "timeout_ms" in (case.query or {}):
            assert response.json()["error"]["code"] == "timeout", response.text  # the client's own deadline
            return
        case.validate_response(response, checks=[schemathesis.checks.not_a_server_error])

    check()
    return seen

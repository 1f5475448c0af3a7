"""schemathesis against a real server's /openapi.json: generated requests to every operation, no 5xx.

Positive and negative data (wrong types, missing parts, random bodies for /predict's multipart and
image/* forms) are generated from the schema the service publishes; the only check is that no
answer is a server error. The budget is :data:`EXAMPLES` examples per operation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hostile_corpus import copy_model
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from server import RunningServer, run_server

EXAMPLES = 40


@pytest.fixture(scope="module")
def openapi_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("openapi_repo")
    copy_model(model_repo, "resnet20", repo)
    with run_server(repo, "--max-upload-bytes", "1000000") as server:
        yield server


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

        @settings(
            max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=openapi_server.base_url, timeout=30)
            seen.setdefault(operation.label, set()).add(response.status_code)
            case.validate_response(response, checks=[schemathesis.checks.not_a_server_error])

        try:
            check()
        except Unsatisfiable:  # negative mode: an operation without parameters has nothing to violate
            assert mode is schemathesis.GenerationMode.NEGATIVE and operation.label.startswith("GET "), operation.label
            seen[operation.label] = set()
    print(f"\n{mode.value}: statuses per operation {seen}")
    assert openapi_server.alive()

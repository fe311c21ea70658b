"""The server's OpenAPI document describes every route's request body and error responses, and schemathesis,
generating requests from it against a live server (bounded examples per operation), finds no server error (5xx) and
no response that breaks the document (undocumented status, body not matching its schema)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance
from server_fixtures import ServerHandle, start_server

# small generations: schemathesis draws any valid sampling parameters, max_new_tokens and n included
ARGS = ["--chat-template", "chatml", "--context-length", "64", "--max-prompts-per-request", "16"]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = start_server(ARGS)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def api_schema(server: ServerHandle) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")


def test_document_has_request_bodies_and_error_responses(server: ServerHandle) -> None:
    doc = httpx.get(f"{server.base_url}/openapi.json").json()
    for path in ("/generate", "/v1/completions", "/v1/chat/completions", "/abort_request", "/tokenize"):
        post = doc["paths"][path]["post"]
        assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].startswith("#/components/")
        assert {"400", "413", "415"} <= set(post["responses"]), (path, sorted(post["responses"]))
    assert "SamplingParams" in doc["components"]["schemas"] and "ErrorBody" in doc["components"]["schemas"]


def test_fuzz_no_server_errors_no_schema_violations(api_schema: schemathesis.BaseSchema) -> None:
    """Every operation, a few generated cases each (schemathesis' pytest plugin does not run under this pytest, so
    its strategies are driven with hypothesis directly)."""
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance]
    failures: list[str] = []
    statuses: dict[int, int] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def run(case: schemathesis.Case) -> None:
            response = case.call_and_validate(checks=checks, timeout=60)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        try:
            run()
        except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - collect every operation's failures
            failures.append(f"{operation.method.upper()} {operation.path}: {str(e)[:600]}")
    assert not failures, "\n\n".join(failures)
    assert sum(statuses.values()) >= 2 * len(operations) and 200 in statuses and 400 in statuses, statuses

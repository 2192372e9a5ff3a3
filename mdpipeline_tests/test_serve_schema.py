"""Schemathesis against the read API's own OpenAPI schema, served over loopback from the real database.

Every operation of the served schema is called with examples schemathesis generates from it, valid
and invalid ones; each answer must conform: no server error, a declared status code and content
type, a body matching the declared schema (rows for 200, `{"error"}` for 400/404/503), invalid input
refused with 4xx. (The schemathesis pytest loader cannot take a fixture under pytest 9, so the
operations are run from inside one test with their hypothesis strategies.)

One check is replaced: "schema-valid data is accepted" cannot hold for rules OpenAPI cannot state
(end on or after start, at most N symbols, days or rows per request), so a schema-valid request may
get 400, but only with one of those reasons, which the test checks instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from mdpipeline.serve.queries import INTERVALS
from mdpipeline_tests.test_serve import seed, serving

CROSS_FIELD_RULES = ("is before start", "per request", "rows match", "at least one symbol")


@pytest.fixture
def served_schema(database_url: str, conn: psycopg.Connection) -> Iterator[schemathesis.BaseSchema]:
    seed(conn)
    server = serving(database_url)
    try:
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    finally:
        server.stop()


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode))
def test_every_operation_answers_as_its_schema_says(served_schema: schemathesis.BaseSchema,
                                                     mode: schemathesis.GenerationMode) -> None:
    operations = [result.ok() for result in served_schema.get_all_operations()]
    assert {op.path for op in operations} == {"/health", "/v1/quality", *(f"/v1/bars/{i}" for i in INTERVALS)}
    calls: list[int] = []
    negative = mode is schemathesis.GenerationMode.NEGATIVE
    for operation in operations:
        if negative and not operation.query:
            continue  # nothing to get wrong
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
            calls.append(response.status_code)
            if not negative and response.status_code == 400:
                assert any(why in response.json()["error"] for why in CROSS_FIELD_RULES), response.text

        check()
    assert len(calls) >= 20
    if mode is schemathesis.GenerationMode.POSITIVE:
        assert 200 in calls
    else:
        assert 400 in calls

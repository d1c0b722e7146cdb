"""schemathesis over the OpenAPI document of a real server: every generated request, valid
or not, gets a documented answer (no 5xx; status codes, headers and bodies as the schema
says) within 10 s. One check is left out: a schema-valid upload of random bytes is not an
image, so its 422 is right.

DEEPLENSE_FUZZ_EXAMPLES sets the number of generated requests (default 60; `make fuzz`
runs thousands).
"""

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
import torch
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from deeplense.numerics import flush_denormals
from tests.app.serve_fixture import run_server

EXAMPLES = int(os.environ.get("DEEPLENSE_FUZZ_EXAMPLES", "60"))


@pytest.fixture(scope="module")
def server(tiny_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("schema-fuzz") / "server.log"
    with run_server(tiny_checkpoints, log, settings={"DEEPLENSE_REQUEST_TIMEOUT_S": "10"}) as url:
        yield url


@pytest.fixture
def subnormal_floats() -> Iterator[None]:
    """Hypothesis generates subnormal floats, which the service's numerics (set in this
    process whenever app.main was imported) flush to zero: allowed again for the test."""
    torch.set_flush_denormal(False)
    try:
        yield
    finally:
        flush_denormals()


@pytest.mark.usefixtures("subnormal_floats")
def test_every_operation_answers_as_documented(server: str) -> None:
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    strategy = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(
        GenerationMode.NEGATIVE
    )
    session = requests.Session()

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: schemathesis.Case) -> None:
        calls.append(case.operation.label)
        started = time.monotonic()
        response = case.call(base_url=server, session=session, timeout=15)
        assert time.monotonic() - started < 10, case.as_curl_command()
        assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
        # Schema-valid is not image-valid: random bytes in `files` rightly get a 422.
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    calls: list[str] = []
    check()
    # Every operation was exercised (hypothesis may stop early once it runs out of cases).
    assert len(set(calls)) == len(list(schema.get_all_operations())), sorted(set(calls))
    print(f"schemathesis: {len(calls)} requests over {len(set(calls))} operations")

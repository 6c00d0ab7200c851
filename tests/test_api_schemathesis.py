"""Property-based run of the OpenAPI spec (schemathesis): whatever the generated input, valid or
not, the API answers without a server error, with documented status codes and shapes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from app.api.main import create_app
from tests.api_support import ADMIN, USER_A, api_settings, bearer

EXAMPLES = 8  # per operation and generation mode: bounded so the run stays well under a minute


def property_test(
    operation: Any, mode: GenerationMode, headers: dict[str, str]
) -> Callable[[], None]:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any) -> None:
        # Every default check (no 5xx, documented status codes, content types and response
        # schemas, invalid data rejected) except "valid data accepted": a well-formed request
        # is still refused for a missing upload or job.
        case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

    return check


def test_no_server_errors_anywhere(db_url: str, tmp_path: Path) -> None:
    app = create_app(api_settings(db_url, tmp_path, max_upload_mb=1), run_dispatcher=False)
    # One subprocess per example would dominate the run; that endpoint has its own test.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(
        path="/v1/admin/scaler/run"
    )
    tried: list[str] = []
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            tried.append(operation.label)
            headers = ADMIN if operation.path.startswith("/v1/admin") else bearer(USER_A)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    property_test(operation, mode, headers)()
                except Unsatisfiable:
                    # nothing to make invalid (no parameters, no body): nothing to try
                    assert mode == GenerationMode.NEGATIVE
    finally:
        app.state.ctx.close()
    assert "POST /v1/jobs" in tried and "GET /v1/jobs/{job_id}/events" in tried

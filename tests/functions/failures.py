"""Reading a stage's failure reply in the function tests."""

from __future__ import annotations

from typing import Any

import httpx

from geozarr_pipeline.events import EventType, StageFailed


def problem_of(response: httpx.Response) -> dict[str, Any]:
    """The problem of a permanent failure: a 200 whose reply is an eopf.geozarr.failed event.

    Returned as the JSON problem body a caller reads: {"error": code, "message", "field"}.
    """
    assert response.status_code == 200, response.text
    assert response.headers["ce-type"] == EventType.FAILED.value, response.headers
    failure = StageFailed.model_validate_json(response.content)
    assert failure.problem.retryable is False
    return {
        "error": failure.problem.code,
        "message": failure.problem.message,
        "field": failure.problem.field,
    }

"""One exception tree for the pipeline, mapped to HTTP status codes in one table.

The status code steers redelivery: the RabbitMQ dispatcher (and the local broker) retry
404, 408, 409, 429 and 5xx and dead-letter them once retries are exhausted; it acks and drops
every other answer, so a permanent error is never answered with a bare 4xx through the broker:
the stage replies 200 with an `eopf.geozarr.failed` event instead (`cloudevent_http`), and
the status below is only what a caller posting a malformed request directly sees.
"""

from __future__ import annotations

from typing import Any


class PipelineError(Exception):
    """Base of every error a stage reports to its caller."""

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details

    @property
    def code(self) -> str:
        """A stable name of the problem (`invalid_input`, `source_not_found`, ...)."""
        for cls in type(self).__mro__:
            if cls in ERROR_NAMES:
                return ERROR_NAMES[cls]
        return ERROR_NAMES[PipelineError]

    @property
    def retryable(self) -> bool:
        return is_retryable_status(status_code_for(self))

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        if self.details:
            body["details"] = self.details
        return body


class PermanentError(PipelineError):
    """The input can never succeed: do not retry; the stage replies with a failure event."""


class InvalidEvent(PermanentError):
    """The CloudEvent itself is malformed: missing attribute, bad JSON, unexpected type."""


class EventTooLarge(InvalidEvent):
    """The request body is over the size every function and the broker accept."""


class InvalidInput(PermanentError):
    """The event is well formed but its data fails validation or names something unusable."""


class SourceNotFound(PermanentError):
    """The source item or product does not exist (a permanent 4xx, not a retried 404)."""


class UnsupportedProduct(PermanentError):
    """The product exists but this pipeline cannot process it (e.g. not Sentinel-2)."""


class OutputCheckFailed(PermanentError):
    """The converted store does not match its source: never handed on as good."""


class UpstreamRejected(PermanentError):
    """A downstream API refused the request with a non-retryable 4xx."""


class TransientError(PipelineError):
    """A fault that may pass: network errors, timeouts, 5xx from a dependency."""


class RateLimited(TransientError):
    """A dependency asked us to slow down."""


class InProgress(TransientError):
    """Another delivery of the same work is running right now: retry later."""


STATUS_CODES: dict[type[PipelineError], int] = {
    PipelineError: 500,
    PermanentError: 422,
    InvalidEvent: 400,
    EventTooLarge: 413,
    InvalidInput: 422,
    SourceNotFound: 422,
    UnsupportedProduct: 422,
    OutputCheckFailed: 422,
    UpstreamRejected: 422,
    TransientError: 503,
    RateLimited: 429,
    InProgress: 409,
}

ERROR_NAMES: dict[type[PipelineError], str] = {
    cls: "".join("_" + c.lower() if c.isupper() else c for c in cls.__name__).lstrip("_")
    for cls in STATUS_CODES
}

# knative/eventing pkg/kncloudevents/retries.go SelectiveRetry (commit 8cf4c4b6): the statuses
# a Trigger dispatcher retries; it acks every other answer (the table is in the local
# broker's geozarr_local/broker/dispatch.py).
RETRYABLE_STATUS_CODES = frozenset({404, 408, 409, 429}) | frozenset(range(500, 600))


def status_code_for(error: PipelineError) -> int:
    """The HTTP status of an error: the entry of its nearest class in STATUS_CODES."""
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return 500


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS_CODES

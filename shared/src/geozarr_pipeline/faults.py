"""The one fault classifier: HTTP answers, httpx and botocore errors -> the error tree.

Every read of a source (item, product metadata, a store over HTTP or S3) and every call on
our own object storage goes through these functions, so a status means the same everywhere:

- 2xx/3xx: success.
- 404, 410 (absent) and 401, 403 (denied: S3 answers 403 for a missing key to a reader without
  list permission): the resource is unavailable to us. A probe for an optional document reads
  it as "not there"; a required read is a permanent `SourceNotFound`.
- 408, 429 and 5xx: transient (`RateLimited` for 429, with the Retry-After it asked for),
  retried in the process (`retries`), then by the broker.
- any other 4xx: the URL we were given is unusable, a permanent `InvalidInput`.

httpx and botocore are imported lazily: neither is needed to import this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from geozarr_pipeline.errors import (
    InvalidInput,
    PipelineError,
    RateLimited,
    SourceNotFound,
    TransientError,
)
from geozarr_pipeline.redaction import quoted

if TYPE_CHECKING:
    import httpx

    from geozarr_pipeline.retries import RetryPolicy

ABSENT_STATUSES = frozenset({404, 410})
DENIED_STATUSES = frozenset({401, 403})
UNAVAILABLE_STATUSES = ABSENT_STATUSES | DENIED_STATUSES
TRANSIENT_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))

# S3 error codes: a missing key or bucket, and a lost conditional write (If-None-Match/If-Match).
S3_ABSENT_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
S3_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
# Error codes botocore's standard retry mode retries whatever the status, copied from
# botocore/retries/standard.py of botocore 1.43.117 (class attributes, not public constants):
# TransientRetryableChecker._TRANSIENT_ERROR_CODES and
# ThrottledRetryableChecker._THROTTLED_ERROR_CODES.
BOTOCORE_TRANSIENT_CODES = frozenset(
    {"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"}
)
BOTOCORE_THROTTLED_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)
# Codes S3 may send with a 4xx that still pass: botocore's, and S3's 409 OperationAborted
# ("a conflicting conditional operation is in progress against this resource, try again").
S3_PASSING_CODES = BOTOCORE_TRANSIENT_CODES | BOTOCORE_THROTTLED_CODES | {"OperationAborted"}


def _reason(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def http_status_fault(status: int, what: str) -> PipelineError | None:
    """The error an HTTP answer of a read of `what` means; None when it is a success."""
    if status < 400:
        return None
    if status in ABSENT_STATUSES:
        return SourceNotFound(f"{what} does not exist ({_reason(status)})")
    if status in DENIED_STATUSES:
        return SourceNotFound(f"{what} is not readable by the pipeline ({_reason(status)})")
    if status == 429:
        return RateLimited(f"{what}: rate limited ({_reason(status)})")
    if status in TRANSIENT_STATUSES:
        return TransientError(f"{what} answered {_reason(status)}")
    return InvalidInput(f"{what} answered {_reason(status)}")


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The wait a 429 answer asks for (Retry-After in seconds); None when it names none."""
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if response.status_code == 429 and value.isdigit() else None


def http_answer_fault(response: httpx.Response, what: str) -> PipelineError | None:
    """`http_status_fault` of a response, carrying the Retry-After it asked for (if any)."""
    fault = http_status_fault(response.status_code, what)
    retry_after = retry_after_seconds(response)
    if fault is not None and retry_after is not None:
        fault.details["retry_after_s"] = retry_after
    return fault


def http_request_fault(what: str, exc: httpx.HTTPError, *, doing: str = "reading") -> PipelineError:
    """The error a failed request means: a redirect loop is the URL's fault, the rest may pass."""
    import httpx

    if isinstance(exc, httpx.TooManyRedirects):
        return InvalidInput(f"too many redirects {doing} {what}")
    kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "network error"
    return TransientError(f"{kind} {doing} {what}: {type(exc).__name__}: {quoted(str(exc))}")


def _get(client: httpx.Client, url: str, what: str, headers: Mapping[str, str] | None) -> Any:
    import httpx

    try:
        return client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        raise http_request_fault(f"{what} {url}", exc) from exc


def http_read(
    client: httpx.Client, url: str, what: str, *, headers: Mapping[str, str] | None = None
) -> httpx.Response:
    """GET a required document: the response, or the classified error."""
    response: httpx.Response = _get(client, url, what, headers)
    fault = http_answer_fault(response, f"{what} {url}")
    if fault is not None:
        raise fault
    return response


def http_probe(
    client: httpx.Client, url: str, what: str, *, headers: Mapping[str, str] | None = None
) -> httpx.Response | None:
    """GET an optional document: None when it is unavailable (absent or denied)."""
    response: httpx.Response = _get(client, url, what, headers)
    if response.status_code in UNAVAILABLE_STATUSES:
        return None
    fault = http_answer_fault(response, f"{what} {url}")
    if fault is not None:
        raise fault
    return response


def s3_errors() -> tuple[type[Exception], ...]:
    """The botocore exceptions a client call raises (for an `except` clause)."""
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    errors: tuple[type[Exception], ...] = (ClientError, BotoCoreError)
    return errors


def s3_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ('' for any other exception)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def is_s3_absent(exc: BaseException) -> bool:
    return s3_code(exc) in S3_ABSENT_CODES


def is_s3_conflict(exc: BaseException) -> bool:
    return s3_code(exc) in S3_CONFLICT_CODES


def s3_refusal(exc: BaseException) -> int | None:
    """The status of an S3 answer refusing the request outright: a 4xx other than 408 and 429
    whose code is not one that passes; None for any other error."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if not isinstance(status, int) or status < 400 or status in TRANSIENT_STATUSES:
        return None
    return None if s3_code(exc) in S3_PASSING_CODES else status


def s3_fault(what: str, exc: BaseException) -> TransientError:
    """Our own storage failing or refusing us (credentials, bucket, policy) is no fault of the
    event: transient, so the work resumes once the deployment is fixed. The status of a refusal
    (403, 404 for a bucket) is kept: `retries` leaves it to the broker, retrying it within
    seconds is no use."""
    code = s3_code(exc)
    status = s3_refusal(exc)
    details: dict[str, Any] = {"status": status} if status is not None else {}
    return TransientError(
        f"S3 {what} failed{f' ({code})' if code else ''}: {quoted(str(exc))}", **details
    )


def s3_attempt(what: str, call: Callable[..., Any], **kwargs: Any) -> Any:
    """One boto3 client call: its reply, None when the object is absent, else `s3_fault`."""
    try:
        return call(**kwargs)
    except s3_errors() as exc:
        if is_s3_absent(exc):
            return None
        raise s3_fault(what, exc) from exc


def s3_request(
    what: str,
    call: Callable[..., Any],
    *,
    retry: RetryPolicy | None = None,
    item_id: str | None = None,
    **kwargs: Any,
) -> Any:
    """`s3_attempt` under the S3 retry policy `retry` (the default settings' one if None);
    `item_id` is the item the call is for. The kwargs are sent again on a retry as they are:
    a file body must go through `s3_attempt` inside a policy call that reopens it."""
    from geozarr_pipeline.retries import default_policies

    policy = retry if retry is not None else default_policies().s3
    return policy.call(lambda: s3_attempt(what, call, **kwargs), item_id=item_id)

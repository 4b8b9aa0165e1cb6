"""The one fault classifier: every reader gives the same answer to the same fault.

In-process: HTTP answers come from an httpx MockTransport, S3 refusals are botocore's own
ClientError with the codes S3 sends. Each read here makes a single attempt (the retries of
each kind of call are tested in test_retries).
"""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from geozarr_pipeline import faults
from geozarr_pipeline.config import Settings
from geozarr_pipeline.convert.sources import read_root_metadata
from geozarr_pipeline.errors import (
    InvalidInput,
    PipelineError,
    RateLimited,
    SourceNotFound,
    TransientError,
)
from geozarr_pipeline.retries import RetryPolicy
from geozarr_pipeline.stac.source import fetch_source_item
from geozarr_pipeline.stac.store import HttpReader

ONCE = RetryPolicy("test", attempts=1, backoff_seconds=0.0, max_backoff_seconds=0.0)

EXPECTED: dict[int, type[PipelineError]] = {
    400: InvalidInput,
    401: SourceNotFound,
    403: SourceNotFound,
    404: SourceNotFound,
    405: InvalidInput,
    408: TransientError,
    410: SourceNotFound,
    422: InvalidInput,
    429: RateLimited,
    500: TransientError,
    502: TransientError,
    503: TransientError,
}


def answering(status: int) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(lambda _r: httpx.Response(status)))


@pytest.mark.parametrize(("status", "error"), EXPECTED.items())
def test_a_status_means_the_same_to_every_required_read(
    status: int, error: type[PipelineError]
) -> None:
    fault = faults.http_status_fault(status, "thing")
    assert type(fault) is error
    with answering(status) as client, pytest.raises(PipelineError) as raised:
        fetch_source_item("https://stac.example.org/item", client, retry=ONCE)
    assert type(raised.value) is error
    assert str(status) in raised.value.message


@pytest.mark.parametrize(("status", "error"), EXPECTED.items())
def test_optional_documents_are_absent_when_unavailable_and_fail_alike_otherwise(
    status: int, error: type[PipelineError]
) -> None:
    """The store reader and the product metadata probe: absent or denied is "not there"."""
    settings = Settings(allow_plain_http=True, allow_private_hosts=True, retry_source_attempts=1)
    with answering(status) as client:
        reader = HttpReader("https://store.example.org/x.zarr", client)
        if status in faults.UNAVAILABLE_STATUSES:
            assert reader.read_json("zarr.json") is None
            # Both metadata documents unavailable: there is no product.
            with pytest.raises(SourceNotFound, match="no Zarr product"):
                read_root_metadata("https://store.example.org/x.zarr", settings, client)
            return
        with pytest.raises(PipelineError) as from_reader:
            reader.read_json("zarr.json")
        with pytest.raises(PipelineError) as from_probe:
            read_root_metadata("https://store.example.org/x.zarr", settings, client)
    assert type(from_reader.value) is type(from_probe.value) is error


def test_a_rate_limit_carries_the_wait_it_asks_for() -> None:
    def answer(headers: dict[str, str]) -> httpx.Client:
        response = httpx.Response(429, headers=headers)
        return httpx.Client(transport=httpx.MockTransport(lambda _r: response))

    for headers, wait in (({"Retry-After": "7"}, 7.0), ({"Retry-After": "soon"}, None), ({}, None)):
        with answer(headers) as client, pytest.raises(RateLimited) as raised:
            faults.http_read(client, "https://x.org/a", "thing")
        assert raised.value.details.get("retry_after_s") == wait


def test_success_is_no_fault() -> None:
    assert faults.http_status_fault(200, "thing") is None
    assert faults.http_status_fault(304, "thing") is None


def test_transport_faults_are_transient_and_a_redirect_loop_is_the_urls_fault() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with (
        httpx.Client(transport=httpx.MockTransport(refuse)) as client,
        pytest.raises(TransientError, match="network error reading source item"),
    ):
        fetch_source_item("https://stac.example.org/item", client, retry=ONCE)
    loop = httpx.TooManyRedirects("loop", request=httpx.Request("GET", "https://x.org"))
    assert type(faults.http_request_fault("thing", loop)) is InvalidInput
    timeout = httpx.ReadTimeout("slow", request=httpx.Request("GET", "https://x.org"))
    assert type(faults.http_request_fault("thing", timeout)) is TransientError


def client_error(code: str, operation: str = "GetObject", status: int = 400) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} says no"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


@pytest.mark.parametrize("code", sorted(faults.S3_ABSENT_CODES))
def test_an_absent_s3_object_is_none(code: str) -> None:
    def get_object(**_: object) -> object:
        raise client_error(code)

    assert faults.s3_request("read", get_object, retry=ONCE, Bucket="b", Key="k") is None


@pytest.mark.parametrize(
    ("exc", "refusal"),
    [
        (client_error("AccessDenied", status=403), 403),
        (client_error("NoSuchBucket", status=404), 404),
        (client_error("SlowDown", status=503), None),
        (client_error("RequestTimeout", status=400), None),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), None),
    ],
)
def test_our_storage_refusing_or_failing_is_a_bounded_transient_fault(
    exc: Exception, refusal: int | None
) -> None:
    """Transient for the broker either way; a refusal keeps its status, so that it is not
    retried within the process."""

    def call(**_: object) -> object:
        raise exc

    with pytest.raises(TransientError) as raised:
        faults.s3_request("marker read", call, retry=ONCE)
    assert raised.value.message.startswith("S3 marker read failed")
    code = faults.s3_code(exc)
    assert (f"({code})" in raised.value.message) is bool(code)
    assert len(raised.value.message) < 600
    assert raised.value.details.get("status") == refusal


def test_a_lost_conditional_write_is_a_conflict_not_absence() -> None:
    for code in faults.S3_CONFLICT_CODES:
        assert faults.is_s3_conflict(client_error(code, "PutObject"))
        assert not faults.is_s3_absent(client_error(code, "PutObject"))
    assert not faults.is_s3_conflict(client_error("AccessDenied"))
    assert faults.s3_code(ValueError("not boto")) == ""


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("OperationAborted", 409),  # a conflicting operation in progress on the object
        ("PriorRequestNotComplete", 400),
        ("ThrottlingException", 400),
        ("TooManyRequestsException", 400),
        ("BandwidthLimitExceeded", 400),
    ],
)
def test_s3_codes_botocore_retries_may_pass_whatever_their_status(code: str, status: int) -> None:
    calls: list[int] = []

    def call(**_: object) -> object:
        calls.append(1)
        raise client_error(code, "PutObject", status=status)

    assert faults.s3_refusal(client_error(code, status=status)) is None
    twice = RetryPolicy("test", attempts=2, backoff_seconds=0.0, max_backoff_seconds=0.0)
    with pytest.raises(TransientError, match=code) as raised:
        faults.s3_request("marker write", call, retry=replace(twice, sleep=lambda _s: None))
    assert "status" not in raised.value.details
    assert len(calls) == 2  # retried within the process, not left to the broker at once


def test_the_passing_codes_hold_botocores_own_standard_mode_lists() -> None:
    """The copy in faults follows the installed botocore (retries/standard.py)."""
    from botocore.retries.standard import (
        ThrottledRetryableChecker,
        TransientRetryableChecker,
    )

    assert set(TransientRetryableChecker._TRANSIENT_ERROR_CODES) <= faults.S3_PASSING_CODES
    assert set(ThrottledRetryableChecker._THROTTLED_ERROR_CODES) <= faults.S3_PASSING_CODES
    assert faults.s3_refusal(client_error("AccessDenied", status=403)) == 403

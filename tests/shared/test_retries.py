"""The retry policies, one per kind of call, each exercised in-process where it is used.

For every kind: a transient fault is retried to success (one "retrying" log line per retry,
carrying the item id), a permanent one is tried once, and a fault that never clears stops after
the policy's attempts with the classified error. HTTP faults come from an httpx MockTransport
(the readers and clients run unchanged on top of it); S3 faults are botocore's own, from a
real boto3 client under botocore's Stubber or pointed at a closed port. Nothing sleeps: the
policies get a sleep that records the waits.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from geozarr_pipeline import output_store
from geozarr_pipeline.catalog.auth import OidcClientCredentials
from geozarr_pipeline.catalog.stac_api import StacApiCatalog
from geozarr_pipeline.config import Settings
from geozarr_pipeline.convert.sources import read_root_metadata
from geozarr_pipeline.errors import (
    InProgress,
    InvalidInput,
    PipelineError,
    RateLimited,
    SourceNotFound,
    TransientError,
    UpstreamRejected,
)
from geozarr_pipeline.faults import s3_request
from geozarr_pipeline.objects import open_object_store
from geozarr_pipeline.retries import (
    MAX_RETRY_AFTER_SECONDS,
    RetryPolicies,
    RetryPolicy,
    default_policies,
)
from geozarr_pipeline.s3 import s3_client
from geozarr_pipeline.stac.source import fetch_source_item
from geozarr_pipeline.stac.store import HttpReader, S3Reader

ITEM_ID = "S2B_MSIL2A_20250101T000000_N0511_R000_T00AAA_20250101T000000"
SOURCE_ITEM_URL = "https://stac.example.org/collections/sentinel-2-l2a/items/x"
ZARR_URL = "https://store.example.org/x.zarr"
TOKEN_URL = "https://auth.example.org/token"
STAC_URL = "https://stac-api.example.org"
SOURCE_ITEM = {"type": "Feature", "id": "x", "assets": {"product": {"href": ZARR_URL}}}

# Short policies, so that "never clears" is quick; a wait that would be real is recorded.
SETTINGS: dict[str, Any] = {
    "retry_source_attempts": 3,
    "retry_s3_attempts": 3,
    "retry_token_attempts": 3,
    "stac_api_retries": 2,
}


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def policies(waits: list[float]) -> RetryPolicies:
    return RetryPolicies.from_settings(Settings(**SETTINGS), sleep=waits.append)


@pytest.fixture
def retry_log(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    caplog.set_level(logging.WARNING, logger="geozarr_pipeline.retries")
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "retrying":
                records.append(record)

    handler = Collect()
    logger = logging.getLogger("geozarr_pipeline.retries")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def assert_logged_retries(
    records: list[logging.LogRecord], kind: str, count: int, item_id: str | None = ITEM_ID
) -> None:
    """Exactly one line per retry, each with the kind, the item id and the failed attempt."""
    assert len(records) == count
    assert [getattr(r, "attempt", None) for r in records] == list(range(1, count + 1))
    for record in records:
        assert getattr(record, "kind", None) == kind
        assert getattr(record, "item_id", None) == item_id
        assert isinstance(getattr(record, "delay_s", None), float)
        assert getattr(record, "error", None)


Fault = Callable[[httpx.Request], Exception]


class Answers:
    """An httpx transport answering from a script, the last step repeated: per request a
    status, a (status, JSON body) pair, or a transport fault; every request seen is kept."""

    def __init__(self, *script: int | tuple[int, Any] | Fault) -> None:
        self.script = list(script)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if callable(step):
            raise step(request)
        status, body = step if isinstance(step, tuple) else (step, "")
        text = body if isinstance(body, str) else json.dumps(body)
        return httpx.Response(status, text=text)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))


def refused(request: httpx.Request) -> Exception:
    return httpx.ConnectError("connection refused", request=request)


def timed_out(request: httpx.Request) -> Exception:
    return httpx.ReadTimeout("no answer in time", request=request)


# Source item reads -------------------------------------------------------------------------


def fetch_item(answers: Answers, policies: RetryPolicies) -> dict[str, Any]:
    with answers.client() as client:
        return fetch_source_item(SOURCE_ITEM_URL, client, retry=policies.source, item_id=ITEM_ID)


@pytest.mark.parametrize(
    "fault",
    [503, 429, 408, timed_out, refused],
    ids=["503", "429", "408", "timeout", "connect"],
)
def test_source_item_read_retries_a_transient_fault_to_success(
    fault: Any, policies: RetryPolicies, retry_log: list[logging.LogRecord]
) -> None:
    answers = Answers(fault, (200, SOURCE_ITEM))
    assert fetch_item(answers, policies) == SOURCE_ITEM
    assert len(answers.seen) == 2
    assert_logged_retries(retry_log, "source", 1)


@pytest.mark.parametrize(("status", "error"), [(404, SourceNotFound), (400, InvalidInput)])
def test_source_item_read_does_not_retry_a_permanent_fault(
    status: int,
    error: type[PipelineError],
    policies: RetryPolicies,
    retry_log: list[logging.LogRecord],
) -> None:
    answers = Answers(status, (200, SOURCE_ITEM))
    with pytest.raises(error):
        fetch_item(answers, policies)
    assert len(answers.seen) == 1
    assert retry_log == []


def test_source_item_read_stops_after_its_attempts(
    policies: RetryPolicies, waits: list[float], retry_log: list[logging.LogRecord]
) -> None:
    answers = Answers(502)
    with pytest.raises(TransientError, match="502"):
        fetch_item(answers, policies)
    assert len(answers.seen) == policies.source.attempts == 3
    assert len(waits) == 2
    assert all(0 <= wait <= policies.source.max_backoff_seconds for wait in waits)
    assert_logged_retries(retry_log, "source", 2)


def test_a_document_that_is_no_item_is_not_read_again(policies: RetryPolicies) -> None:
    answers = Answers((200, "<html>a login page</html>"))
    with pytest.raises(InvalidInput, match="not JSON"):
        fetch_item(answers, policies)
    assert len(answers.seen) == 1


# Product metadata reads --------------------------------------------------------------------


def metadata_settings(**overrides: Any) -> Settings:
    # No wait between attempts at all: read_root_metadata builds its policy from settings.
    return Settings(**{**SETTINGS, "retry_source_backoff_seconds": 0.0, **overrides})


def read_metadata(answers: Answers, settings: Settings) -> dict[str, Any]:
    with answers.client() as client:
        return read_root_metadata(ZARR_URL, settings, client, item_id=ITEM_ID)


def test_product_metadata_read_retries_a_transient_fault_to_success(
    retry_log: list[logging.LogRecord],
) -> None:
    consolidated = {"metadata": {".zattrs": {}}, "zarr_consolidated_format": 1}
    answers = Answers(503, refused, (200, consolidated))
    assert read_metadata(answers, metadata_settings()) == consolidated
    assert [r.url.path for r in answers.seen] == ["/x.zarr/.zmetadata"] * 3
    assert_logged_retries(retry_log, "source", 2)


def test_product_metadata_read_does_not_retry_a_missing_product(
    retry_log: list[logging.LogRecord],
) -> None:
    answers = Answers(404)
    with pytest.raises(SourceNotFound, match="no Zarr product"):
        read_metadata(answers, metadata_settings())
    # Both documents probed once: absence is an answer, not a fault.
    assert [r.url.path for r in answers.seen] == ["/x.zarr/.zmetadata", "/x.zarr/zarr.json"]
    assert retry_log == []


def test_product_metadata_read_stops_after_its_attempts(
    retry_log: list[logging.LogRecord],
) -> None:
    answers = Answers(500)
    with pytest.raises(TransientError, match="500"):
        read_metadata(answers, metadata_settings(retry_source_attempts=4))
    assert len(answers.seen) == 4
    assert_logged_retries(retry_log, "source", 3)


def test_a_product_read_through_a_store_reader_is_retried_under_the_source_policy(
    policies: RetryPolicies, retry_log: list[logging.LogRecord]
) -> None:
    """What register does for a direct Zarr source: the product's own metadata documents."""
    from geozarr_pipeline.stac.source import item_from_product

    attributes = {"stac_discovery": {"type": "Feature", "id": "x"}}
    answers = Answers(503, (200, attributes))
    with answers.client() as client:
        reader = HttpReader(ZARR_URL, client)
        item = policies.source.call(lambda: item_from_product(reader, ZARR_URL), item_id=ITEM_ID)
    assert item == attributes["stac_discovery"]
    assert_logged_retries(retry_log, "source", 1)


# STAC API requests -------------------------------------------------------------------------


class FakeStacApi:
    """Just enough of a STAC API (Transactions) in-process, with faults injected per method:
    `faults[method]` is a list of statuses answered (in order) instead of doing the work."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.faults: dict[str, list[int | tuple[int, dict[str, str]]]] = {}
        self.seen: list[tuple[str, int]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        response = self._answer(request)
        self.seen.append((request.method, response.status_code))
        return response

    def _answer(self, request: httpx.Request) -> httpx.Response:
        queued = self.faults.get(request.method) or []
        if queued:
            fault = queued.pop(0)
            status, headers = fault if isinstance(fault, tuple) else (fault, {})
            return httpx.Response(
                status, json={"description": f"injected {status}"}, headers=headers
            )
        parts = request.url.path.strip("/").split("/")
        if request.method == "GET" and len(parts) == 2:
            return httpx.Response(200, json={"id": parts[1]})
        if request.method == "POST" and parts[-1] == "items":
            item = json.loads(request.content)
            if item["id"] in self.items:
                return httpx.Response(409, json={"description": "exists"})
            self.items[item["id"]] = item
            return httpx.Response(201, json=item)
        if request.method == "PUT":
            if parts[-1] not in self.items:
                return httpx.Response(404, json={"description": "no such item"})
            self.items[parts[-1]] = json.loads(request.content)
            return httpx.Response(200, json=self.items[parts[-1]])
        if request.method == "GET" and parts[-1] in self.items:
            return httpx.Response(200, json=self.items[parts[-1]])
        return httpx.Response(404, json={"description": "not found"})

    def catalog(self, policies: RetryPolicies, **fields: Any) -> StacApiCatalog:
        client = httpx.Client(transport=httpx.MockTransport(self))
        return StacApiCatalog(base_url=STAC_URL, client=client, retry=policies.stac_api, **fields)

    def count(self, method: str) -> int:
        return sum(1 for seen, _status in self.seen if seen == method)


def stac_item() -> dict[str, Any]:
    return {"type": "Feature", "id": ITEM_ID, "collection": "c", "properties": {}, "links": []}


@pytest.mark.parametrize("status", [503, 502, 429, 408])
def test_stac_api_write_retries_a_transient_fault_to_success(
    status: int, policies: RetryPolicies, retry_log: list[logging.LogRecord]
) -> None:
    api = FakeStacApi()
    api.faults["POST"] = [status]
    url = api.catalog(policies).put_item(stac_item(), "create-or-skip")
    assert url == f"{STAC_URL}/collections/c/items/{ITEM_ID}"
    assert [s for m, s in api.seen if m == "POST"] == [status, 201]
    assert_logged_retries(retry_log, "stac_api", 1)


def test_stac_api_connection_errors_are_retried(
    policies: RetryPolicies, retry_log: list[logging.LogRecord]
) -> None:
    answers = Answers(refused, timed_out, (200, stac_item()))
    catalog = StacApiCatalog(base_url=STAC_URL, client=answers.client(), retry=policies.stac_api)
    assert catalog.get_item("c", ITEM_ID)["id"] == ITEM_ID
    assert len(answers.seen) == 3
    assert_logged_retries(retry_log, "stac_api", 2)


@pytest.mark.parametrize("status", [400, 403, 422])
def test_stac_api_write_does_not_retry_a_permanent_fault(
    status: int, policies: RetryPolicies, retry_log: list[logging.LogRecord]
) -> None:
    api = FakeStacApi()
    api.faults["POST"] = [status]
    with pytest.raises(UpstreamRejected, match=f"injected {status}"):
        api.catalog(policies).put_item(stac_item(), "create-or-skip")
    assert api.count("POST") == 1
    assert retry_log == []


def test_stac_api_write_stops_after_its_attempts(
    policies: RetryPolicies, retry_log: list[logging.LogRecord]
) -> None:
    api = FakeStacApi()
    api.faults["PUT"] = [503] * 10
    api.items[ITEM_ID] = stac_item()
    with pytest.raises(TransientError, match=r"STAC API PUT .* failed after 3 attempts: HTTP 503"):
        api.catalog(policies).put_item(stac_item(), "replace")
    # Three attempts of the PUT, and no more: the concurrent-write policy around the write
    # does not try again a request its own policy gave up on.
    assert api.count("PUT") == policies.stac_api.attempts == 3
    assert_logged_retries(retry_log, "stac_api", 2)


def test_a_rate_limit_waits_as_long_as_retry_after_says_up_to_a_cap(
    policies: RetryPolicies, waits: list[float]
) -> None:
    api = FakeStacApi()
    api.faults["POST"] = [(429, {"Retry-After": "3"}), (429, {"Retry-After": "3600"})]
    api.catalog(policies).put_item(stac_item(), "create-or-skip")
    assert waits == [3.0, MAX_RETRY_AFTER_SECONDS]


def test_a_retry_after_is_capped_by_the_policys_backoff_cap(waits: list[float]) -> None:
    """retry_backoff_cap_seconds bounds every wait, a Retry-After's too."""
    settings = Settings(**SETTINGS, retry_backoff_cap_seconds=2.0)
    capped = RetryPolicies.from_settings(settings, sleep=waits.append)
    api = FakeStacApi()
    api.faults["POST"] = [(429, {"Retry-After": "1"}), (429, {"Retry-After": "3600"})]
    api.catalog(capped).put_item(stac_item(), "create-or-skip")
    assert waits == [1.0, 2.0]
    # A cap above MAX_RETRY_AFTER_SECONDS leaves that one in force.
    waits.clear()
    settings = Settings(**SETTINGS, retry_backoff_cap_seconds=60.0)
    roomy = RetryPolicies.from_settings(settings, sleep=waits.append)
    api.faults["DELETE"] = [(429, {"Retry-After": "3600"})]
    api.catalog(roomy).delete_item("c", ITEM_ID)
    assert waits == [MAX_RETRY_AFTER_SECONDS]


def test_a_rate_limit_that_never_clears_is_rate_limited(policies: RetryPolicies) -> None:
    api = FakeStacApi()
    api.faults["DELETE"] = [429] * 10
    with pytest.raises(RateLimited):
        api.catalog(policies).delete_item("c", ITEM_ID)
    assert api.count("DELETE") == 3


def test_a_write_that_raced_a_concurrent_writer_is_retried(
    policies: RetryPolicies, retry_log: list[logging.LogRecord]
) -> None:
    """replace: POST answers 409 (exists), then PUT answers 404 (pgstac's delete + insert of
    another writer): the write starts again, and lands."""
    api = FakeStacApi()
    api.faults["POST"] = [409]
    api.faults["PUT"] = [404]
    api.catalog(policies).put_item(stac_item(), "replace")
    assert [m for m, _s in api.seen if m != "GET"] == ["POST", "PUT", "POST"]
    assert api.items[ITEM_ID]["id"] == ITEM_ID
    assert_logged_retries(retry_log, "stac_api", 1)


def test_a_write_that_keeps_racing_stops_after_the_attempts(policies: RetryPolicies) -> None:
    api = FakeStacApi()
    api.faults["POST"] = [409] * 10
    api.faults["PUT"] = [404] * 10
    with pytest.raises(TransientError, match="kept changing under concurrent writers"):
        api.catalog(policies).put_item(stac_item(), "replace")
    assert api.count("POST") == api.count("PUT") == policies.stac_api.attempts


# Token fetches -----------------------------------------------------------------------------


def token_answer(token: str = "tok-1") -> tuple[int, dict[str, Any]]:
    return 200, {"access_token": token, "token_type": "Bearer", "expires_in": 300}


def oidc(answers: Answers, policies: RetryPolicies) -> OidcClientCredentials:
    return OidcClientCredentials(
        token_url=TOKEN_URL,
        client_id="register",
        client_secret="s3cr3t",
        client=answers.client(),
        retry=policies.token,
    )


@pytest.mark.parametrize("fault", [503, 429, refused], ids=["503", "429", "connect"])
def test_token_fetch_retries_a_transient_fault_to_success(
    fault: Any, policies: RetryPolicies, retry_log: list[logging.LogRecord]
) -> None:
    answers = Answers(fault, token_answer())
    assert oidc(answers, policies).headers(item_id=ITEM_ID) == {"Authorization": "Bearer tok-1"}
    assert len(answers.seen) == 2
    assert_logged_retries(retry_log, "token", 1)


@pytest.mark.parametrize("status", [400, 401, 403])
def test_token_fetch_does_not_retry_a_refusal(
    status: int, policies: RetryPolicies, retry_log: list[logging.LogRecord]
) -> None:
    answers = Answers(status, token_answer())
    with pytest.raises(UpstreamRejected, match="refused the client credentials"):
        oidc(answers, policies).headers(item_id=ITEM_ID)
    assert len(answers.seen) == 1
    assert retry_log == []


def test_token_fetch_stops_after_its_attempts(
    policies: RetryPolicies, retry_log: list[logging.LogRecord]
) -> None:
    answers = Answers(503)
    with pytest.raises(TransientError, match="token endpoint answered 503"):
        oidc(answers, policies).headers(item_id=ITEM_ID)
    assert len(answers.seen) == 3
    assert_logged_retries(retry_log, "token", 2)


def test_a_token_fetch_inside_a_stac_api_request_is_not_retried_twice(
    policies: RetryPolicies, retry_log: list[logging.LogRecord]
) -> None:
    """The STAC API policy does not retry a token fetch the token policy gave up on: the token
    endpoint sees the token policy's attempts, not their product with the request's."""
    tokens = Answers(503)
    api = FakeStacApi()
    catalog = api.catalog(policies, auth=oidc(tokens, policies))
    with pytest.raises(TransientError, match="token endpoint"):
        catalog.put_item(stac_item(), "create-or-skip")
    assert len(tokens.seen) == policies.token.attempts
    assert api.seen == []
    assert_logged_retries(retry_log, "token", policies.token.attempts - 1)


# S3 reads and writes -----------------------------------------------------------------------


def s3_settings(tmp_path: Any, endpoint: str = "http://127.0.0.1:1", **overrides: Any) -> Settings:
    return Settings(
        **{
            **SETTINGS,
            "output_root": "s3://bucket/geozarr",
            "s3_endpoint_url": endpoint,
            "s3_access_key_id": "key",
            "s3_secret_access_key": "secret",
            "work_dir": tmp_path,
            "retry_s3_backoff_seconds": 0.0,
            **overrides,
        }
    )


def body(data: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(data), len(data))


@pytest.fixture
def stubbed(tmp_path: Any) -> Iterator[tuple[Any, Stubber]]:
    """The pipeline's own S3 client (botocore's config as s3.py sets it) under a Stubber."""
    client = s3_client(s3_settings(tmp_path))
    with Stubber(client) as stubber:
        yield client, stubber
    client.close()


MARKER = {"format": output_store.MARKER_FORMAT, "done": {}}


def marker_location(tmp_path: Any, client: Any) -> output_store.S3Output:
    location = output_store.output_for(s3_settings(tmp_path), "c", ITEM_ID, client)
    assert isinstance(location, output_store.S3Output)
    return location


@pytest.mark.parametrize(
    ("code", "status"),
    # S3 answers RequestTimeout (an idle upload connection) with a 400, yet it may pass.
    [("SlowDown", 503), ("InternalError", 500), ("RequestTimeout", 400)],
)
def test_s3_read_retries_a_transient_fault_to_success(
    code: str,
    status: int,
    tmp_path: Any,
    stubbed: tuple[Any, Stubber],
    retry_log: list[logging.LogRecord],
) -> None:
    client, stubber = stubbed
    stubber.add_client_error("get_object", service_error_code=code, http_status_code=status)
    stubber.add_response("get_object", {"Body": body(json.dumps(MARKER).encode())})
    assert marker_location(tmp_path, client).read_marker() == MARKER
    stubber.assert_no_pending_responses()
    assert_logged_retries(retry_log, "s3", 1)


def test_s3_write_retries_a_transient_fault_to_success(
    tmp_path: Any, stubbed: tuple[Any, Stubber], retry_log: list[logging.LogRecord]
) -> None:
    client, stubber = stubbed
    stubber.add_client_error("put_object", service_error_code="SlowDown", http_status_code=503)
    stubber.add_response("put_object", {"ETag": '"e"'})
    marker_location(tmp_path, client).write_marker(MARKER)
    stubber.assert_no_pending_responses()
    assert_logged_retries(retry_log, "s3", 1)


@pytest.mark.parametrize(
    ("code", "status"), [("AccessDenied", 403), ("NoSuchBucket", 404), ("InvalidAccessKeyId", 403)]
)
def test_s3_refusal_is_tried_once_and_left_to_the_broker(
    code: str,
    status: int,
    tmp_path: Any,
    stubbed: tuple[Any, Stubber],
    retry_log: list[logging.LogRecord],
) -> None:
    """Our storage refusing us is transient for the broker (the deployment gets fixed), but
    no use retrying within seconds."""
    client, stubber = stubbed
    stubber.add_client_error("put_object", service_error_code=code, http_status_code=status)
    with pytest.raises(TransientError, match=code) as raised:
        marker_location(tmp_path, client).write_marker(MARKER)
    assert raised.value.retryable
    assert raised.value.details["status"] == status
    stubber.assert_no_pending_responses()
    assert retry_log == []


def test_an_absent_s3_object_is_an_answer_not_retried(
    tmp_path: Any, stubbed: tuple[Any, Stubber], retry_log: list[logging.LogRecord]
) -> None:
    client, stubber = stubbed
    stubber.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
    assert marker_location(tmp_path, client).read_marker() is None
    stubber.assert_no_pending_responses()
    assert retry_log == []


def test_s3_calls_stop_after_their_attempts_and_botocore_makes_one_each(
    tmp_path: Any, retry_log: list[logging.LogRecord]
) -> None:
    """A closed port: botocore's own EndpointConnectionError, with botocore sending once per
    attempt of the policy (the two layers never multiply)."""
    from geozarr_local.processes import LOOPBACK, free_port

    settings = s3_settings(tmp_path, endpoint=f"http://{LOOPBACK}:{free_port()}")
    sends: list[str] = []
    with output_store.output_for(settings, "c", ITEM_ID) as location:
        assert isinstance(location, output_store.S3Output)
        location.client.meta.events.register(
            "before-send.s3.HeadObject", lambda **_: sends.append("head")
        )
        with pytest.raises(TransientError, match="S3 store check failed"):
            location.store_exists()
    assert len(sends) == settings.retry_s3_attempts == 3
    assert_logged_retries(retry_log, "s3", 2)


def test_s3_object_store_retries_and_a_fail_fast_one_does_not(
    tmp_path: Any, stubbed: tuple[Any, Stubber], retry_log: list[logging.LogRecord]
) -> None:
    """Records name no item: their retries are logged without one."""
    client, stubber = stubbed
    settings = s3_settings(tmp_path)
    store = open_object_store(settings, "s3://bucket/_failures", client=client)
    stubber.add_client_error("get_object", service_error_code="SlowDown", http_status_code=503)
    stubber.add_response("get_object", {"Body": body(b"{}")})
    assert store.get("r.json") == b"{}"
    assert_logged_retries(retry_log, "s3", 1, item_id=None)

    fail_fast = open_object_store(settings, "s3://bucket/_status", fail_fast=True, client=client)
    stubber.add_client_error("put_object", service_error_code="SlowDown", http_status_code=503)
    with pytest.raises(TransientError, match="SlowDown"):
        fail_fast.put("a.json", b"{}")
    stubber.assert_no_pending_responses()
    assert len(retry_log) == 1


def test_a_retried_create_only_write_that_landed_is_still_ours(
    tmp_path: Any, stubbed: tuple[Any, Stubber]
) -> None:
    """If-None-Match: the first attempt was applied but its answer lost; the retry is refused
    as a conflict, and the record found there is the one written: the write succeeded."""
    client, stubber = stubbed
    store = open_object_store(s3_settings(tmp_path), "s3://bucket/_failures", client=client)
    stubber.add_client_error("put_object", service_error_code="InternalError", http_status_code=500)
    stubber.add_client_error(
        "put_object", service_error_code="PreconditionFailed", http_status_code=412
    )
    stubber.add_response("get_object", {"Body": body(b'{"mine": 1}')})
    assert store.put("r.json", b'{"mine": 1}', if_absent=True) is True
    stubber.add_client_error(
        "put_object", service_error_code="PreconditionFailed", http_status_code=412
    )
    assert store.put("r.json", b'{"other": 1}', if_absent=True) is False
    stubber.assert_no_pending_responses()


def test_s3_request_without_a_policy_uses_the_default_settings_one(
    stubbed: tuple[Any, Stubber],
    waits: list[float],
    retry_log: list[logging.LogRecord],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller that passes no policy gets the default settings' S3 one (its sleep recorded
    here, its attempts and backoff as they are)."""
    from geozarr_pipeline import retries

    client, stubber = stubbed
    default = default_policies().s3
    assert default.attempts == Settings.model_fields["retry_s3_attempts"].default
    assert default.backoff_seconds == Settings.model_fields["retry_s3_backoff_seconds"].default
    recorded = replace(default_policies(), s3=replace(default, sleep=waits.append))
    monkeypatch.setattr(retries, "default_policies", lambda: recorded)
    stubber.add_client_error("get_object", service_error_code="SlowDown", http_status_code=503)
    stubber.add_response("get_object", {"Body": body(b"{}")})
    reply = s3_request("read", client.get_object, item_id=ITEM_ID, Bucket="bucket", Key="k")
    assert reply["Body"].read() == b"{}"
    stubber.assert_no_pending_responses()
    assert len(waits) == 1
    assert 0 <= waits[0] <= default.backoff_seconds
    assert_logged_retries(retry_log, "s3", 1)


def test_a_store_reader_on_s3_takes_the_s3_policy_of_its_settings(tmp_path: Any) -> None:
    settings = s3_settings(tmp_path, retry_s3_attempts=7, retry_s3_backoff_seconds=0.5)
    reader = S3Reader("bucket", "c/X.zarr", settings)
    assert reader.retry == RetryPolicies.from_settings(settings).s3
    assert reader.retry != default_policies().s3
    reader.close()


def s3_reader(tmp_path: Any, client: Any, policies: RetryPolicies) -> S3Reader:
    reader = S3Reader("bucket", "c/X.zarr", s3_settings(tmp_path), retry=policies.s3)
    reader.client.close()
    reader.client = client
    return reader


def test_a_store_listing_on_s3_is_retried_as_one_call(
    tmp_path: Any,
    stubbed: tuple[Any, Stubber],
    policies: RetryPolicies,
    waits: list[float],
    retry_log: list[logging.LogRecord],
) -> None:
    """Register walks a store without consolidated metadata by listing it: botocore makes one
    attempt, so the listing itself is under the S3 policy."""
    client, stubber = stubbed
    reader = s3_reader(tmp_path, client, policies)
    stubber.add_client_error("list_objects_v2", service_error_code="SlowDown", http_status_code=503)
    stubber.add_response(
        "list_objects_v2",
        {"CommonPrefixes": [{"Prefix": "c/X.zarr/b/"}, {"Prefix": "c/X.zarr/a/"}]},
    )
    assert reader.list_children("") == ["a", "b"]
    stubber.assert_no_pending_responses()
    assert len(waits) == 1
    assert_logged_retries(retry_log, "s3", 1, item_id=None)


def test_a_store_document_read_on_s3_is_retried_under_the_readers_policy(
    tmp_path: Any, stubbed: tuple[Any, Stubber], policies: RetryPolicies, waits: list[float]
) -> None:
    client, stubber = stubbed
    reader = s3_reader(tmp_path, client, policies)
    for _ in range(policies.s3.attempts):
        stubber.add_client_error("get_object", service_error_code="SlowDown", http_status_code=503)
    with pytest.raises(TransientError, match="SlowDown"):
        reader.read_json("zarr.json")
    stubber.assert_no_pending_responses()
    assert len(waits) == policies.s3.attempts - 1


# The S3 lease: conditional writes under the S3 policy ---------------------------------------

LOCK_KEY = f"geozarr/c/{ITEM_ID}.zarr.lock"


def s3_lease(client: Any, policies: RetryPolicies, seconds: float = 60.0) -> output_store._S3Lease:
    return output_store._S3Lease(
        client, "bucket", LOCK_KEY, seconds, retry=policies.s3, item_id=ITEM_ID
    )


def lock_body(owner: str, expires_at: float) -> StreamingBody:
    return body(json.dumps({"owner": owner, "expires_at": expires_at}).encode())


def put_lock(**condition: str) -> dict[str, Any]:
    return {"Bucket": "bucket", "Key": LOCK_KEY, "Body": ANY, **condition}


def conflict(stubber: Stubber, **condition: str) -> None:
    stubber.add_client_error(
        "put_object",
        service_error_code="PreconditionFailed",
        http_status_code=412,
        expected_params=put_lock(**condition),
    )


def test_a_retried_take_over_that_landed_is_still_ours(
    stubbed: tuple[Any, Stubber], policies: RetryPolicies, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If-Match on an expired lock: the first attempt was applied but its answer lost (a read
    timeout), the retry meets our own ETag (412), and the lock read back is ours: taken."""
    from botocore.exceptions import ReadTimeoutError

    client, stubber = stubbed
    lease = s3_lease(client, policies)
    conflict(stubber, IfNoneMatch="*")  # held (expired) by a delivery that died
    stubber.add_response(
        "get_object",
        {"Body": lock_body("dead", 0.0), "ETag": '"old"'},
        {"Bucket": "bucket", "Key": LOCK_KEY},
    )
    conflict(stubber, IfMatch='"old"')  # the retry of the take-over, after the timeout
    stubber.add_response("get_object", {"Body": lock_body(lease.owner, 1e12), "ETag": '"mine"'})

    stubbed_put = client.put_object
    puts: list[dict[str, Any]] = []

    def put_object(**kwargs: Any) -> Any:
        puts.append(kwargs)
        if kwargs.get("IfMatch") and len(puts) == 2:
            raise ReadTimeoutError(endpoint_url=f"https://s3/{LOCK_KEY}")
        return stubbed_put(**kwargs)

    monkeypatch.setattr(client, "put_object", put_object)
    monkeypatch.setattr(lease, "_renew", lambda: None)  # no heartbeat in this test
    lease.acquire()
    assert lease.etag == '"mine"'
    assert not lease.lost
    assert [p.get("IfMatch") for p in puts] == [None, '"old"', '"old"']
    stubber.assert_no_pending_responses()


def test_a_take_over_lost_to_another_delivery_is_in_progress(
    stubbed: tuple[Any, Stubber], policies: RetryPolicies
) -> None:
    client, stubber = stubbed
    lease = s3_lease(client, policies)
    conflict(stubber, IfNoneMatch="*")
    stubber.add_response("get_object", {"Body": lock_body("dead", 0.0), "ETag": '"old"'})
    conflict(stubber, IfMatch='"old"')
    stubber.add_response("get_object", {"Body": lock_body("other", 1e12), "ETag": '"theirs"'})
    with pytest.raises(InProgress, match="held by another delivery"):
        lease.acquire()
    stubber.assert_no_pending_responses()


class Heartbeats:
    """A stop event for the lease's heartbeat: `beats` periods pass at once, then it stops."""

    def __init__(self, beats: int) -> None:
        self.beats = beats
        self.waited: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waited.append(timeout)
        self.beats -= 1
        return self.beats < 0

    def set(self) -> None:
        self.beats = 0


def test_a_renewal_that_meets_a_transient_fault_is_retried_at_once(
    stubbed: tuple[Any, Stubber],
    policies: RetryPolicies,
    waits: list[float],
    retry_log: list[logging.LogRecord],
) -> None:
    """botocore makes one attempt: one 503 must not skip a whole renewal period."""
    client, stubber = stubbed
    lease = s3_lease(client, policies)
    lease.etag = '"e1"'
    lease._stop = Heartbeats(1)  # type: ignore[assignment]
    stubber.add_client_error(
        "put_object",
        service_error_code="SlowDown",
        http_status_code=503,
        expected_params=put_lock(IfMatch='"e1"'),
    )
    stubber.add_response("put_object", {"ETag": '"e2"'}, put_lock(IfMatch='"e1"'))
    lease._renew()  # one period, then stopped
    stubber.assert_no_pending_responses()
    assert (lease.etag, lease.lost) == ('"e2"', False)
    assert len(waits) == 1
    assert_logged_retries(retry_log, "s3", 1)


def test_a_retried_renewal_that_landed_keeps_the_lease(
    stubbed: tuple[Any, Stubber], policies: RetryPolicies
) -> None:
    client, stubber = stubbed
    lease = s3_lease(client, policies)
    lease.etag = '"e1"'
    stubber.add_client_error("put_object", service_error_code="InternalError", http_status_code=500)
    conflict(stubber, IfMatch='"e1"')
    stubber.add_response("get_object", {"Body": lock_body(lease.owner, 1e12), "ETag": '"e2"'})
    assert lease._renew_once()
    assert (lease.etag, lease.lost) == ('"e2"', False)
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize("holder", ["other", None], ids=["taken-over", "gone"])
def test_a_renewal_that_finds_the_lock_another_s_or_gone_loses_the_lease(
    holder: str | None, stubbed: tuple[Any, Stubber], policies: RetryPolicies
) -> None:
    client, stubber = stubbed
    lease = s3_lease(client, policies)
    lease.etag = '"e1"'
    conflict(stubber, IfMatch='"e1"')
    if holder is None:
        stubber.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
    else:
        stubber.add_response("get_object", {"Body": lock_body(holder, 1e12), "ETag": '"e9"'})
    assert not lease._renew_once()
    assert lease.lost
    with pytest.raises(InProgress, match="lost the lease"):
        lease.verify()
    stubber.assert_no_pending_responses()


def test_a_renewal_that_keeps_failing_waits_for_the_next_period(
    stubbed: tuple[Any, Stubber], policies: RetryPolicies
) -> None:
    client, stubber = stubbed
    lease = s3_lease(client, policies)
    lease.etag = '"e1"'
    for _ in range(policies.s3.attempts):
        stubber.add_client_error("put_object", service_error_code="SlowDown", http_status_code=503)
    assert lease._renew_once()
    assert (lease.etag, lease.lost) == ('"e1"', False)
    stubber.assert_no_pending_responses()


# The policy itself -------------------------------------------------------------------------


def test_policies_follow_the_settings() -> None:
    policies = RetryPolicies.from_settings(
        Settings(
            retry_source_attempts=5,
            retry_source_backoff_seconds=1.5,
            stac_api_retries=0,
            retry_backoff_cap_seconds=7.0,
        )
    )
    assert (policies.source.kind, policies.source.attempts) == ("source", 5)
    assert policies.source.backoff_seconds == 1.5
    assert policies.stac_api.attempts == 1
    assert {p.max_backoff_seconds for p in (policies.source, policies.s3, policies.token)} == {7.0}
    with pytest.raises(ValueError, match="at least one attempt"):
        RetryPolicy("s3", 0, 0.1, 1.0)


def test_only_classified_transient_errors_are_retried(waits: list[float]) -> None:
    """A raw exception (not classified by `faults`) is a bug, not a fault: raised at once."""
    policy = RetryPolicy("source", 3, 0.1, 1.0, sleep=waits.append)
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("bug")

    with pytest.raises(KeyError):
        policy.call(broken, item_id=None)
    assert calls == [1]
    assert waits == []


def test_backoff_is_jittered_exponential_and_capped() -> None:
    waits: list[float] = []
    policy = RetryPolicy("source", 8, 1.0, 5.0, sleep=waits.append)

    def down() -> None:
        raise TransientError("down")

    with pytest.raises(TransientError):
        policy.call(down, item_id=None)
    assert len(waits) == 7
    assert len(set(waits)) > 1, "jittered"
    for n, wait in enumerate(waits, start=1):
        assert 0 <= wait <= min(5.0, 2 ** (n - 1))

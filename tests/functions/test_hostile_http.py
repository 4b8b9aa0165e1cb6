"""Request framing only a real server sees: every function, as its image runs it (gunicorn
under functions-framework), answers an over-size or badly framed body, never drops it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from geozarr_local.processes import LOOPBACK, ManagedProcess, free_port, http_ready
from geozarr_local.stack import function_command
from geozarr_pipeline.events import MAX_EVENT_BYTES
from tests.functions.hostile import deep_json, local_env, raw_exchange

MODULES = ("geozarr_convert.main", "geozarr_register.main", "geozarr_augment.main")
ATTRIBUTES = (
    "ce-specversion: 1.0\r\nce-id: raw-1\r\nce-source: urn:test:raw\r\n"
    "ce-type: eopf.geozarr.convert.requested\r\n"
)


@pytest.fixture(scope="module", params=MODULES)
def function_port(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    module = str(request.param)
    tmp = tmp_path_factory.mktemp(module.split(".")[0])
    port = free_port()
    process = ManagedProcess(
        name=module,
        command=function_command(module, port),
        log_path=tmp / "fn.log",
        env=local_env(tmp),
    ).start()
    try:
        process.wait_ready(http_ready(f"http://{LOOPBACK}:{port}/"), timeout=60)
        yield port
    finally:
        process.stop()


def _head(extra: str) -> str:
    return f"POST / HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: application/json\r\n" + (
        ATTRIBUTES + extra + "\r\n"
    )


def test_a_body_declared_over_the_limit_is_413(function_port: int) -> None:
    size = MAX_EVENT_BYTES + 1
    # The head alone: the answer must come from the declared length, without the body.
    status, body = raw_exchange(function_port, _head(f"Content-Length: {size}\r\n"))
    assert status == 413
    assert body["error"] == "event_too_large"


def test_a_chunked_body_over_the_limit_is_413(function_port: int) -> None:
    chunk = b"x" * 65536
    # Just over the limit: little is left unread when the answer comes (no reset race).
    framed = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 4 + b"10\r\n" + b"y" * 16
    framed += b"\r\n0\r\n\r\n"
    status, body = raw_exchange(function_port, _head("Transfer-Encoding: chunked\r\n"), framed)
    assert status == 413
    assert body["error"] == "event_too_large"


@pytest.mark.parametrize(
    "framed",
    [b"zz\r\n{}\r\n0\r\n\r\n", b"5\r\n{}\r\n", b"-2\r\n{}\r\n0\r\n\r\n"],
    ids=["bad-size", "truncated", "negative-size"],
)
def test_a_badly_chunked_body_is_400(function_port: int, framed: bytes) -> None:
    status, body = raw_exchange(function_port, _head("Transfer-Encoding: chunked\r\n"), framed)
    assert status == 400, body
    assert body["error"] == "invalid_event"


def test_a_structured_event_100000_levels_deep_is_400(function_port: int, tmp_path: Path) -> None:
    envelope = (
        b'{"specversion":"1.0","id":"deep","source":"urn:test:raw",'
        b'"type":"eopf.geozarr.convert.requested","data":' + deep_json(100_000) + b"}"
    )
    head = (
        f"POST / HTTP/1.1\r\nHost: {LOOPBACK}\r\n"
        "Content-Type: application/cloudevents+json\r\n"
        f"Content-Length: {len(envelope)}\r\n\r\n"
    )
    status, body = raw_exchange(function_port, head, envelope)
    assert status == 400
    assert "nested" in str(body["message"])

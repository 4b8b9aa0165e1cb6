"""The dead-letter sink Service records what Knative dead-letters and lists it."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from geozarr_pipeline.local.processes import ManagedProcess, free_port, http_ready

CLI = str(Path(sys.executable).parent / "geozarr-pipeline")


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    state = tmp_path / "state"
    process = ManagedProcess(
        name="dead-letter-sink",
        command=[
            sys.executable,
            "-m",
            "geozarr_pipeline.dead_letter_sink",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--state-dir",
            str(state),
        ],
        log_path=tmp_path / "sink.log",
    ).start()
    try:
        process.wait_ready(http_ready(f"http://127.0.0.1:{port}/healthz"), timeout=30)
        yield f"http://127.0.0.1:{port}", state
    finally:
        process.stop()


def test_records_a_dead_lettered_event_and_lists_it(sink: tuple[str, Path]) -> None:
    url, state = sink
    error_body = json.dumps({"error": "invalid_input", "message": "collection: missing"})
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "run-1",
        "ce-source": "urn:test",
        "ce-type": "eopf.geozarr.convert.requested",
        "ce-subject": "S2A_TEST",
        "ce-knativeerrordest": "http://geozarr-convert.geozarr.svc.cluster.local",
        "ce-knativeerrorcode": "422",
        "ce-knativeerrordata": base64.b64encode(error_body.encode()).decode(),
        "content-type": "application/json",
    }
    data = {"source_url": "https://example.test/item", "collection": "c"}
    posted = httpx.post(url, headers=headers, content=json.dumps(data), trust_env=False)
    assert posted.status_code == 202

    listed = httpx.get(url, trust_env=False).json()
    assert len(listed) == 1
    record = listed[0]
    assert record["trigger"] == "geozarr-convert"
    assert record["last_status"] == 422
    assert "collection: missing" in record["response_body"]
    assert record["event"]["attributes"]["id"] == "run-1"
    assert record["event"]["data"] == data

    table = subprocess.run(
        [CLI, "dead-letters", "list", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "S2A_TEST" in table.stdout
    assert "422" in table.stdout


def test_refuses_what_is_not_a_cloudevent(sink: tuple[str, Path]) -> None:
    url, state = sink
    response = httpx.post(
        url, content=b"{}", headers={"content-type": "application/json"}, trust_env=False
    )
    assert response.status_code == 400
    assert "missing CloudEvent attribute" in response.json()["message"]
    assert httpx.get(url, trust_env=False).json() == []
    assert not list((state / "dead-letters").glob("*.json"))


def raw_post(url: str, headers: str, body: bytes = b"") -> tuple[int, dict[str, object]]:
    """POST with hand-written framing headers; the status and JSON answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST / HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def test_chunked_events_are_recorded_and_bad_framing_refused(sink: tuple[str, Path]) -> None:
    url, state = sink
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "chunked-1",
        "ce-source": "urn:test",
        "ce-type": "eopf.geozarr.convert.requested",
        "ce-knativeerrorcode": "503",
        "content-type": "application/json",
    }
    data = json.dumps({"source_url": "https://example.test/item", "collection": "c"}).encode()
    chunked = httpx.post(
        url, headers=headers, content=iter([data[:10], data[10:]]), trust_env=False
    )
    assert chunked.status_code == 202
    records = httpx.get(url, trust_env=False).json()
    assert [r["event"]["attributes"]["id"] for r in records] == ["chunked-1"]
    assert records[0]["event"]["data"] == json.loads(data)

    for framing in ("Content-Length: twelve", "Content-Length: -1", "Transfer-Encoding: chunked"):
        body = b"-5\r\n" if "chunked" in framing else b""
        status, answer = raw_post(url, framing + "\r\n", body)
        assert (status, answer["error"]) == (400, "bad_request"), framing
    status, answer = raw_post(url, f"Content-Length: {64 * 1024 * 1024}\r\n")
    assert (status, answer["error"]) == (413, "too_large")
    assert len(list((state / "dead-letters").glob("*.json"))) == 1

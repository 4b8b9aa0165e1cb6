"""Hostile events at the local broker's ingress, and through it to the real stages.

What is wrong with the request itself is answered at the ingress (400/413, never a dropped
connection) and never journaled or delivered; a well-formed event whose data is hostile is
accepted, and the stage's failure reply reaches a failure record naming the problem, with
nothing written for it.
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

import httpx
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from geozarr_local.stack import LocalStack
from geozarr_pipeline.events import MAX_ID_CHARS, EventType, Stage
from tests.functions.hostile import INPUT_TYPES, deep_json, envelope_cases, raw_exchange

MODES = ("binary", "structured")


def _journal_size(stack: LocalStack) -> int:
    return len(stack.events())


def test_requests_that_are_not_events_are_answered_at_the_ingress(
    local_stack: LocalStack,
) -> None:
    port = int(local_stack.broker_url.rsplit(":", 1)[1])
    before = _journal_size(local_stack)
    cases = [c for stage in Stage for c in envelope_cases(stage, local_stack.root / "geozarr")]
    for case in cases:
        response = httpx.post(
            local_stack.broker_url + "/", headers=case.headers, content=case.body, timeout=30
        )
        assert response.status_code == case.status, (case.name, response.text[:200])
        assert response.json()["error"] == case.code, case.name
        assert case.names in response.json()["message"], case.name
    head = (
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/cloudevents+json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    for framed in (b"zz\r\n{}\r\n0\r\n\r\n", b"-5\r\n{}\r\n0\r\n\r\n"):
        status, body = raw_exchange(port, head, framed)
        assert status == 400, body
    deep = deep_json(100_000)
    envelope = (
        b'{"specversion":"1.0","id":"x","source":"s","type":"'
        + EventType.CONVERT_REQUESTED.value.encode()
        + b'","data":'
        + deep
        + b"}"
    )
    plain = (
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/cloudevents+json\r\n"
        f"Content-Length: {len(envelope)}\r\n\r\n"
    )
    status, body = raw_exchange(port, plain, envelope)
    assert status == 400
    assert "nested" in str(body["message"])
    assert _journal_size(local_stack) == before, "nothing refused was journaled"


def _wait_failure(stack: LocalStack, event_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in stack.events(EventType.FAILED.value):
            data: dict[str, Any] = entry["event"]["data"]
            if data["input"]["id"] == event_id:
                return data
        time.sleep(0.3)
    raise AssertionError(f"no failure event for {event_id}")


def test_hostile_data_through_the_broker_ends_in_a_failure_record(
    local_stack: LocalStack,
) -> None:
    tag = uuid.uuid4().hex[:8]
    collection = "sentinel-2-l2a"
    store = local_stack.root / "geozarr" / collection
    hostile: dict[Stage, tuple[dict[str, Any], str]] = {
        Stage.CONVERT: (
            {"source_url": "https://x.test/i", "collection": collection, "item_id": "S" * 300},
            "item_id",
        ),
        Stage.REGISTER: (
            {
                "item_id": f"S2A_HOSTILE_{tag}",
                "collection": collection,
                "source_url": "https://x.test/i",
                "zarr_url": "https://x.test/i.zarr",
                "output_url": str(store / ".." / ".." / f"S2A_HOSTILE_{tag}.zarr"),
            },
            "output_url",
        ),
        Stage.AUGMENT: (
            {
                "item_id": "../../catalog",
                "collection": collection,
                "item_url": "https://x.test/i",
                "output_url": "/tmp/x.zarr",
            },
            "item_id",
        ),
    }
    sent: list[str] = []
    for (stage, (data, field)), mode in itertools.product(hostile.items(), MODES):
        event_id = f"hostile-{stage}-{mode}-{tag}"
        event = CloudEvent(
            {
                "type": INPUT_TYPES[stage].value,
                "source": "urn:test:hostile",
                "id": event_id,
                "subject": f"hostile-{tag}",
                "datacontenttype": "application/json",
            },
            data,
        )
        headers, body = to_binary(event) if mode == "binary" else to_structured(event)
        answer = httpx.post(local_stack.broker_url + "/", headers=headers, content=body)
        assert answer.status_code == 202, answer.text
        failure = _wait_failure(local_stack, event_id)
        assert failure["stage"] == stage.value
        assert failure["problem"]["code"] == "invalid_input"
        assert failure["problem"]["field"] == field
        assert failure["problem"]["retryable"] is False
        sent.append(event_id)
    deadline = time.monotonic() + 60
    while True:
        records = [p.read_text() for p in local_stack.failures_root.glob("*.json")]
        counts = {event_id: sum(f'"{event_id}"' in r for r in records) for event_id in sent}
        if all(counts.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert set(counts.values()) == {1}, counts
    written = [p for p in (local_stack.root / "geozarr").rglob(f"*HOSTILE_{tag}*")]
    assert [p for p in written if "_status" not in p.parts] == []
    assert not any(len(p.name) > MAX_ID_CHARS + 40 for p in local_stack.root.rglob("*"))

"""Every stage transition: one log line with the same fields, and one attempt record."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import flask
import pytest
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from geozarr_pipeline.attempts import AttemptJournal
from geozarr_pipeline.delivery import handle_request
from geozarr_pipeline.errors import SourceNotFound, TransientError
from geozarr_pipeline.events import ConvertDone, ConvertRequested, EventData, EventType, Stage
from geozarr_pipeline.objects import FolderObjectStore
from geozarr_pipeline.redaction import register_secrets

FIELDS = {"stage", "event_id", "event_type", "item_id", "collection", "outcome", "duration_s"}


def request_for(event: CloudEvent) -> flask.Request:
    headers, body = to_binary(event)
    app = flask.Flask(__name__)
    with app.test_request_context("/", method="POST", headers=headers, data=body):
        return flask.request._get_current_object()  # type: ignore[attr-defined,no-any-return]


def requested(event_id: str) -> CloudEvent:
    return CloudEvent(
        {
            "type": EventType.CONVERT_REQUESTED.value,
            "source": "urn:test",
            "id": event_id,
            "datacontenttype": "application/json",
        },
        {"source_url": "https://example.com/items/S2A_X", "collection": "c"},
    )


def converted(data: EventData) -> EventData:
    assert isinstance(data, ConvertRequested)
    return ConvertDone(
        item_id=data.resolved_item_id,
        collection=data.collection,
        source_url=data.source_url,
        zarr_url="https://example.com/x.zarr",
        output_url="s3://bucket/c/S2A_X.zarr",
    )


def missing(data: EventData) -> EventData:
    raise SourceNotFound("no item at https://example.com/items/S2A_X (Bearer abcdef123456)")


def unavailable(data: EventData) -> EventData:
    raise TransientError("source answered 503")


def crashing(data: EventData) -> EventData:
    raise RuntimeError("a bug")


@pytest.mark.parametrize(
    ("run", "outcome", "status"),
    [
        (converted, "done", 200),
        (missing, "failed", 200),
        (unavailable, "retry", 503),
        (crashing, "crashed", 500),
    ],
)
def test_each_transition_is_one_line_with_the_same_fields_and_one_attempt(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    run: object,
    outcome: str,
    status: int,
) -> None:
    journal = AttemptJournal(FolderObjectStore(tmp_path))
    event = requested(f"event-{outcome}")
    with caplog.at_level(logging.INFO, logger="geozarr_pipeline.delivery"):
        response = handle_request(request_for(event), Stage.CONVERT, run, lambda: journal)  # type: ignore[arg-type]

    assert response.status_code == status
    lines = [r for r in caplog.records if r.name == "geozarr_pipeline.delivery"]
    assert [r.__dict__["outcome"] for r in lines] == ["started", outcome]
    for line in lines:
        assert set(line.__dict__) >= FIELDS, FIELDS - set(line.__dict__)
        assert line.__dict__["item_id"] == "S2A_X"
        assert line.__dict__["event_id"] == event["id"]
    [attempt] = journal.attempts("c", "S2A_X")
    assert attempt.stage == Stage.CONVERT
    assert attempt.event_id == event["id"]
    assert attempt.outcome == outcome
    assert attempt.finished_at is not None
    assert attempt.duration_s is not None
    if outcome == "done":
        assert attempt.result == {
            "source_url": "https://example.com/items/S2A_X",
            "zarr_url": "https://example.com/x.zarr",
            "output_url": "s3://bucket/c/S2A_X.zarr",
        }
    else:
        assert attempt.problem is not None
        assert attempt.problem.retryable is (outcome != "failed")


def test_problem_text_is_redacted_in_reply_and_attempt(tmp_path: Path) -> None:
    register_secrets(["planted-secret-value-42"])

    def leaking(data: EventData) -> EventData:
        raise SourceNotFound("upstream said: token planted-secret-value-42 " + "x" * 5000)

    journal = AttemptJournal(FolderObjectStore(tmp_path))
    response = handle_request(
        request_for(requested("leak")), Stage.CONVERT, leaking, lambda: journal
    )
    reply = json.loads(response.get_data())
    message = reply["problem"]["message"]
    assert "planted-secret-value-42" not in message
    assert "[REDACTED]" in message
    assert len(message) < 700
    stored = "".join(p.read_text() for p in tmp_path.rglob("*.json"))
    assert "planted-secret-value-42" not in stored


def test_an_event_without_an_item_writes_no_attempt(tmp_path: Path) -> None:
    journal = AttemptJournal(FolderObjectStore(tmp_path))
    event = CloudEvent(
        {"type": EventType.CONVERT_DONE.value, "source": "urn:test", "id": "no-item"},
        {"unexpected": True},
    )
    response = handle_request(request_for(event), Stage.REGISTER, converted, lambda: journal)
    assert response.status_code == 200
    assert list(tmp_path.rglob("*.json")) == []


def test_an_unusable_status_root_costs_a_warning_not_the_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> AttemptJournal:
        raise ValueError("status root 'https://x' must be a folder or an s3:// URL")

    with caplog.at_level(logging.INFO, logger="geozarr_pipeline.delivery"):
        response = handle_request(
            request_for(requested("no-journal")), Stage.CONVERT, converted, broken
        )
    assert response.status_code == 200
    delivery = [r for r in caplog.records if r.name == "geozarr_pipeline.delivery"]
    outcomes = [r.__dict__.get("outcome") for r in delivery]
    assert outcomes[-1] == "done"
    assert any(r.getMessage() == "stage attempts not recorded" for r in caplog.records)

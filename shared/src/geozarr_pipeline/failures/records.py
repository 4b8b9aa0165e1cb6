"""A failure record from the event that reached the failure recorder.

Two kinds of event arrive:

- `eopf.geozarr.failed`, the reply of a stage whose input can never succeed: it names the
  stage, the item, the problem and carries the whole input event;
- a dead letter: the input event itself, sent by the Trigger dispatcher once its retries are
  exhausted (or its reply could not be published), with the `knativeerrordest` and
  `knativeerrorcode` extensions (and `knativeerrordata` for an unpublished reply), as
  eventing-rabbitmq pkg/dispatcher/dispatcher.go `dispatch` sets them (commit bd1ee997).

Record ids derive from the event's identity, so a redelivered failure is one record.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any, Literal

from cloudevents.http import CloudEvent
from pydantic import BaseModel, ConfigDict, ValidationError

from geozarr_pipeline.cloudevent_http import event_as_json, event_payload, utc_now
from geozarr_pipeline.errors import InvalidEvent, is_retryable_status
from geozarr_pipeline.events import (
    EventType,
    InputReference,
    Problem,
    StageFailed,
    is_safe_id,
    stage_for_input,
)

RECORD_FORMAT = "geozarr-pipeline/failure-record/1"
RECORD_NAMESPACE = uuid.UUID("0b8d2f4e-5c1a-4e7b-9d3f-6a2c8e1f4b70")
KNATIVE_ERROR_PREFIX = "knativeerror"
ERROR_DATA_CHARS = 1024

RecordKind = Literal["failure_event", "dead_letter"]


class FailureRecord(BaseModel):
    """One failure, with what it takes to understand it and to replay it."""

    model_config = ConfigDict(extra="forbid")

    format: str = RECORD_FORMAT
    record_id: str
    recorded_at: str
    kind: RecordKind
    stage: str | None
    item_id: str | None
    collection: str | None
    input: InputReference
    problem: Problem
    input_event: dict[str, Any]
    # The knativeerror* extensions of a dead letter, as received.
    knative: dict[str, str] = {}
    # id, source and type of the failure event (for kind failure_event).
    failure_event: dict[str, str] | None = None


def record_id_for(kind: RecordKind, *identity: str) -> str:
    return str(uuid.uuid5(RECORD_NAMESPACE, "\n".join((kind, *identity))))


def _string_attributes(event: CloudEvent) -> dict[str, str]:
    return {k: str(v) for k, v in event.get_attributes().items()}


def _knative_extensions(attributes: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in attributes.items() if k.startswith(KNATIVE_ERROR_PREFIX)}


def _decoded_error_data(value: str | None) -> str | None:
    """`knativeerrordata` is base64 in Knative's channel dispatchers, plain text here."""
    if not value:
        return None
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        text = value
    return text[:ERROR_DATA_CHARS]


def _record_from_failure(event: CloudEvent, attributes: dict[str, str]) -> FailureRecord | None:
    try:
        failure = StageFailed.model_validate(event_payload(event))
    except (InvalidEvent, ValidationError):
        return None
    return FailureRecord(
        record_id=record_id_for("failure_event", attributes["source"], attributes["id"]),
        recorded_at=utc_now(),
        kind="failure_event",
        stage=failure.stage.value,
        item_id=failure.item_id,
        collection=failure.collection,
        input=failure.input,
        problem=failure.problem,
        input_event=failure.input_event,
        knative=_knative_extensions(attributes),
        failure_event={k: attributes[k] for k in ("id", "source", "type")},
    )


def _dead_letter_problem(extensions: dict[str, str]) -> Problem:
    destination = extensions.get("knativeerrordest", "its subscriber")
    raw_code = extensions.get("knativeerrorcode")
    try:
        status: int | None = int(raw_code) if raw_code is not None else None
    except ValueError:
        status = None
    if status is not None and status <= 0:
        status = None
    error_data = _decoded_error_data(extensions.get("knativeerrordata"))
    if not extensions:
        return Problem(
            code="unrecognized_event",
            message="an event reached the failure recorder without failure or dead-letter "
            "attributes",
            retryable=False,
        )
    if status is not None and 200 <= status < 300:
        return Problem(
            code="reply_not_published",
            message=f"{destination} answered {status} but its reply could not be published"
            + (f": {error_data}" if error_data else ""),
            retryable=True,
            status=status,
        )
    last = f"last status {status}" if status is not None else "no HTTP answer (timeout or error)"
    return Problem(
        code="retries_exhausted",
        message=f"delivery to {destination} failed after its retries: {last}"
        + (f": {error_data}" if error_data else ""),
        retryable=status is None or is_retryable_status(status),
        status=status,
    )


def _record_from_dead_letter(event: CloudEvent, attributes: dict[str, str]) -> FailureRecord:
    extensions = _knative_extensions(attributes)
    original = event_as_json(event)
    original["attributes"] = {
        k: v for k, v in original["attributes"].items() if not k.startswith(KNATIVE_ERROR_PREFIX)
    }
    stage = stage_for_input(attributes["type"])
    payload: Any = None
    try:
        payload = event_payload(event)
    except InvalidEvent:
        payload = None
    fields = payload if isinstance(payload, dict) else {}
    # Only safe ids name an item (a hostile one stays in the input event).
    item_id = fields.get("item_id") if is_safe_id(fields.get("item_id")) else None
    collection = fields.get("collection") if is_safe_id(fields.get("collection")) else None
    subject = attributes.get("subject")
    return FailureRecord(
        record_id=record_id_for(
            "dead_letter",
            stage.value if stage else extensions.get("knativeerrordest", ""),
            attributes["source"],
            attributes["id"],
        ),
        recorded_at=utc_now(),
        kind="dead_letter",
        stage=stage.value if stage else None,
        item_id=item_id or (subject if is_safe_id(subject) else None),
        collection=collection,
        input=InputReference(
            id=attributes["id"],
            type=attributes["type"],
            source=attributes["source"],
            subject=attributes.get("subject"),
        ),
        problem=_dead_letter_problem(extensions),
        input_event=original,
        knative=extensions,
    )


def record_from_event(event: CloudEvent) -> FailureRecord:
    """The record of whatever reached the recorder; nothing that arrives is dropped."""
    attributes = _string_attributes(event)
    if attributes["type"] == EventType.FAILED.value:
        record = _record_from_failure(event, attributes)
        if record is not None:
            return record
    return _record_from_dead_letter(event, attributes)

"""CloudEvents over HTTP for the stage functions: parse, validate, run, reply.

One outcome per event: a stage answers every CloudEvent it receives with exactly one reply in
the HTTP response (binary mode), which the broker publishes:

- success: 200 and its "done" event;
- a permanent failure (invalid data, missing source, unsupported product, ...): 200 and an
  `eopf.geozarr.failed` event naming the stage, the item, the input event, the problem and
  carrying the whole input event. eventing-rabbitmq acks and drops every non-retried 4xx
  (pkg/dispatcher/dispatcher.go getStatus), so a failure must travel as a reply to reach the
  failure recorder;
- a transient fault: 5xx / 429 / 409 with a JSON problem body, so the Trigger retries it and
  dead-letters it to the failure recorder once retries are exhausted.

Only a request that is not a CloudEvent at all (no id/source/type, a structured body that is
not JSON) is answered 400: it cannot have come through a broker, which refuses it at ingress.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cloudevents.conversion import to_binary
from cloudevents.exceptions import GenericException as CloudEventsError
from cloudevents.http import CloudEvent, from_http
from pydantic import ValidationError

from geozarr_pipeline.errors import (
    InvalidEvent,
    InvalidInput,
    PermanentError,
    PipelineError,
    status_code_for,
)
from geozarr_pipeline.events import (
    INPUT_MODELS,
    EventData,
    EventType,
    InputReference,
    Problem,
    Stage,
    StageFailed,
    reply_id,
    validation_problems,
)

if TYPE_CHECKING:
    import flask

log = logging.getLogger(__name__)

StageRunner = Callable[[EventData], EventData]
REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type")


def parse_event(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """Parse a binary- or structured-mode CloudEvent, naming what is wrong if it is not one."""
    lowered = {k.lower(): v for k, v in headers.items()}
    content_type = lowered.get("content-type", "")
    if content_type.startswith("application/cloudevents+json"):
        try:
            envelope = json.loads(body or b"null")
        except ValueError as exc:
            raise InvalidEvent(f"structured event body is not valid JSON: {exc}") from exc
        if not isinstance(envelope, dict):
            raise InvalidEvent("structured event body must be a JSON object")
        missing = [a for a in REQUIRED_ATTRIBUTES if not envelope.get(a)]
    else:
        missing = [a for a in REQUIRED_ATTRIBUTES if not lowered.get(f"ce-{a}")]
    if missing:
        raise InvalidEvent(f"missing CloudEvent attribute(s): {', '.join(missing)}")
    try:
        return from_http(dict(headers), body)
    except CloudEventsError as exc:
        raise InvalidEvent(f"not a valid CloudEvent: {exc}") from exc


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_as_json(event: CloudEvent) -> dict[str, Any]:
    """An event as JSON: its attributes and its data (JSON if it is JSON, else text or base64)."""
    attributes = {k: str(v) for k, v in event.get_attributes().items()}
    data = event.data
    if isinstance(data, bytes | bytearray):
        try:
            return {"attributes": attributes, "data": json.loads(data)}
        except ValueError:
            try:
                return {"attributes": attributes, "data": bytes(data).decode("utf-8")}
            except UnicodeDecodeError:
                encoded = base64.b64encode(bytes(data)).decode("ascii")
                return {"attributes": attributes, "data_base64": encoded}
    return {"attributes": attributes, "data": data}


def event_from_json(record: Mapping[str, Any]) -> CloudEvent:
    """The inverse of event_as_json: the event a journal entry or failure record holds."""
    attributes = dict(record["attributes"])
    if "data_base64" in record:
        return CloudEvent(attributes, base64.b64decode(record["data_base64"]))
    return CloudEvent(attributes, record.get("data"))


def event_payload(event: CloudEvent) -> Any:
    """The event data as JSON, whether the SDK decoded it or left bytes/str."""
    data = event.data
    if isinstance(data, bytes | bytearray):
        data = data.decode("utf-8", errors="replace")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise InvalidEvent(f"event data is not valid JSON: {exc}") from exc
    if data is None:
        raise InvalidEvent("event has no data")
    return data


def decode_input(stage: Stage, event: CloudEvent) -> EventData:
    """Check the event type against the stage and validate its data into the input model."""
    event_type = event["type"]
    if event_type not in stage.accepts:
        accepted = ", ".join(sorted(stage.accepts))
        raise InvalidEvent(
            f"the {stage} stage does not handle events of type {event_type!r} "
            f"(accepted: {accepted})"
        )
    model = INPUT_MODELS[EventType(event_type)]
    try:
        return model.model_validate(event_payload(event))
    except ValidationError as exc:
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        raise InvalidInput(
            f"invalid {event_type} data: {validation_problems(exc)}",
            field=".".join(str(p) for p in first) or None,
        ) from exc


def build_reply(stage: Stage, incoming: CloudEvent, result: EventData) -> CloudEvent:
    subject = getattr(result, "item_id", None) or incoming.get("subject") or ""
    attributes: dict[str, str] = {
        "type": stage.replies_with.value,
        "source": stage.event_source,
        "id": reply_id(stage, incoming["source"], incoming["id"]),
        "subject": subject,
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, result.model_dump(mode="json"))


def _data_field(event: CloudEvent, name: str) -> str | None:
    """A string field of the event data, read leniently (the data may be what failed)."""
    try:
        payload = event_payload(event)
    except InvalidEvent:
        return None
    value = payload.get(name) if isinstance(payload, dict) else None
    return value if isinstance(value, str) else None


def build_failure(
    stage: Stage, incoming: CloudEvent, error: PermanentError, data: EventData | None = None
) -> CloudEvent:
    """The `eopf.geozarr.failed` reply of a permanent failure of `incoming`."""
    item_id = getattr(data, "item_id", None) or _data_field(incoming, "item_id")
    collection = getattr(data, "collection", None) or _data_field(incoming, "collection")
    subject = item_id or incoming.get("subject") or ""
    failure = StageFailed(
        stage=stage,
        item_id=item_id,
        collection=collection,
        input=InputReference(
            id=str(incoming["id"]),
            type=str(incoming["type"]),
            source=str(incoming["source"]),
            subject=incoming.get("subject"),
        ),
        problem=Problem(
            code=error.code,
            message=error.message,
            field=error.field,
            retryable=False,
            status=status_code_for(error),
        ),
        input_event=event_as_json(incoming),
        failed_at=utc_now(),
    )
    attributes: dict[str, str] = {
        "type": EventType.FAILED.value,
        "source": stage.event_source,
        "id": reply_id(stage, incoming["source"], incoming["id"], failed=True),
        "subject": subject,
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, failure.model_dump(mode="json"))


def _response(status: int, body: str | bytes, headers: Mapping[str, str]) -> flask.Response:
    # flask is imported on first use: the broker and the dead-letter sink only parse events.
    import flask

    return flask.Response(body, status=status, headers=dict(headers))


def _json_response(status: int, payload: Any) -> flask.Response:
    return _response(status, json.dumps(payload), {"Content-Type": "application/json"})


def error_response(error: PipelineError) -> flask.Response:
    status = status_code_for(error)
    return _json_response(status, error.to_body())


def handle_request(request: flask.Request, stage: Stage, run: StageRunner) -> flask.Response:
    """The whole life of one delivery: everything a stage entrypoint needs."""
    started = time.monotonic()
    event_id = request.headers.get("ce-id", "")
    try:
        event = parse_event(dict(request.headers), request.get_data())
    except InvalidEvent as exc:
        log.warning(
            "request refused",
            extra={"stage": stage.value, "event_id": event_id, "error": exc.message},
        )
        return error_response(exc)
    event_id = event["id"]
    data: EventData | None = None
    try:
        data = decode_input(stage, event)
        log.info(
            "event accepted",
            extra={"stage": stage.value, "event_id": event_id, "event_type": event["type"]},
        )
        reply = build_reply(stage, event, run(data))
    except PermanentError as exc:
        reply = build_failure(stage, event, exc, data)
        log.warning(
            "event failed",
            extra={
                "stage": stage.value,
                "event_id": event_id,
                "subject": reply["subject"],
                "problem": exc.code,
                "field": exc.field,
                "error": exc.message,
            },
        )
    except PipelineError as exc:
        log.warning(
            "event failed, retryable",
            extra={
                "stage": stage.value,
                "event_id": event_id,
                "status": status_code_for(exc),
                "error": exc.message,
            },
        )
        return error_response(exc)
    except Exception:
        log.exception("event crashed", extra={"stage": stage.value, "event_id": event_id})
        problem = {"error": "internal_error", "message": "unexpected failure; see the stage logs"}
        return _json_response(500, problem)
    headers, body = to_binary(reply)
    log.info(
        "event done",
        extra={
            "stage": stage.value,
            "event_id": event_id,
            "reply_type": reply["type"],
            "subject": reply["subject"],
            "elapsed_s": round(time.monotonic() - started, 3),
        },
    )
    return _response(200, body, headers)

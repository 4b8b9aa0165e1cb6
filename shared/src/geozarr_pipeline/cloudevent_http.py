"""CloudEvents over HTTP for the stage functions: parse, validate, run, reply.

A stage answers a successful event with its "done" CloudEvent in the HTTP response (binary
mode), which the broker publishes; errors become a JSON body with the status code from
`errors.STATUS_CODES`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cloudevents.conversion import to_binary
from cloudevents.exceptions import GenericException as CloudEventsError
from cloudevents.http import CloudEvent, from_http
from pydantic import ValidationError

from geozarr_pipeline.errors import InvalidEvent, InvalidInput, PipelineError, status_code_for
from geozarr_pipeline.events import (
    INPUT_MODELS,
    EventData,
    EventType,
    Stage,
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
        raise InvalidInput(f"invalid {event_type} data: {validation_problems(exc)}") from exc


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
        event_id = event["id"]
        data = decode_input(stage, event)
        log.info(
            "event accepted",
            extra={"stage": stage.value, "event_id": event_id, "event_type": event["type"]},
        )
        result = run(data)
        reply = build_reply(stage, event, result)
    except PipelineError as exc:
        log.warning(
            "event failed",
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

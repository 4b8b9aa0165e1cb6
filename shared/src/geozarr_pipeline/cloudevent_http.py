"""CloudEvents over HTTP for the stage functions: parse, validate, reply (`delivery` runs them).

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
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cloudevents.exceptions import GenericException as CloudEventsError
from cloudevents.http import CloudEvent, from_http
from pydantic import ValidationError

from geozarr_pipeline.errors import (
    EventTooLarge,
    InvalidEvent,
    InvalidInput,
    PermanentError,
    PipelineError,
    status_code_for,
)
from geozarr_pipeline.events import (
    INPUT_MODELS,
    MAX_DATA_BYTES,
    MAX_EVENT_BYTES,
    MAX_JSON_DEPTH,
    MAX_URL_CHARS,
    REQUIRED_ATTRIBUTES,
    EventData,
    EventType,
    InputReference,
    Problem,
    Stage,
    StageFailed,
    is_safe_id,
    json_depth,
    reply_id,
    validation_problems,
)
from geozarr_pipeline.redaction import quoted

if TYPE_CHECKING:
    import flask

# Set on a request whose body was refused unread: its answer closes the connection.
CLOSE_CONNECTION = "geozarr.close_connection"
# Attributes that name things (and end up in logs and records): bounded like URLs.
CORE_ATTRIBUTES = (*REQUIRED_ATTRIBUTES, "subject", "datacontenttype", "dataschema")


def parse_event(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """Parse a binary- or structured-mode CloudEvent, naming what is wrong if it is not one.

    Bounded before anything else looks at it: at most MAX_EVENT_BYTES, JSON nested at most
    MAX_JSON_DEPTH levels (a deeper document is refused, never parsed into a RecursionError).
    """
    if len(body) > MAX_EVENT_BYTES:
        raise EventTooLarge(
            f"the event is {len(body)} bytes; events are limited to {MAX_EVENT_BYTES}"
        )
    lowered = {k.lower(): v for k, v in headers.items()}
    content_type = lowered.get("content-type", "")
    if content_type.startswith("application/cloudevents+json"):
        envelope = _bounded_json(body, "structured event body")
        if not isinstance(envelope, dict):
            raise InvalidEvent("structured event body must be a JSON object")
        missing = [a for a in REQUIRED_ATTRIBUTES if not envelope.get(a)]
    else:
        missing = [a for a in REQUIRED_ATTRIBUTES if not lowered.get(f"ce-{a}")]
        if content_type.split(";")[0].strip().endswith("json") and body:
            _bounded_json(body, "event data", required=False)
    if missing:
        raise InvalidEvent(f"missing CloudEvent attribute(s): {', '.join(missing)}")
    try:
        event = from_http(dict(headers), body)
    except CloudEventsError as exc:
        raise InvalidEvent(f"not a valid CloudEvent: {quoted(str(exc), 200)}") from exc
    except RecursionError as exc:  # defence in depth: the depth check above comes first
        raise InvalidEvent(f"JSON nested too deeply (at most {MAX_JSON_DEPTH} levels)") from exc
    # The SDK decodes JSON whatever the content type says: bound what it decoded.
    if json_depth(event.data) > MAX_JSON_DEPTH:
        raise InvalidEvent(f"event data: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    for name in CORE_ATTRIBUTES:
        value = event.get(name)
        if value is not None and len(str(value)) > MAX_URL_CHARS:
            raise InvalidEvent(
                f"attribute {name} is {len(str(value))} characters; at most {MAX_URL_CHARS}"
            )
    return event


def _bounded_json(body: bytes | str, what: str, *, required: bool = True) -> Any:
    """`body` parsed, refused if it is not JSON (when required) or nests too deeply."""
    try:
        value = json.loads(body)
    except RecursionError as exc:
        raise InvalidEvent(
            f"{what}: JSON nested too deeply (at most {MAX_JSON_DEPTH} levels)"
        ) from exc
    except ValueError as exc:
        if not required:
            return None  # binary data that is not JSON: decode_input says so, per stage
        raise InvalidEvent(f"{what} is not valid JSON: {exc}") from exc
    if json_depth(value) > MAX_JSON_DEPTH:
        raise InvalidEvent(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


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
        data = _bounded_json(data, "event data")
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
    payload = event_payload(event)
    size = len(json.dumps(payload))
    if size > MAX_DATA_BYTES:
        raise InvalidInput(f"event data is {size} bytes; at most {MAX_DATA_BYTES}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        raise InvalidInput(
            f"invalid {event_type} data: {validation_problems(exc)}",
            field=".".join(str(p) for p in first)[:100] or None,
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


def data_field(event: CloudEvent, name: str) -> str | None:
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
    """The `eopf.geozarr.failed` reply of a permanent failure of `incoming`.

    It names the item only by ids that are safe: an invalid id names no item (the raw value
    stays in the input event it carries).
    """
    item_id, collection = (
        value if is_safe_id(value) else None for value in item_of(data, incoming)
    )
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
        problem=problem_of(error),
        input_event=recorded_input(incoming),
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


def recorded_input(event: CloudEvent) -> dict[str, Any]:
    """The input event as a failure carries it: whole (so it can be replayed) when its data
    fits MAX_DATA_BYTES, else its attributes and an excerpt of its data (no valid event is
    that large, so nothing replayable is cut)."""
    whole = event_as_json(event)
    size = len(json.dumps(whole))
    # The reply nests the input three levels deeper (envelope, data, input_event): keep it
    # within what the broker and the recorder accept.
    if size <= MAX_DATA_BYTES + 8 * 1024 and json_depth(whole) <= MAX_JSON_DEPTH - 3:
        return whole
    attributes = {k: quoted(v, 1024) for k, v in whole["attributes"].items()}
    excerpt = json.dumps(whole.get("data", whole.get("data_base64")))
    return {"attributes": attributes, "data_excerpt": quoted(excerpt), "data_bytes": size}


def response_of(status: int, body: str | bytes, headers: Mapping[str, str]) -> flask.Response:
    # flask is imported on first use: the broker and the dead-letter sink only parse events.
    import flask

    return flask.Response(body, status=status, headers=dict(headers))


def json_response(status: int, payload: Any) -> flask.Response:
    return response_of(status, json.dumps(payload), {"Content-Type": "application/json"})


def error_response(error: PipelineError) -> flask.Response:
    status = status_code_for(error)
    body = error.to_body()
    body["message"] = quoted(error.message)
    return json_response(status, body)


def problem_of(error: PipelineError) -> Problem:
    return Problem(
        code=error.code,
        message=quoted(error.message),
        field=error.field,
        retryable=error.retryable,
        status=status_code_for(error),
    )


def item_of(data: EventData | None, event: CloudEvent) -> tuple[str | None, str | None]:
    item_id = getattr(data, "item_id", None) or data_field(event, "item_id")
    collection = getattr(data, "collection", None) or data_field(event, "collection")
    return item_id, collection


def read_body(request: flask.Request) -> bytes:
    """The request body, at most MAX_EVENT_BYTES (what the broker ingress takes).

    Refused as a request that can never be delivered, not a fault of ours to retry: a body
    declared or found over the limit (413, never read whole) and one whose framing is broken
    (400). Either way the rest of the body is left unread and the answer asks to close the
    connection (gunicorn's own drain of an unread body is bounded): functions-framework
    drains every request after its handler
    (functions_framework 3.10.2 `__init__.py` `read_request`, through werkzeug 3.1.9
    `Request.get_data`, which returns `_cached_data` when set), so the refused body is
    marked read instead of being drained into memory.
    """
    declared = request.content_length
    try:
        if declared is not None and declared > MAX_EVENT_BYTES:
            raise EventTooLarge(f"events are limited to {MAX_EVENT_BYTES} bytes ({declared} sent)")
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_EVENT_BYTES:
            chunk = request.stream.read(MAX_EVENT_BYTES + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > MAX_EVENT_BYTES:
            raise EventTooLarge(f"events are limited to {MAX_EVENT_BYTES} bytes")
    except EventTooLarge:
        _refused_body(request)
        raise
    except Exception as exc:  # the server's framing errors (gunicorn's
        # ParseException, werkzeug's ClientDisconnected, ...) have no common base
        _refused_body(request)
        raise InvalidEvent(f"the request body cannot be read: {type(exc).__name__}") from exc
    body = b"".join(chunks)
    request._cached_data = body  # see above
    return body


def _refused_body(request: flask.Request) -> None:
    request._cached_data = b""  # never drained: see read_body
    request.environ[CLOSE_CONNECTION] = True

"""The event contract: types, payload models and deterministic reply identities."""

from __future__ import annotations

import re
import uuid
from enum import StrEnum
from typing import Annotated, Any, TypeGuard
from urllib.parse import urlparse

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

SPEC_VERSION = "1.0"
# Every CloudEvent must carry these (CloudEvents 1.0).
REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type")
# The RabbitMQ exchange users publish items on (knative/base/source.yaml binds its queue).
GEOZARR_EXCHANGE = "geozarr"
SOURCE_PREFIX = "urn:eopf-geozarr"
REPLY_NAMESPACE = uuid.UUID("6f1c3c86-9a55-4d0b-8f7e-2f3d1f0c7b21")


class EventType(StrEnum):
    CONVERT_REQUESTED = "eopf.geozarr.convert.requested"
    CONVERT_DONE = "eopf.geozarr.convert.done"
    REGISTER_DONE = "eopf.geozarr.register.done"
    AUGMENT_DONE = "eopf.geozarr.augment.done"
    # The one reply of a stage whose input can never succeed; routed to the failure recorder.
    FAILED = "eopf.geozarr.failed"
    # What a RabbitmqSource emits for a message published without ce-* headers.
    RABBITMQ_MESSAGE = "dev.knative.rabbitmq.event"


class Stage(StrEnum):
    CONVERT = "convert"
    REGISTER = "register"
    AUGMENT = "augment"

    @property
    def accepts(self) -> frozenset[EventType]:
        return STAGE_INPUTS[self]

    @property
    def replies_with(self) -> EventType:
        return STAGE_OUTPUTS[self]

    @property
    def event_source(self) -> str:
        return f"{SOURCE_PREFIX}:{self.value}"


STAGE_INPUTS: dict[Stage, frozenset[EventType]] = {
    Stage.CONVERT: frozenset({EventType.CONVERT_REQUESTED, EventType.RABBITMQ_MESSAGE}),
    Stage.REGISTER: frozenset({EventType.CONVERT_DONE}),
    Stage.AUGMENT: frozenset({EventType.REGISTER_DONE}),
}
STAGE_OUTPUTS: dict[Stage, EventType] = {
    Stage.CONVERT: EventType.CONVERT_DONE,
    Stage.REGISTER: EventType.REGISTER_DONE,
    Stage.AUGMENT: EventType.AUGMENT_DONE,
}

# Ids become file and object names: the longest name derived from one is the convert
# marker's temporary file `.{id}.zarr.done.json.{8 random}.tmp` (id + 29 characters, see
# files.write_atomic), which must stay under the 255-byte NAME_MAX of the filesystems and
# object stores we write to.
MAX_ID_CHARS = 200
# URLs of the event data; a longer one is refused before any fetch (servers cap near 8 KiB).
MAX_URL_CHARS = 2048
# Nesting of any JSON an event carries (envelope and data); ours is 3 levels deep.
MAX_JSON_DEPTH = 32
# Request bodies: the broker ingress and every function refuse a larger event (413). An
# event of ours is about 1 KB; a failure reply carries its input event, so stays well below.
MAX_EVENT_BYTES = 256 * 1024
# The data of a valid event, and the most of an input event a failure reply carries whole.
MAX_DATA_BYTES = 64 * 1024

_SAFE_ID = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_ID_CHARS - 1}}}$")


def check_safe_id(value: str) -> str:
    """Item and collection ids become path segments: refuse anything that could escape."""
    if len(value) > MAX_ID_CHARS:
        raise ValueError(f"identifier of {len(value)} characters: at most {MAX_ID_CHARS}")
    if not _SAFE_ID.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{quoted_value(value)} is not a safe identifier (letters, digits, '.', '_', '-'; "
            "no slashes, no '..', not empty)"
        )
    return value


def is_safe_id(value: object) -> TypeGuard[str]:
    """Whether `value` is an id that `check_safe_id` accepts."""
    if not isinstance(value, str):
        return False
    try:
        check_safe_id(value)
    except ValueError:
        return False
    return True


def quoted_value(value: str, limit: int = 80) -> str:
    """`repr(value)`, redacted, then cut to `limit` characters: an answer never echoes a
    whole input (redacted first, so that a cut cannot split a credential out of reach)."""
    from geozarr_pipeline.redaction import redact

    text = redact(repr(value))
    return text if len(text) <= limit else f"{text[:limit]}... ({len(value)} characters)"


def check_url_text(value: str) -> str:
    """A URL of the event data: no spaces or control characters (no NUL, no CR/LF)."""
    if any(ord(c) <= 32 or ord(c) == 127 for c in value):
        raise ValueError("spaces and control characters are not allowed in URLs")
    return value


def json_depth(value: Any) -> int:
    """How deeply `value` nests lists and objects (iterative: no recursion limit to hit)."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest  # deep enough to refuse; no need to walk the rest
        pending.extend((child, depth + 1) for child in children)
    return deepest


SafeId = Annotated[str, AfterValidator(check_safe_id)]
Url = Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS), AfterValidator(check_url_text)]


def item_id_from_url(url: str) -> str:
    """The last path segment of a STAC item or Zarr URL, without a .zarr suffix."""
    path = urlparse(url).path.rstrip("/")
    name = path.rsplit("/", 1)[-1]
    return name.removesuffix(".zarr")


def validation_problems(error: ValidationError, root: str = "data", limit: int = 5) -> str:
    """`field.path: message; ...` for the first `limit` problems of a failed validation.

    Field names come from the input (an unknown key is a problem), so each is cut short.
    """
    problems = error.errors()
    named = [
        f"{'.'.join(_short(str(p)) for p in problem['loc']) or root}: {problem['msg']}"
        for problem in problems[:limit]
    ]
    if len(problems) > limit:
        named.append(f"... {len(problems) - limit} more")
    return "; ".join(named)


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


class EventData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class ConversionOptions(EventData):
    """Per-event overrides of the conversion settings; None means the configured default."""

    spatial_chunk: int | None = Field(default=None, ge=64, le=8192)
    enable_sharding: bool | None = None
    keep_scale_offset: bool | None = None
    shard_size: int | None = Field(default=None, ge=64, le=32768)
    force: bool = False


class ConvertRequested(EventData):
    """Start of a run: the same body operators publish on the `geozarr` exchange."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    source_url: Url
    item_id: SafeId | None = None
    collection: SafeId
    options: ConversionOptions = Field(default_factory=ConversionOptions)

    @model_validator(mode="after")
    def _derive_item_id(self) -> ConvertRequested:
        if self.item_id is None:
            derived = item_id_from_url(self.source_url)
            try:
                check_safe_id(derived)
            except ValueError as exc:
                raise ValueError(f"item_id is missing and cannot be derived: {exc}") from exc
            object.__setattr__(self, "item_id", derived)
        return self

    @property
    def resolved_item_id(self) -> str:
        assert self.item_id is not None
        return self.item_id


class ConvertDone(EventData):
    item_id: SafeId
    collection: SafeId
    source_url: Url
    source_item_url: Url | None = None
    zarr_url: Url = Field(description="The source product's Zarr URL")
    output_url: Url = Field(description="Where the GeoZarr store was written")


class RegisterDone(EventData):
    item_id: SafeId
    collection: SafeId
    item_url: Url
    output_url: Url


class AugmentDone(EventData):
    item_id: SafeId
    collection: SafeId
    item_url: Url
    viewer_url: Url | None = None


class Problem(EventData):
    """What went wrong, in terms a person and a script can both act on."""

    code: str = Field(description="Stable name of the problem, e.g. invalid_input")
    message: str
    field: str | None = Field(default=None, description="The offending field of the input")
    retryable: bool = Field(description="Whether the same input could succeed later")
    status: int | None = Field(default=None, description="HTTP status behind the problem")


class InputReference(EventData):
    """The identity of the input event a failure belongs to."""

    id: str
    type: str
    source: str
    subject: str | None = None


class StageFailed(EventData):
    """The reply of a stage whose input can never succeed (type eopf.geozarr.failed).

    `input_event` is the whole input event ({"attributes": ..., "data": ...}), so that the
    failure record can replay it.
    """

    stage: Stage
    item_id: str | None = None
    collection: str | None = None
    input: InputReference
    problem: Problem
    input_event: dict[str, Any]
    failed_at: str


INPUT_MODELS: dict[EventType, type[EventData]] = {
    EventType.CONVERT_REQUESTED: ConvertRequested,
    EventType.RABBITMQ_MESSAGE: ConvertRequested,
    EventType.CONVERT_DONE: ConvertDone,
    EventType.REGISTER_DONE: RegisterDone,
}


def reply_id(stage: Stage, input_source: str, input_id: str, *, failed: bool = False) -> str:
    """A reply id derived from the input event, so a redelivery yields the same reply id.

    A failure reply gets an id of its own: the same input may fail now and succeed after a
    fix, and the two replies are different events.
    """
    kind = f"{stage.value}:failed" if failed else stage.value
    return str(uuid.uuid5(REPLY_NAMESPACE, f"{kind}\n{input_source}\n{input_id}"))


def stage_for_input(event_type: str) -> Stage | None:
    """The stage whose Trigger takes events of this type, if any."""
    for stage, accepted in STAGE_INPUTS.items():
        if event_type in accepted:
            return stage
    return None

"""The event contract: types, payload models and deterministic reply identities."""

from __future__ import annotations

import re
import uuid
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlparse

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

SPEC_VERSION = "1.0"
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

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


def check_safe_id(value: str) -> str:
    """Item and collection ids become path segments: refuse anything that could escape."""
    if not _SAFE_ID.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not a safe identifier (letters, digits, '.', '_', '-'; "
            "no slashes, no '..', not empty)"
        )
    return value


SafeId = Annotated[str, AfterValidator(check_safe_id)]


def item_id_from_url(url: str) -> str:
    """The last path segment of a STAC item or Zarr URL, without a .zarr suffix."""
    path = urlparse(url).path.rstrip("/")
    name = path.rsplit("/", 1)[-1]
    return name.removesuffix(".zarr")


def validation_problems(error: ValidationError, root: str = "data") -> str:
    """`field.path: message; ...` for every problem of a failed model validation."""
    return "; ".join(
        f"{'.'.join(str(p) for p in problem['loc']) or root}: {problem['msg']}"
        for problem in error.errors()
    )


class EventData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConversionOptions(EventData):
    """Per-event overrides of the conversion settings; None means the configured default."""

    spatial_chunk: int | None = Field(default=None, ge=64, le=8192)
    enable_sharding: bool | None = None
    keep_scale_offset: bool | None = None
    force: bool = False


class ConvertRequested(EventData):
    """Start of a run: the same body operators publish on the `geozarr` exchange."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    source_url: str = Field(min_length=1)
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
    source_url: str
    source_item_url: str | None = None
    zarr_url: str = Field(description="The source product's Zarr URL")
    output_url: str = Field(description="Where the GeoZarr store was written")


class RegisterDone(EventData):
    item_id: SafeId
    collection: SafeId
    item_url: str
    output_url: str


class AugmentDone(EventData):
    item_id: SafeId
    collection: SafeId
    item_url: str
    viewer_url: str | None = None


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

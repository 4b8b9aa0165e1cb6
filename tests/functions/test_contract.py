"""The CloudEvent contract of every stage function, through real HTTP on the local stack."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent

from geozarr_local.stack import LocalStack
from geozarr_pipeline.events import (
    AugmentDone,
    ConvertDone,
    EventData,
    EventType,
    RegisterDone,
    Stage,
    StageFailed,
)
from tests.fixtures.stack import ChainRun

STAGE_CASES = {
    Stage.CONVERT: ("geozarr-convert", EventType.CONVERT_REQUESTED, "requested", ConvertDone),
    Stage.REGISTER: ("geozarr-register", EventType.CONVERT_DONE, "convert_done", RegisterDone),
    Stage.AUGMENT: ("geozarr-augment", EventType.REGISTER_DONE, "register_done", AugmentDone),
}


def make_event(event_type: str, data: Any, event_id: str | None = None) -> CloudEvent:
    return CloudEvent(
        {
            "type": event_type,
            "source": "urn:test:contract",
            "id": event_id or str(uuid.uuid4()),
            "datacontenttype": "application/json",
        },
        data,
    )


def post(url: str, event: CloudEvent, mode: str) -> httpx.Response:
    headers, body = to_binary(event) if mode == "binary" else to_structured(event)
    return httpx.post(url, headers=headers, content=body, timeout=300)


def output_snapshot(stack: LocalStack) -> dict[str, int]:
    """Every file the stages write (stores, catalog) with its modification time."""
    snapshot: dict[str, int] = {}
    for folder in ("geozarr", "catalog"):
        base = stack.root / folder
        if base.exists():
            for path in base.rglob("*"):
                if path.is_file():
                    snapshot[str(path.relative_to(stack.root))] = path.stat().st_mtime_ns
    return snapshot


@pytest.mark.parametrize("mode", ["binary", "structured"])
@pytest.mark.parametrize("stage", list(STAGE_CASES), ids=lambda s: s.value)
def test_stage_replies_with_its_done_event(
    local_stack: LocalStack, chain_run: ChainRun, stage: Stage, mode: str
) -> None:
    service, input_type, input_field, reply_model = STAGE_CASES[stage]
    data = getattr(chain_run, input_field)
    event = make_event(input_type.value, data)

    first = post(local_stack.urls[service], event, mode)
    assert first.status_code == 200, first.text
    assert first.headers["ce-type"] == stage.replies_with.value
    assert first.headers["ce-source"] == stage.event_source
    assert first.headers["ce-subject"] == chain_run.sample.item_id
    reply: EventData = reply_model.model_validate_json(first.content)
    assert reply.item_id == chain_run.sample.item_id  # type: ignore[attr-defined]

    again = post(local_stack.urls[service], event, mode)
    assert again.status_code == 200, again.text
    assert again.headers["ce-id"] == first.headers["ce-id"]
    assert json.loads(again.content) == json.loads(first.content)

    other = post(local_stack.urls[service], make_event(input_type.value, data), mode)
    assert other.status_code == 200, other.text
    assert other.headers["ce-id"] != first.headers["ce-id"]


def test_the_chain_reaches_augment_done_with_a_viewer(chain_run: ChainRun) -> None:
    assert chain_run.convert_done["output_url"]
    assert chain_run.register_done["item_url"]
    assert chain_run.augment_done["item_id"] == chain_run.sample.item_id
    assert chain_run.augment_done["viewer_url"]


NOT_CLOUDEVENTS = {
    "missing id": (
        {
            "ce-specversion": "1.0",
            "ce-type": EventType.CONVERT_REQUESTED.value,
            "ce-source": "urn:test",
            "content-type": "application/json",
        },
        b'{"source_url": "https://example.com/x", "collection": "c"}',
        "id",
    ),
    "structured bad JSON": (
        {"content-type": "application/cloudevents+json"},
        b"{not json",
        "JSON",
    ),
}

# CloudEvents whose data can never succeed: one failure reply, 200, so a broker carries it.
UNUSABLE = {
    "bad JSON": (
        {
            "ce-specversion": "1.0",
            "ce-type": EventType.CONVERT_REQUESTED.value,
            "ce-source": "urn:test",
            "ce-id": "1",
            "content-type": "application/json",
        },
        b'{"source_url": ',
        "invalid_event",
        None,
        "JSON",
    ),
    "data failing validation": (
        {
            "ce-specversion": "1.0",
            "ce-type": EventType.CONVERT_REQUESTED.value,
            "ce-source": "urn:test",
            "ce-id": "2",
            "content-type": "application/json",
        },
        b'{"source_url": "https://example.com/items/x", "collection": "../etc"}',
        "invalid_input",
        "collection",
        "collection",
    ),
}


@pytest.mark.parametrize("case", list(NOT_CLOUDEVENTS))
@pytest.mark.parametrize("stage", list(STAGE_CASES), ids=lambda s: s.value)
def test_requests_that_are_not_cloudevents_get_400_and_write_nothing(
    local_stack: LocalStack, chain_run: ChainRun, stage: Stage, case: str
) -> None:
    service = STAGE_CASES[stage][0]
    headers, body, named = NOT_CLOUDEVENTS[case]
    if stage is not Stage.CONVERT and "ce-type" in headers:
        headers = {**headers, "ce-type": STAGE_CASES[stage][1].value}
    before = output_snapshot(local_stack)
    response = httpx.post(local_stack.urls[service], headers=headers, content=body, timeout=60)
    assert response.status_code == 400, response.text
    assert named in response.json()["message"]
    assert output_snapshot(local_stack) == before


def assert_failure_reply(
    response: httpx.Response, stage: Stage, code: str, field: str | None, named: str
) -> StageFailed:
    assert response.status_code == 200, response.text
    assert response.headers["ce-type"] == EventType.FAILED.value
    assert response.headers["ce-source"] == stage.event_source
    failure = StageFailed.model_validate_json(response.content)
    assert failure.stage is stage
    assert failure.problem.code == code
    assert failure.problem.field == field
    assert failure.problem.retryable is False
    assert named in failure.problem.message
    return failure


# A structured envelope cannot carry data that is not JSON: that case is binary only.
UNUSABLE_MODES = [
    (case, mode)
    for case in UNUSABLE
    for mode in ("binary", "structured")
    if not (case == "bad JSON" and mode == "structured")
]


@pytest.mark.parametrize(("case", "mode"), UNUSABLE_MODES)
@pytest.mark.parametrize("stage", list(STAGE_CASES), ids=lambda s: s.value)
def test_unusable_events_get_one_failure_reply_and_write_nothing(
    local_stack: LocalStack, chain_run: ChainRun, stage: Stage, case: str, mode: str
) -> None:
    service = STAGE_CASES[stage][0]
    headers, body, code, field, named = UNUSABLE[case]
    if stage is not Stage.CONVERT:
        headers = {**headers, "ce-type": STAGE_CASES[stage][1].value}
        # The other stages' inputs name item_id first: it is the first offending field.
        field = "item_id" if field else None
    if mode == "structured":
        attributes = {k.removeprefix("ce-"): v for k, v in headers.items() if k.startswith("ce-")}
        envelope = {**attributes, "datacontenttype": "application/json"}
        body = json.dumps({**envelope, "data": json.loads(body)}).encode()
        headers = {"content-type": "application/cloudevents+json"}
    before = output_snapshot(local_stack)
    response = httpx.post(local_stack.urls[service], headers=headers, content=body, timeout=60)
    failure = assert_failure_reply(response, stage, code, field, named)
    assert failure.input.id == (headers.get("ce-id") or json.loads(body)["id"])
    again = httpx.post(local_stack.urls[service], headers=headers, content=body, timeout=60)
    assert again.headers["ce-id"] == response.headers["ce-id"]
    assert output_snapshot(local_stack) == before


@pytest.mark.parametrize("stage", list(STAGE_CASES), ids=lambda s: s.value)
def test_an_event_of_another_stage_gets_a_failure_reply(
    local_stack: LocalStack, chain_run: ChainRun, stage: Stage
) -> None:
    service = STAGE_CASES[stage][0]
    wrong = EventType.AUGMENT_DONE.value
    response = post(local_stack.urls[service], make_event(wrong, {"x": 1}), "binary")
    failure = assert_failure_reply(response, stage, "invalid_event", None, wrong)
    assert failure.input.type == wrong
    assert failure.input_event["data"] == {"x": 1}

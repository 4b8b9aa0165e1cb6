"""The contract on its own, in-process: the error tree and its statuses, the event models and
their bounds, and the CloudEvent parsing and replies of `cloudevent_http`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from pydantic import ValidationError

from geozarr_pipeline.cloudevent_http import (
    build_failure,
    build_reply,
    decode_input,
    parse_event,
    recorded_input,
)
from geozarr_pipeline.errors import (
    ERROR_NAMES,
    STATUS_CODES,
    EventTooLarge,
    InProgress,
    InvalidEvent,
    InvalidInput,
    PipelineError,
    RateLimited,
    SourceNotFound,
    TransientError,
    status_code_for,
)
from geozarr_pipeline.events import (
    MAX_DATA_BYTES,
    MAX_ID_CHARS,
    MAX_JSON_DEPTH,
    MAX_URL_CHARS,
    ConvertDone,
    ConvertRequested,
    EventType,
    Stage,
    StageFailed,
    check_safe_id,
    is_safe_id,
    json_depth,
    reply_id,
    validation_problems,
)

# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "retryable"),
    [
        (InvalidEvent("x"), 400, False),
        (EventTooLarge("x"), 413, False),
        (InvalidInput("x"), 422, False),
        (SourceNotFound("x"), 422, False),
        (TransientError("x"), 503, True),
        (RateLimited("x"), 429, True),
        (InProgress("x"), 409, True),
        (PipelineError("x"), 500, True),
    ],
)
def test_each_error_has_its_status_and_retry(
    error: PipelineError, status: int, retryable: bool
) -> None:
    assert status_code_for(error) == status
    assert error.retryable is retryable


def test_error_names_are_stable_snake_case_and_bodies_carry_the_field() -> None:
    assert set(ERROR_NAMES) == set(STATUS_CODES)
    assert ERROR_NAMES[EventTooLarge] == "event_too_large"
    assert InvalidInput("bad", field="item_id").to_body() == {
        "error": "invalid_input",
        "message": "bad",
        "field": "item_id",
    }


# -- event models and bounds -------------------------------------------------------------------


def test_ids_are_bounded_and_never_escape() -> None:
    assert check_safe_id("S" * MAX_ID_CHARS)
    for bad in ("S" * (MAX_ID_CHARS + 1), "..", "a..b", ".hidden", "a/b", "", "a b", "é"):
        assert not is_safe_id(bad), bad
        with pytest.raises(ValueError, match="identifier"):
            check_safe_id(bad)


def test_urls_are_bounded_and_free_of_control_characters() -> None:
    base = {"collection": "c", "item_id": "S2A_X"}
    ConvertRequested(source_url="https://h/" + "a" * (MAX_URL_CHARS - 10), **base)
    for url in ("https://h/" + "a" * MAX_URL_CHARS, "https://h/\x00", "https://h/a\r\nb", ""):
        with pytest.raises(ValidationError):
            ConvertRequested(source_url=url, **base)


def test_item_id_derives_from_the_url_or_is_refused() -> None:
    request = ConvertRequested(source_url="https://h/items/S2A_X.zarr/", collection="c")
    assert request.resolved_item_id == "S2A_X"
    with pytest.raises(ValidationError, match="cannot be derived"):
        ConvertRequested(source_url="https://h/items/..", collection="c")


def test_json_depth_counts_without_recursion() -> None:
    assert json_depth("leaf") == 0
    assert json_depth({"a": [1, {"b": []}]}) == 4
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    assert json_depth(deep) > MAX_JSON_DEPTH  # stops early, never hits the recursion limit


def test_validation_problems_are_cut_and_capped() -> None:
    with pytest.raises(ValidationError) as caught:
        ConvertDone.model_validate({("k" * 500 + str(n)): 1 for n in range(20)})
    text = validation_problems(caught.value)
    assert "more" in text
    assert len(text) < 1500


def test_reply_ids_follow_the_input_and_differ_for_failures() -> None:
    done = reply_id(Stage.CONVERT, "urn:s", "id-1")
    assert done == reply_id(Stage.CONVERT, "urn:s", "id-1")
    assert done != reply_id(Stage.CONVERT, "urn:s", "id-2")
    assert done != reply_id(Stage.CONVERT, "urn:s", "id-1", failed=True)
    assert done != reply_id(Stage.REGISTER, "urn:s", "id-1")


# -- CloudEvents over HTTP --------------------------------------------------------------------

DONE = {
    "item_id": "S2A_X",
    "collection": "c",
    "source_url": "https://h/i",
    "zarr_url": "https://h/i.zarr",
    "output_url": "/o/c/S2A_X.zarr",
}


def _event(data: Any, event_type: str = EventType.CONVERT_DONE.value) -> CloudEvent:
    return CloudEvent(
        {
            "type": event_type,
            "source": "urn:test",
            "id": "e-1",
            "datacontenttype": "application/json",
        },
        data,
    )


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_an_event_parses_in_both_modes_and_decodes_to_the_stage_model(mode: str) -> None:
    headers, body = (to_binary if mode == "binary" else to_structured)(_event(DONE))
    event = parse_event({k: str(v) for k, v in headers.items()}, body or b"")
    assert event["id"] == "e-1"
    assert decode_input(Stage.REGISTER, event) == ConvertDone(**DONE)
    with pytest.raises(InvalidEvent, match="does not handle"):
        decode_input(Stage.AUGMENT, event)


def test_what_is_not_an_event_is_named() -> None:
    with pytest.raises(InvalidEvent, match="id, source, type"):
        parse_event({"ce-specversion": "1.0", "content-type": "application/json"}, b"{}")
    with pytest.raises(EventTooLarge):
        parse_event({}, b" " * (300 * 1024))
    structured = {"content-type": "application/cloudevents+json"}
    with pytest.raises(InvalidEvent, match="not valid JSON"):
        parse_event(structured, b"{nope")
    with pytest.raises(InvalidEvent, match="nested"):
        parse_event(structured, b"[" * 100_000 + b"]" * 100_000)
    long_id = json.dumps(
        {"specversion": "1.0", "id": "i" * (MAX_URL_CHARS + 1), "source": "s", "type": "t"}
    )
    with pytest.raises(InvalidEvent, match="attribute id"):
        parse_event(structured, long_id.encode())


def test_a_reply_keeps_the_item_as_subject() -> None:
    incoming = _event(DONE)
    reply = build_reply(Stage.REGISTER, incoming, ConvertDone(**DONE))
    assert reply["subject"] == "S2A_X"
    assert reply["id"] == reply_id(Stage.REGISTER, "urn:test", "e-1")


def test_a_failure_names_no_item_by_an_unsafe_id_and_keeps_the_input_for_replay() -> None:
    incoming = _event({**DONE, "item_id": "../../etc"})
    failure = StageFailed.model_validate(
        build_failure(Stage.REGISTER, incoming, InvalidInput("bad id", field="item_id")).data
    )
    assert failure.item_id is None
    assert failure.collection == "c"
    assert failure.problem.field == "item_id"
    assert failure.input_event["data"]["item_id"] == "../../etc"


def test_an_oversize_or_deep_input_is_carried_as_an_excerpt() -> None:
    whole = recorded_input(_event(DONE))
    assert whole["data"] == DONE
    big = recorded_input(_event({**DONE, "pad": "x" * (MAX_DATA_BYTES + 16 * 1024)}))
    assert "data" not in big
    assert big["data_bytes"] > MAX_DATA_BYTES
    assert len(big["data_excerpt"]) < 1000
    deep: Any = "leaf"
    for _ in range(MAX_JSON_DEPTH - 2):
        deep = {"n": deep}
    assert "data_excerpt" in recorded_input(_event({**DONE, "deep": deep}))

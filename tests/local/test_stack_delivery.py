"""Retries and dead letters of the real stages, as the repository's Trigger files say."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from geozarr_local.broker.routing import load_routes
from geozarr_local.demo import convert_requested_event
from geozarr_local.processes import ManagedProcess, free_port, http_ready, module_command
from geozarr_local.sample.layout import item_url
from geozarr_local.stack import LocalStack
from geozarr_pipeline.attempts import StageAttempt, open_attempt_journal
from geozarr_pipeline.broker_client import RunFailed
from geozarr_pipeline.config import Settings
from geozarr_pipeline.events import EventType, Stage
from tests.fixtures.stack import add_sample


def convert_route_delivery(stack: LocalStack) -> Any:
    for route in load_routes(stack.manifests):
        if route.filters.get("type") == EventType.CONVERT_REQUESTED.value:
            return route.delivery
    raise AssertionError("no Trigger for convert.requested")


def deliveries_for(stack: LocalStack, subject: str) -> list[dict[str, Any]]:
    response = httpx.get(
        stack.broker_url + "/deliveries",
        params={
            "subject": subject,
            "type": EventType.CONVERT_REQUESTED.value,
            "queue": "geozarr-convert",
        },
        timeout=10,
    )
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()
    return found


def started(attempt: dict[str, Any]) -> float:
    return datetime.fromisoformat(attempt["started_at"]).timestamp()


def convert_attempts(stack: LocalStack, collection: str, item_id: str) -> list[StageAttempt]:
    """The convert stage's attempt records of an item (what `status` reads)."""
    settings = Settings(output_root=stack.settings_env()["GEOZARR_OUTPUT_ROOT"])
    with contextlib.closing(open_attempt_journal(settings)) as journal:
        return [a for a in journal.attempts(collection, item_id) if a.stage is Stage.CONVERT]


def test_transient_source_outage_is_retried_then_succeeds(local_stack: LocalStack) -> None:
    """The source server is down through the first delivery (the stage's own retries of the
    source read included) and up before the broker's retry."""
    sample = add_sample(local_stack, "S2A_MSIL2A_RETRY_TEST")
    port = free_port()
    source = item_url(f"http://127.0.0.1:{port}", sample.collection, sample.item_id)
    local_stack.publish(convert_requested_event(source, sample.item_id, sample.collection))
    deadline = time.monotonic() + 120
    while not any(
        a.outcome == "retry"
        for a in convert_attempts(local_stack, sample.collection, sample.item_id)
    ):
        assert time.monotonic() < deadline, "the first delivery never answered a transient fault"
        time.sleep(0.2)
    server = ManagedProcess(
        name="late-samples",
        command=module_command(
            "geozarr_local.sample.server", port, "--root", str(local_stack.samples_dir)
        ),
        log_path=local_stack.root / "logs" / "late-samples.log",
    ).start()
    with server:
        server.wait_ready(http_ready(f"http://127.0.0.1:{port}/healthz"))
        done = local_stack.wait_for_chain(sample.item_id, timeout=300)
    assert done["item_id"] == sample.item_id

    [delivery] = deliveries_for(local_stack, sample.item_id)
    attempts = delivery["attempts"]
    assert delivery["outcome"] == "delivered"
    assert len(attempts) >= 2
    assert attempts[0]["status"] == 503
    assert attempts[-1]["status"] == 200
    policy = convert_route_delivery(local_stack)
    gap = started(attempts[1]) - started(attempts[0]) - attempts[0]["elapsed_s"]
    assert gap >= policy.backoff(1) * 0.9


def failure_records(stack: LocalStack, item_id: str) -> list[dict[str, Any]]:
    """The failure records of an item, as the CLI lists them with the stack's settings."""
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "geozarr_pipeline",
            "failures",
            "list",
            "--root",
            str(stack.failures_root),
            "--item-id",
            item_id,
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    records: list[dict[str, Any]] = json.loads(listed.stdout)
    return records


def wait_for_records(stack: LocalStack, item_id: str, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        records = failure_records(stack, item_id)
        if records or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def written_for(stack: LocalStack, item_id: str) -> list[Path]:
    """Everything under the output and catalog roots that names the item, apart from what
    tells of the failure (failure and stage attempt records)."""
    return [
        path
        for folder in ("geozarr", "catalog")
        for path in (stack.root / folder).rglob(f"*{item_id}*")
        if "_failures" not in path.parts and "_status" not in path.parts
    ]


def test_a_stage_that_keeps_failing_ends_in_one_failure_record(local_stack: LocalStack) -> None:
    sample_id = "S2A_MSIL2A_NEVER_THERE"
    source = item_url(f"http://127.0.0.1:{free_port()}", "sentinel-2-l2a", sample_id)
    after = local_stack.publish(convert_requested_event(source, sample_id, "sentinel-2-l2a")) - 1
    policy = convert_route_delivery(local_stack)
    wait = 60 + sum(policy.backoff(n) for n in range(1, policy.retry + 1))
    with pytest.raises(RunFailed, match="dead-lettered"):
        local_stack.wait_for_chain(sample_id, timeout=wait, after=after)
    [record] = wait_for_records(local_stack, sample_id, timeout=30)
    [delivery] = deliveries_for(local_stack, sample_id)
    assert len(delivery["attempts"]) == policy.retry + 1
    assert all(a["status"] == 503 for a in delivery["attempts"])
    assert record["kind"] == "dead_letter"
    assert record["stage"] == "convert"
    assert record["knative"]["knativeerrorcode"] == "503"
    assert record["knative"]["knativeerrordest"] == local_stack.urls["geozarr-convert"]
    assert record["problem"]["code"] == "retries_exhausted"
    assert record["input_event"]["data"]["source_url"] == source
    assert written_for(local_stack, sample_id) == []


def unsupported_sample(stack: LocalStack, item_id: str) -> str:
    """A real sample whose item says it is a Sentinel-1 product."""
    sample = add_sample(stack, item_id, scale=0.02)
    item = json.loads(sample.item_path.read_text())
    item["properties"]["constellation"] = "sentinel-1"
    sample.item_path.write_text(json.dumps(item))
    return item_url(stack.sample_url, sample.collection, item_id)


@pytest.mark.parametrize(
    ("case", "code", "field"),
    [
        ("invalid", "invalid_input", "collection"),
        ("missing", "source_not_found", None),
        ("unsupported", "unsupported_product", None),
    ],
)
def test_a_permanent_failure_ends_in_one_failure_event_and_one_record(
    local_stack: LocalStack, case: str, code: str, field: str | None
) -> None:
    item_id = f"S2A_MSIL2A_FAILS_{case.upper()}"
    collection = "sentinel-2-l2a"
    source = item_url(local_stack.sample_url, collection, item_id)
    if case == "invalid":
        collection = "../etc"
    elif case == "unsupported":
        source = unsupported_sample(local_stack, item_id)
    event = convert_requested_event(source, item_id, collection)
    after = local_stack.publish(event) - 1

    with pytest.raises(RunFailed, match=code):
        local_stack.wait_for_chain(item_id, timeout=120, after=after)
    failures = local_stack.events(EventType.FAILED.value, item_id)
    assert len(failures) == 1
    data = failures[0]["event"]["data"]
    assert data["stage"] == "convert"
    assert data["problem"]["code"] == code
    assert data["input"]["id"] == event["id"]
    [record] = wait_for_records(local_stack, item_id, timeout=30)
    assert record["kind"] == "failure_event"
    assert record["problem"]["code"] == code
    assert record["problem"]["field"] == field
    assert record["problem"]["retryable"] is False
    assert record["input_event"]["attributes"]["id"] == event["id"]
    assert record["input_event"]["data"] == dict(event.data)
    [delivery] = deliveries_for(local_stack, item_id)
    assert delivery["outcome"] == "delivered"
    assert [a["status"] for a in delivery["attempts"]] == [200]
    assert local_stack.events(EventType.CONVERT_DONE.value, item_id) == []
    assert written_for(local_stack, item_id) == []


def test_killed_functions_and_broker_are_restarted_and_nothing_accepted_is_lost(
    local_stack: LocalStack,
) -> None:
    """kill -9 register, then the broker with a run in flight: the run still completes once."""
    old_register = local_stack.kill("geozarr-register")
    local_stack.wait_restarted("geozarr-register", old_register)
    sample = add_sample(local_stack, "S2A_MSIL2A_BROKER_KILLED", scale=0.02)
    source = item_url(local_stack.sample_url, sample.collection, sample.item_id)
    after = local_stack.publish(convert_requested_event(source, sample.item_id, sample.collection))
    old_broker = local_stack.kill("broker")
    local_stack.wait_restarted("broker", old_broker)

    done = local_stack.wait_for_chain(sample.item_id, timeout=300, after=after - 1)
    assert done["item_id"] == sample.item_id
    assert local_stack.restarts["geozarr-register"] >= 1
    assert local_stack.restarts["broker"] >= 1
    assert len(local_stack.events(EventType.AUGMENT_DONE.value, sample.item_id)) == 1
    registered = list((local_stack.root / "catalog").rglob(f"{sample.item_id}.json"))
    assert len(registered) == 1

"""Retries and dead letters of the real stages, as the repository's Trigger files say."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import httpx

from geozarr_pipeline.events import EventType
from geozarr_pipeline.local.demo import convert_requested_event
from geozarr_pipeline.local.processes import ManagedProcess, free_port, http_ready, module_command
from geozarr_pipeline.local.routing import load_routes
from geozarr_pipeline.local.stack import LocalStack
from geozarr_pipeline.sample.layout import item_url
from tests.fixtures.stack import add_sample


def convert_route_delivery(stack: LocalStack) -> Any:
    for route in load_routes(stack.manifests):
        if route.filters.get("type") == EventType.CONVERT_REQUESTED.value:
            return route.delivery
    raise AssertionError("no Trigger for convert.requested")


def deliveries_for(stack: LocalStack, subject: str) -> list[dict[str, Any]]:
    response = httpx.get(
        stack.broker_url + "/deliveries",
        params={"subject": subject, "type": EventType.CONVERT_REQUESTED.value},
        timeout=10,
    )
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()
    return found


def started(attempt: dict[str, Any]) -> float:
    return datetime.fromisoformat(attempt["started_at"]).timestamp()


def test_transient_source_outage_is_retried_then_succeeds(local_stack: LocalStack) -> None:
    """The source server is down at the first delivery and up before the retry."""
    sample = add_sample(local_stack, "S2A_MSIL2A_RETRY_TEST")
    port = free_port()
    source = item_url(f"http://127.0.0.1:{port}", sample.collection, sample.item_id)
    local_stack.publish(convert_requested_event(source, sample.item_id, sample.collection))
    time.sleep(1.0)
    server = ManagedProcess(
        name="late-samples",
        command=module_command(
            "geozarr_pipeline.sample.server", port, "--root", str(local_stack.samples_dir)
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


def test_a_stage_that_keeps_failing_ends_in_one_dead_letter(local_stack: LocalStack) -> None:
    sample_id = "S2A_MSIL2A_NEVER_THERE"
    source = item_url(f"http://127.0.0.1:{free_port()}", "sentinel-2-l2a", sample_id)
    local_stack.publish(convert_requested_event(source, sample_id, "sentinel-2-l2a"))
    policy = convert_route_delivery(local_stack)
    deadline = time.monotonic() + 60 + sum(policy.backoff(n) for n in range(1, policy.retry + 1))
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not records:
        records = httpx.get(
            local_stack.broker_url + "/dead-letters", params={"subject": sample_id}, timeout=10
        ).json()
        time.sleep(0.5)
    assert len(records) == 1
    [delivery] = deliveries_for(local_stack, sample_id)
    assert len(delivery["attempts"]) == policy.retry + 1
    assert all(a["status"] == 503 for a in delivery["attempts"])

    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "geozarr_pipeline",
            "dead-letters",
            "list",
            "--state-dir",
            str(local_stack.root / "broker"),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sample_id in json.dumps(json.loads(listed.stdout))

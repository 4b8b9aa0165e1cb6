"""Following a run on the local broker: wait for an event, fail fast when the run failed."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx

from geozarr_pipeline.events import EventType


class EventNotSeen(TimeoutError):
    """No matching event reached the broker in time."""


class RunFailed(RuntimeError):
    """The run being waited for ended in a failure event or a dead letter."""

    def __init__(self, entry: Mapping[str, Any]) -> None:
        event = entry.get("event", {})
        attributes = event.get("attributes", {})
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        if entry.get("origin") == "dead-letter":
            what = (
                f"dead-lettered by {entry.get('parent', {}).get('trigger')}: "
                f"last status {attributes.get('knativeerrorcode')}"
            )
        else:
            problem = data.get("problem", {})
            what = (
                f"{data.get('stage')} failed: {problem.get('code')}"
                f" ({problem.get('field') or '-'}): {problem.get('message')}"
            )
        super().__init__(f"{attributes.get('subject')}: {what}")
        self.entry = dict(entry)


def _failures_of(client: httpx.Client, subject: str, after: int) -> list[dict[str, Any]]:
    """Failure events and dead letters of the subject in the journal after seq `after`."""
    found: list[dict[str, Any]] = []
    queries: list[dict[str, str | int]] = [
        {"type": EventType.FAILED.value, "subject": subject, "after": after},
        {"origin": "dead-letter", "subject": subject, "after": after},
    ]
    for params in queries:
        response = client.get("/events", params=params).raise_for_status()
        found += response.json()
    return found


def wait_for_event(
    broker_url: str,
    *,
    event_type: str,
    subject: str | None = None,
    timeout: float = 600.0,
    after: int = 0,
    poll: float = 1.0,
) -> dict[str, Any]:
    """Long-poll the broker's journal until an event of `event_type` (and `subject`) arrives.

    Only journal entries after seq `after` count (pass the ingress answer's `seq` minus one to
    ignore earlier runs of the same item), and dead letters never count as the event. A failure
    event or dead letter of the same subject raises RunFailed instead of waiting for the timeout.
    """
    deadline = time.monotonic() + timeout
    query: dict[str, Any] = {"type": event_type, "after": after}
    if subject:
        query["subject"] = subject
    with httpx.Client(base_url=broker_url, trust_env=False, timeout=poll + 10) as client:
        while True:
            remaining = deadline - time.monotonic()
            wait = max(0.0, min(poll, remaining))
            found = client.get("/events", params={**query, "wait": wait}).raise_for_status()
            entries = [e for e in found.json() if e.get("origin") != "dead-letter"]
            if entries:
                entry: dict[str, Any] = entries[0]
                return entry
            if subject:
                failures = _failures_of(client, subject, after)
                if failures:
                    raise RunFailed(min(failures, key=lambda e: int(e["seq"])))
            if time.monotonic() >= deadline:
                raise EventNotSeen(
                    f"no {event_type} event for {subject or 'any subject'} in {timeout}s"
                )

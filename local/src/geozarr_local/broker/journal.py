"""The local broker's state on disk: the event journal and the delivery log.

`events.jsonl` holds every accepted event with the queues it was routed to (a Trigger's
queue, or `<trigger>.dlq` for a dead letter); `deliveries.jsonl` holds one line per finished
delivery (an acknowledgement). Together they are what RabbitMQ keeps for the cluster's
broker: after a crash, every routed event whose delivery has no acknowledgement is delivered
again (`unfinished`). A delivery whose reply or dead letter is already journaled counts as
finished, so a crash between journaling the reply and the acknowledgement redoes nothing.

Each entry is one line written with a single write under a lock and flushed to the OS (a
killed process loses nothing written; a power cut may lose the tail). A line cut short by a
crash is dropped on load. After close() nothing more is written.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cloudevents.http import CloudEvent

from geozarr_pipeline.cloudevent_http import event_as_json, utc_now

JOURNAL_FILE = "events.jsonl"
DELIVERIES_FILE = "deliveries.jsonl"
# Query keys matched against a journal entry itself, not its event.
ENTRY_FIELDS = ("origin",)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a file; a torn last line (a crash mid-write) is cut off."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    complete, _, torn = raw.rpartition(b"\n")
    if torn:
        with path.open("r+b") as handle:
            handle.truncate(len(complete) + 1 if complete else 0)
    entries: list[dict[str, Any]] = []
    for line in complete.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


class BrokerState:
    """The journal and the delivery log; nothing is written after close()."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.journal_path = state_dir / JOURNAL_FILE
        self.deliveries_path = state_dir / DELIVERIES_FILE
        state_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.closed = False
        self.entries = _read_lines(self.journal_path)
        self.deliveries = _read_lines(self.deliveries_path)
        # The highest seq, not the count: a corrupt line skipped on load must not free its seq.
        self.last_seq = max((int(e["seq"]) for e in self.entries), default=0)
        self.seen = {
            (str(e["event"]["attributes"].get("source")), str(e["event"]["attributes"].get("id")))
            for e in self.entries
        }

    def _append_line(self, path: Path, entry: Mapping[str, Any]) -> None:
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        with path.open("a") as handle:
            handle.write(line)
            handle.flush()

    def append_event(
        self,
        event: CloudEvent,
        origin: str,
        parent: Mapping[str, Any] | None,
        queues: Sequence[str],
        unserved: Sequence[str] = (),
    ) -> dict[str, Any] | None:
        with self.lock:
            if self.closed:
                return None
            key = (str(event["source"]), str(event["id"]))
            entry: dict[str, Any] = {
                "seq": self.last_seq + 1,
                "received_at": utc_now(),
                "origin": origin,
                "parent": dict(parent) if parent else None,
                "duplicate": key in self.seen,
                "routes": list(queues),
                "unserved": list(unserved),
                "event": event_as_json(event),
            }
            self._append_line(self.journal_path, entry)
            self.last_seq += 1
            self.seen.add(key)
            self.entries.append(entry)
            self.changed.notify_all()
            return entry

    def append_delivery(self, entry: dict[str, Any]) -> bool:
        """Acknowledge a delivery; False once closed (the delivery will be redone)."""
        with self.lock:
            if self.closed:
                return False
            self._append_line(self.deliveries_path, entry)
            self.deliveries.append(entry)
            self.changed.notify_all()
            return True

    def unfinished(self) -> list[tuple[dict[str, Any], str]]:
        """(entry, queue) of every routed event without an acknowledgement, oldest first."""
        with self.lock:
            finished = {(int(d["seq"]), str(d["queue"])) for d in self.deliveries if "queue" in d}
            finished |= {
                (int(e["parent"]["seq"]), str(e["parent"]["queue"]))
                for e in self.entries
                if e.get("parent") and "queue" in e["parent"]
            }
            return [
                (entry, queue)
                for entry in self.entries
                for queue in entry.get("routes", [])
                if (int(entry["seq"]), queue) not in finished
            ]

    def close(self) -> None:
        """Wait for a write in progress, then refuse all further writes."""
        with self.lock:
            self.closed = True
            self.changed.notify_all()


def matches_query(entry: Mapping[str, Any], query: Mapping[str, str]) -> bool:
    """Every query key equals the entry's own field (origin, trigger) or event attribute."""
    attributes = entry.get("event", {}).get("attributes", {})
    return all(
        (entry.get(name) if name in ENTRY_FIELDS else str(attributes.get(name, ""))) == wanted
        for name, wanted in query.items()
    )

"""The local broker's state on disk: the event journal, the delivery log, the dead letters.

`events.jsonl` and `deliveries.jsonl` get one JSON line per entry, written with a single
write under a lock; dead letters are whole files written atomically. After close() nothing
more is written, so a stopping broker leaves nothing half-written.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cloudevents.http import CloudEvent

from geozarr_pipeline.local import deadletters

JOURNAL_FILE = "events.jsonl"
DELIVERIES_FILE = "deliveries.jsonl"
# Query keys matched against a journal entry or dead-letter record itself, not its event.
ENTRY_FIELDS = ("origin", "trigger")


def event_to_record(event: CloudEvent) -> dict[str, Any]:
    """An event as JSON: its attributes and its data (JSON if it is JSON, else base64)."""
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


class BrokerState:
    """The journal, the delivery log and the dead letters; nothing is written after close()."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.journal_path = state_dir / JOURNAL_FILE
        self.deliveries_path = state_dir / DELIVERIES_FILE
        state_dir.mkdir(parents=True, exist_ok=True)
        folder = deadletters.dead_letter_dir(state_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for stray in folder.glob(".*.tmp"):
            stray.unlink(missing_ok=True)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.closed = False
        self.entries: list[dict[str, Any]] = []
        self.deliveries: list[dict[str, Any]] = []
        self.seen: set[tuple[str, str]] = set()
        self._load()

    def _load(self) -> None:
        for path, target in (
            (self.journal_path, self.entries),
            (self.deliveries_path, self.deliveries),
        ):
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if isinstance(entry, dict):
                        target.append(entry)
        for entry in self.entries:
            attributes = entry.get("event", {}).get("attributes", {})
            self.seen.add((str(attributes.get("source")), str(attributes.get("id"))))

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
        routes: Sequence[str],
        unserved: Sequence[str],
    ) -> dict[str, Any] | None:
        with self.lock:
            if self.closed:
                return None
            key = (str(event["source"]), str(event["id"]))
            entry: dict[str, Any] = {
                "seq": len(self.entries) + 1,
                "received_at": deadletters.utc_now(),
                "origin": origin,
                "parent": dict(parent) if parent else None,
                "duplicate": key in self.seen,
                "routes": list(routes),
                "unserved": list(unserved),
                "event": event_to_record(event),
            }
            self._append_line(self.journal_path, entry)
            self.seen.add(key)
            self.entries.append(entry)
            self.changed.notify_all()
            return entry

    def append_delivery(self, entry: dict[str, Any]) -> None:
        with self.lock:
            if self.closed:
                return
            self._append_line(self.deliveries_path, entry)
            self.deliveries.append(entry)
            self.changed.notify_all()

    def write_dead_letter(self, record: Mapping[str, Any]) -> Path | None:
        with self.lock:
            if self.closed:
                return None
            path = deadletters.write_record(self.state_dir, record)
            self.changed.notify_all()
            return path

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

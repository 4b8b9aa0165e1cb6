"""What became of a failure record: its replays and its resolution.

Records themselves are write-once and never deleted. Beside them, under the failures root:
`_replays/{record_id}/{time}-{token}.json` for each replay sent, and
`_resolved/{record_id}.json` once the failed stage has succeeded for the item (written once).
The failure store's listing skips both folders (it reads only `{root}/*.json`).
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ValidationError

from geozarr_pipeline.config import Settings
from geozarr_pipeline.failures.store import failures_root
from geozarr_pipeline.objects import ObjectStore, open_object_store

REPLAYS = "_replays"
RESOLVED = "_resolved"

Transport = Literal["http", "amqp"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Replay(BaseModel):
    record_id: str
    replayed_at: str
    event_id: str
    transport: Transport
    target: str


class Resolution(BaseModel):
    record_id: str
    resolved_at: str
    # The stage succeeded for the item (after a replay, or on its own since).
    reason: str


class ResolutionLog:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def replays(self, record_id: str) -> list[Replay]:
        found: list[Replay] = []
        for key in self.store.list_keys(f"{REPLAYS}/{record_id}/"):
            body = self.store.get(key)
            if body is not None:
                try:
                    found.append(Replay.model_validate_json(body))
                except ValidationError:
                    continue
        return sorted(found, key=lambda r: r.replayed_at)

    def add_replay(self, record_id: str, event_id: str, transport: Transport, target: str) -> None:
        replay = Replay(
            record_id=record_id,
            replayed_at=_now(),
            event_id=event_id,
            transport=transport,
            target=target.split("@")[-1],  # never the credentials of an AMQP URL
        )
        stamp = replay.replayed_at.replace(":", "").replace("-", "")
        key = f"{REPLAYS}/{record_id}/{stamp}-{secrets.token_hex(3)}.json"
        self.store.put(key, replay.model_dump_json(indent=2).encode())

    def replay_counts(self) -> dict[str, int]:
        """How often each record was replayed, from one listing."""
        counts: dict[str, int] = {}
        for key in self.store.list_keys(f"{REPLAYS}/"):
            parts = key.split("/")
            if len(parts) == 3:
                counts[parts[1]] = counts.get(parts[1], 0) + 1
        return counts

    def resolution(self, record_id: str) -> Resolution | None:
        body = self.store.get(f"{RESOLVED}/{record_id}.json")
        if body is None:
            return None
        try:
            return Resolution.model_validate_json(body)
        except ValidationError:
            return None

    def resolve(self, record_id: str, reason: str) -> bool:
        """Mark the record resolved; False if it already was."""
        resolution = Resolution(record_id=record_id, resolved_at=_now(), reason=reason)
        body = json.dumps(resolution.model_dump(mode="json"), indent=2).encode()
        return self.store.put(f"{RESOLVED}/{record_id}.json", body, if_absent=True)

    def resolved_ids(self) -> set[str]:
        return {
            key.removeprefix(f"{RESOLVED}/").removesuffix(".json")
            for key in self.store.list_keys(f"{RESOLVED}/")
        }

    def close(self) -> None:
        self.store.close()


def open_resolution_log(settings: Settings, root: str | None = None) -> ResolutionLog:
    return ResolutionLog(open_object_store(settings, root or failures_root(settings)))

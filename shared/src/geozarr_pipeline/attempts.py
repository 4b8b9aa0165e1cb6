"""Stage attempts: one small record per delivery a stage works on, for `status`.

Each delivery of an event that names an item writes
`{status_root}/{collection}/{item_id}/{stage}/{started}-{token}.json` when the work starts
(outcome `running`) and rewrites it when it ends (`done`, `failed`, `retry` or `crashed`),
with the duration, the problem and the reply's URLs. A killed process leaves `running`
behind, which `status` shows as interrupted once the stage's lease is gone.

`GEOZARR_STATUS_ROOT` defaults to `{GEOZARR_OUTPUT_ROOT}/_status`, the object storage the
pipeline writes to anyway: no database to run. Recording is best effort: a status write that
fails is logged and never fails the stage's work.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from geozarr_pipeline.config import Settings, get_settings
from geozarr_pipeline.errors import PipelineError
from geozarr_pipeline.events import Problem, Stage, check_safe_id
from geozarr_pipeline.objects import ObjectStore, open_object_store
from geozarr_pipeline.redaction import quoted, redact

log = logging.getLogger(__name__)

ATTEMPT_FORMAT = "geozarr-pipeline/stage-attempt/1"
STATUS_FOLDER = "_status"
RECORD_SUFFIX = ".json"

AttemptOutcome = Literal["running", "done", "failed", "retry", "crashed"]


def status_root(settings: Settings) -> str:
    return settings.status_root or f"{settings.output_root.rstrip('/')}/{STATUS_FOLDER}"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_time(value: str) -> str:
    """An ISO 8601 time (a date, or a time with any offset; naive means UTC) in the form the
    records use, so that times compare as strings. ValueError if it is not a time."""
    moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _iso(moment.astimezone(UTC))


class StageAttempt(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: str = ATTEMPT_FORMAT
    key: str
    stage: Stage
    item_id: str
    collection: str
    event_id: str
    event_type: str
    started_at: str
    finished_at: str | None = None
    duration_s: float | None = None
    outcome: AttemptOutcome = "running"
    problem: Problem | None = None
    # URLs of the reply (output_url, item_url, viewer_url) of a done attempt.
    result: dict[str, str] = {}
    host: str = ""


def item_prefix(collection: str, item_id: str) -> str:
    return f"{check_safe_id(collection)}/{check_safe_id(item_id)}/"


class AttemptJournal:
    """Writes and reads the attempt records under one status root."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @property
    def location(self) -> str:
        return self.store.location

    def _write(self, attempt: StageAttempt) -> None:
        body = redact(json.dumps(attempt.model_dump(mode="json"), indent=2, sort_keys=True))
        self.store.put(attempt.key, body.encode())

    def start(
        self, stage: Stage, *, collection: str, item_id: str, event_id: str, event_type: str
    ) -> StageAttempt | None:
        """Record that the work started; None (and a warning) if it cannot be recorded."""
        started = _now()
        try:
            key = (
                f"{item_prefix(collection, item_id)}{stage.value}/"
                f"{started.strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(4)}{RECORD_SUFFIX}"
            )
            attempt = StageAttempt(
                key=key,
                stage=stage,
                item_id=item_id,
                collection=collection,
                event_id=event_id,
                event_type=event_type,
                started_at=_iso(started),
                host=socket.gethostname(),
            )
            self._write(attempt)
        except (PipelineError, ValueError) as exc:
            log.warning(
                "stage attempt not recorded",
                extra={"stage": stage.value, "item_id": item_id, "error": quoted(str(exc))},
            )
            return None
        return attempt

    def finish(
        self,
        attempt: StageAttempt,
        outcome: AttemptOutcome,
        *,
        problem: Problem | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        finished = _now()
        started = datetime.fromisoformat(attempt.started_at.replace("Z", "+00:00"))
        attempt.finished_at = _iso(finished)
        attempt.duration_s = round((finished - started).total_seconds(), 3)
        attempt.outcome = outcome
        attempt.problem = problem
        attempt.result = {k: str(v) for k, v in (result or {}).items() if k.endswith("_url") and v}
        try:
            self._write(attempt)
        except PipelineError as exc:
            log.warning(
                "stage attempt outcome not recorded",
                extra={
                    "stage": attempt.stage.value,
                    "item_id": attempt.item_id,
                    "error": quoted(str(exc)),
                },
            )

    def attempts(self, collection: str, item_id: str) -> list[StageAttempt]:
        """Every attempt of every stage of one item, oldest first."""
        found: list[StageAttempt] = []
        for key in self.store.list_keys(item_prefix(collection, item_id)):
            if not key.endswith(RECORD_SUFFIX):
                continue
            body = self.store.get(key)
            if body is None:
                continue
            try:
                found.append(StageAttempt.model_validate_json(body))
            except ValidationError:
                continue  # not an attempt record
        return sorted(found, key=lambda a: (a.started_at, a.key))

    def items(self, collection: str | None = None) -> list[tuple[str, str]]:
        """(collection, item_id) of every item with at least one attempt."""
        prefix = f"{check_safe_id(collection)}/" if collection else ""
        seen: set[tuple[str, str]] = set()
        for key in self.store.list_keys(prefix):
            parts = key.split("/")
            if len(parts) == 4 and parts[3].endswith(RECORD_SUFFIX):
                seen.add((parts[0], parts[1]))
        return sorted(seen)

    def collections_of(self, item_id: str) -> list[str]:
        """The collections under which the item has attempts."""
        check_safe_id(item_id)
        return [c for c in self.store.children() if self.store.children(f"{c}/{item_id}/")]

    def forget(self, collection: str, item_id: str) -> int:
        """Delete an item's attempt records (when the item itself is deleted)."""
        keys = self.store.list_keys(item_prefix(collection, item_id))
        for key in keys:
            self.store.delete(key)
        return len(keys)

    def close(self) -> None:
        self.store.close()


def open_attempt_journal(
    settings: Settings, root: str | None = None, *, fail_fast: bool = False
) -> AttemptJournal:
    store = open_object_store(settings, root or status_root(settings), fail_fast=fail_fast)
    return AttemptJournal(store)


@cache
def process_journal() -> AttemptJournal:
    """The journal of a stage process, opened on first use (never at import); its S3 calls
    give up within seconds, so a storage brownout does not hold up the work."""
    return open_attempt_journal(get_settings(), fail_fast=True)

"""Where failure records live: the object storage the pipeline already writes to.

`GEOZARR_FAILURES_ROOT` (default `{GEOZARR_OUTPUT_ROOT}/_failures`) is a folder or an
`s3://bucket/prefix`; each record is one JSON object `{root}/{record_id}.json`, written once
(a redelivered failure finds its record and keeps it). The same code writes records in the
recorder Service and reads them in the CLI, locally and on the cluster. `_failures` cannot
collide with a collection's stores: collection ids start with a letter or digit.
"""

from __future__ import annotations

import json
from types import TracebackType

from pydantic import ValidationError

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import TransientError
from geozarr_pipeline.failures.records import FailureRecord
from geozarr_pipeline.objects import ObjectStore, open_object_store
from geozarr_pipeline.redaction import redact

FAILURES_FOLDER = "_failures"
RECORD_SUFFIX = ".json"


def failures_root(settings: Settings) -> str:
    return settings.failures_root or f"{settings.output_root.rstrip('/')}/{FAILURES_FOLDER}"


def _encoded(record: FailureRecord) -> bytes:
    """The record's JSON, with every secret redacted (an upstream may have echoed one)."""
    text = json.dumps(record.model_dump(mode="json"), indent=2, sort_keys=True)
    return (redact(text) + "\n").encode()


def _decoded(body: bytes) -> FailureRecord | None:
    """A record, or None for an object that is not one (a stray upload, another format)."""
    try:
        return FailureRecord.model_validate_json(body)
    except ValidationError:
        return None


class FailureStore:
    """Write-once records by id in the object storage; listing returns them oldest first."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.location = store.location

    def put(self, record: FailureRecord) -> bool:
        """Store the record unless one with its id exists; True when this call wrote it."""
        try:
            written: bool = self.store.put(
                f"{record.record_id}{RECORD_SUFFIX}", _encoded(record), if_absent=True
            )
        except TransientError as exc:
            raise TransientError(f"cannot write failure record: {exc}") from exc
        return written

    def get(self, record_id: str) -> FailureRecord | None:
        body = self.store.get(f"{record_id}{RECORD_SUFFIX}")
        return None if body is None else _decoded(body)

    def list(self) -> list[FailureRecord]:
        # Records sit at the top level; `_replays/`, `_resolved/` beside them are not records.
        keys = [k for k in self.store.list_keys() if "/" not in k and k.endswith(RECORD_SUFFIX)]
        records = [r for k in keys if (body := self.store.get(k)) and (r := _decoded(body))]
        return sorted(records, key=lambda r: (r.recorded_at, r.record_id))

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> FailureStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_failure_store(settings: Settings, root: str | None = None) -> FailureStore:
    """The store at `root` (default: the configured failures root): a folder or s3://."""
    return FailureStore(open_object_store(settings, root or failures_root(settings)))

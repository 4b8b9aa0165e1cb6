"""Where failure records live: the object storage the pipeline already writes to.

`GEOZARR_FAILURES_ROOT` (default `{GEOZARR_OUTPUT_ROOT}/_failures`) is a folder or an
`s3://bucket/prefix`; each record is one JSON object `{root}/{record_id}.json`, written once
(a redelivered failure finds its record and keeps it). The same code writes records in the
recorder Service and reads them in the CLI, locally and on the cluster. `_failures` cannot
collide with a collection's stores: collection ids start with a letter or digit.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from urllib.parse import urlparse

from pydantic import ValidationError

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import TransientError
from geozarr_pipeline.failures.records import FailureRecord
from geozarr_pipeline.redaction import redact
from geozarr_pipeline.s3 import NOT_FOUND_CODES, S3Client, error_code, s3_client

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


class FailureStore(ABC):
    """Write-once records by id; listing returns them oldest first."""

    location: str

    @abstractmethod
    def put(self, record: FailureRecord) -> bool:
        """Store the record unless one with its id exists; True when this call wrote it."""

    @abstractmethod
    def get(self, record_id: str) -> FailureRecord | None: ...

    @abstractmethod
    def _all(self) -> list[FailureRecord]: ...

    def list(self) -> list[FailureRecord]:
        return sorted(self._all(), key=lambda r: (r.recorded_at, r.record_id))

    def close(self) -> None:
        return None

    def __enter__(self) -> FailureStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FolderFailureStore(FailureStore):
    """Records as files; each written to a temporary name and linked into place atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def _path(self, record_id: str) -> Path:
        return self.root / f"{record_id}{RECORD_SUFFIX}"

    def put(self, record: FailureRecord) -> bool:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(_encoded(record))
                    handle.flush()
                    os.fsync(handle.fileno())
                # link() refuses an existing name: the first record of an id wins.
                os.link(tmp_name, self._path(record.record_id))
            except FileExistsError:
                return False
            finally:
                Path(tmp_name).unlink(missing_ok=True)
        except OSError as exc:
            raise TransientError(f"cannot write failure record to {self.root}: {exc}") from exc
        return True

    def get(self, record_id: str) -> FailureRecord | None:
        try:
            return _decoded(self._path(record_id).read_bytes())
        except FileNotFoundError:
            return None

    def _all(self) -> list[FailureRecord]:
        if not self.root.is_dir():
            return []
        records: list[FailureRecord] = []
        for path in self.root.glob(f"*{RECORD_SUFFIX}"):
            with contextlib.suppress(OSError):
                record = _decoded(path.read_bytes())
                if record is not None:
                    records.append(record)
        return records


class S3FailureStore(FailureStore):
    """Records as objects, created with `If-None-Match: *` so the first one of an id wins."""

    def __init__(self, bucket: str, prefix: str, client: S3Client) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.location = f"s3://{bucket}/{self.prefix}"

    def _key(self, record_id: str) -> str:
        name = f"{record_id}{RECORD_SUFFIX}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, record: FailureRecord) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(record.record_id),
                Body=_encoded(record),
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except ClientError as exc:
            # 412: a record of this id exists. A 409 (a concurrent write) is retried instead:
            # the other writer may still fail.
            if error_code(exc) == "PreconditionFailed":
                return False
            raise TransientError(f"cannot write failure record to {self.location}: {exc}") from exc
        except BotoCoreError as exc:
            raise TransientError(f"cannot write failure record to {self.location}: {exc}") from exc
        return True

    def _read(self, key: str) -> FailureRecord | None:
        """One record; None when the key is absent (or vanished since it was listed)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND_CODES:
                return None
            raise TransientError(f"cannot read {self.location}: {exc}") from exc
        except BotoCoreError as exc:
            raise TransientError(f"cannot read {self.location}: {exc}") from exc
        return _decoded(body)

    def get(self, record_id: str) -> FailureRecord | None:
        return self._read(self._key(record_id))

    def _all(self) -> list[FailureRecord]:
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = list(
                self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=prefix
                )
            )
        except (ClientError, BotoCoreError) as exc:
            raise TransientError(f"cannot list {self.location}: {exc}") from exc
        keys = [
            str(item["Key"])
            for page in pages
            for item in page.get("Contents", [])
            if str(item["Key"]).endswith(RECORD_SUFFIX)
            and "/" not in str(item["Key"])[len(prefix) :]
        ]
        return [record for key in keys if (record := self._read(key)) is not None]

    def close(self) -> None:
        self.client.close()


def open_failure_store(settings: Settings, root: str | None = None) -> FailureStore:
    """The store at `root` (default: the configured failures root)."""
    location = root or failures_root(settings)
    parsed = urlparse(location)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"failures root {location!r} names no bucket")
        return S3FailureStore(parsed.netloc, parsed.path, s3_client(settings))
    if parsed.scheme in ("", "file"):
        return FolderFailureStore(Path(parsed.path if parsed.scheme == "file" else location))
    raise ValueError(f"failures root {location!r} must be a folder or an s3:// URL")

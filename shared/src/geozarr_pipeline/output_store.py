"""Where a converted store goes, and how it becomes visible only when complete.

Output location: `{output_root}/{collection}/{item_id}.zarr`, with two siblings:
`{item_id}.zarr.done.json` (the completion marker, written last; it holds the reply) and
`{item_id}.zarr.lock` (the lease of a running conversion).

- Filesystem: the library writes into `{collection}/.staging/{item_id}.zarr.<token>`; after
  the check the staging folder is renamed onto the final path (atomic on one filesystem),
  then the marker is written. The lease is an `flock` on the lock file, so a killed process
  releases it at once.
- S3 (`convert_s3_write=staged`, the default): the library writes into a local staging
  folder under `work_dir`, the check runs there, then the files are uploaded in parallel
  (metadata last). Writing through s3fs directly (`direct`) costs thousands of small
  requests (existence checks, listings) and was ~8x slower against a loopback S3 API.
  In both modes the marker written last is what makes the store complete, and a retry
  deletes any unmarked leftovers under the prefix first. The lease is
  a lock object created with `If-None-Match: *`, renewed with `If-Match`, and taken over
  only once expired, so two deliveries never convert the same item at once. Every S3 call
  runs under the S3 retry policy (`retries`), logged with the item id.

Listing and removal (the operator commands `delete` and `cleanup`): `iter_outputs` walks the
layout above (names starting with `_` or `.` under output_root are not collections: `_failures`,
`_status`, `_audit`), `output_info` looks one item up, `lease_held` tells whether a conversion
runs without taking its lease, and `removal_lease` holds the lease while an output is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import ValidationError

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import InProgress, InvalidInput, PipelineError, TransientError
from geozarr_pipeline.events import ConvertDone, check_safe_id
from geozarr_pipeline.faults import (
    is_s3_absent,
    is_s3_conflict,
    s3_attempt,
    s3_errors,
    s3_fault,
    s3_request,
)
from geozarr_pipeline.files import write_atomic
from geozarr_pipeline.provenance import MARKER_FORMAT as MARKER_FORMAT  # re-exported
from geozarr_pipeline.provenance import MARKER_SUFFIX
from geozarr_pipeline.retries import RetryPolicies, RetryPolicy
from geozarr_pipeline.s3 import S3Client, s3_client

UPLOAD_THREADS = 16
LOCK_SUFFIX = ".lock"


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease(ABC):
    """Exclusive right to (re)write one item's output."""

    @abstractmethod
    def verify(self) -> None:
        """Raise InProgress if the lease was lost (another delivery took it over)."""

    @abstractmethod
    def release(self) -> None: ...


class OutputLocation(ABC):
    """One item's output store, its marker and its lease."""

    def __init__(self, collection: str, item_id: str) -> None:
        self.collection = check_safe_id(collection)
        self.item_id = check_safe_id(item_id)

    @property
    @abstractmethod
    def url(self) -> str:
        """The final store URL (what the reply names)."""

    @property
    @abstractmethod
    def write_url(self) -> str:
        """Where the converter writes (staging or final)."""

    @abstractmethod
    def storage_options(self) -> dict[str, Any] | None:
        """fsspec options to read and patch the store at `write_url`/`url`."""

    @abstractmethod
    def read_marker(self) -> dict[str, Any] | None: ...

    @abstractmethod
    def store_exists(self) -> bool:
        """The final store's root metadata exists."""

    @abstractmethod
    def clear(self) -> None:
        """Delete the marker first, then the store and any staging leftovers."""

    @abstractmethod
    def prepare(self) -> None:
        """Make `write_url` ready for a fresh conversion."""

    @abstractmethod
    def publish(self) -> None:
        """Make the written store visible at `url` (before the marker is written)."""

    @abstractmethod
    def discard(self) -> None:
        """Remove a written store that failed its check (never leave it looking done)."""

    @abstractmethod
    def write_marker(self, marker: dict[str, Any]) -> None: ...

    @abstractmethod
    def acquire(self, lease_seconds: float) -> Lease:
        """Take the lease or raise InProgress."""

    @abstractmethod
    def lease_held(self) -> bool:
        """Whether a conversion holds the lease now (read without taking it)."""

    @abstractmethod
    def close(self) -> None:
        """Release the connections this location opened (after its lease is released)."""

    def __enter__(self) -> OutputLocation:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _FileLease(Lease):
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def verify(self) -> None:
        if self._fd is None:
            raise InProgress("the conversion lease was released")

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class LocalOutput(OutputLocation):
    def __init__(self, root: Path, collection: str, item_id: str) -> None:
        super().__init__(collection, item_id)
        self.root = root.resolve()
        self.folder = self.root / self.collection
        self.store = self.folder / f"{self.item_id}.zarr"
        if self.store.parent != self.folder or self.folder.parent != self.root:
            raise InvalidInput(f"output path escapes {self.root}")
        self.marker = self.folder / f"{self.item_id}.zarr{MARKER_SUFFIX}"
        self.lock = self.folder / f"{self.item_id}.zarr{LOCK_SUFFIX}"
        self.staging_folder = self.folder / ".staging"
        self.staging = self.staging_folder / f"{self.item_id}.zarr.{uuid.uuid4().hex[:12]}"

    @property
    def url(self) -> str:
        return str(self.store)

    @property
    def write_url(self) -> str:
        return str(self.staging)

    def storage_options(self) -> dict[str, Any] | None:
        return None

    def read_marker(self) -> dict[str, Any] | None:
        try:
            loaded: dict[str, Any] = json.loads(self.marker.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return loaded

    def store_exists(self) -> bool:
        return (self.store / "zarr.json").is_file()

    def clear(self) -> None:
        self.marker.unlink(missing_ok=True)
        shutil.rmtree(self.store, ignore_errors=True)
        if self.staging_folder.is_dir():
            for leftover in self.staging_folder.glob(f"{self.item_id}.zarr.*"):
                shutil.rmtree(leftover, ignore_errors=True)

    def prepare(self) -> None:
        self.staging_folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.staging, ignore_errors=True)

    def publish(self) -> None:
        shutil.rmtree(self.store, ignore_errors=True)
        os.rename(self.staging, self.store)

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def write_marker(self, marker: dict[str, Any]) -> None:
        write_atomic(self.marker, json.dumps(marker, indent=2, sort_keys=True).encode())

    def close(self) -> None:
        """Nothing to release: the lease closes its own lock file."""

    def lease_held(self) -> bool:
        try:
            fd = os.open(self.lock, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the shared lock at once
        return False

    def acquire(self, lease_seconds: float) -> Lease:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise InProgress(
                f"{self.collection}/{self.item_id} is being converted by another delivery"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"owner": owner_id(), "since": time.time()}).encode())
        return _FileLease(fd)


class _S3Lease(Lease):
    """A lock object with an expiry, renewed in the background while the work runs."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        seconds: float,
        *,
        retry: RetryPolicy,
        item_id: str,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.seconds = seconds
        self.retry = retry
        self.item_id = item_id
        self.owner = owner_id()
        self.etag = ""
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires_at": time.time() + self.seconds}).encode()

    def _put_if(self, **condition: str) -> str | None:
        """Write the lock object, under the S3 retry policy, if `condition` holds: its ETag,
        None when it did not (the lock there is another ETag, or none for an If-Match).

        A conflict is not proof that the lock is another's: an attempt applied whose answer
        was lost (a timeout) made the lock ours, and the next attempt meets our own ETag.
        The caller reads the lock again (`_ours`)."""

        def attempt() -> str | None:
            try:
                reply = self.client.put_object(
                    Bucket=self.bucket, Key=self.key, Body=self._body(), **condition
                )
            except s3_errors() as exc:
                if is_s3_conflict(exc) or is_s3_absent(exc):
                    return None
                raise s3_fault(f"lease of s3://{self.bucket}/{self.key}", exc) from exc
            return str(reply["ETag"])

        return self.retry.call(attempt, item_id=self.item_id)

    def _read_lock(self) -> tuple[str, dict[str, Any]] | None:
        """The lock object's ETag and holder ({} if unreadable); None if there is none."""
        current = _s3_get(
            self.client, self.bucket, self.key, retry=self.retry, item_id=self.item_id
        )
        if current is None:
            return None
        try:
            holder = json.loads(current["Body"])
        except ValueError:
            holder = {}
        return str(current["ETag"]), holder if isinstance(holder, dict) else {}

    def _ours(self, lock: tuple[str, dict[str, Any]] | None) -> str | None:
        """The lock's ETag when it is ours (only this lease writes its owner), else None."""
        if lock is not None and lock[1].get("owner") == self.owner:
            return lock[0]
        return None

    def acquire(self) -> None:
        etag = self._put_if(IfNoneMatch="*")
        self.etag = etag if etag is not None else self._take_over_expired()
        self._thread = threading.Thread(target=self._renew, name="s3-lease", daemon=True)
        self._thread.start()

    def _take_over_expired(self) -> str:
        busy = InProgress(f"s3://{self.bucket}/{self.key} is held by another delivery")
        current = self._read_lock()
        if current is None:
            raise busy
        mine = self._ours(current)
        if mine is not None:
            # A retried create whose first attempt was applied: the lock is ours already.
            return mine
        etag, holder = current
        try:
            expires_at = float(holder["expires_at"])
        except (ValueError, KeyError, TypeError):
            expires_at = 0.0
        if expires_at > time.time():
            raise busy
        taken = self._put_if(IfMatch=etag)
        if taken is None:
            # Lost to another delivery, or a retried take-over whose first attempt was applied.
            taken = self._ours(self._read_lock())
        if taken is None:
            raise busy
        return taken

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            if not self._renew_once():
                return

    def _renew_once(self) -> bool:
        """One renewal, under the S3 retry policy: False once the lease is lost (the lock is
        another's, or gone). A renewal still failing after the policy's attempts leaves the
        lease as it is; the next period tries again."""
        try:
            etag = self._put_if(IfMatch=self.etag)
            if etag is None:
                # Taken over, or an applied renewal whose answer was lost: the lock says which.
                etag = self._ours(self._read_lock())
        except PipelineError:
            return True
        if etag is None:
            self.lost = True
            return False
        self.etag = etag
        return True

    def _head(self) -> dict[str, Any] | None:
        head: dict[str, Any] | None = s3_request(
            f"lease check of s3://{self.bucket}/{self.key}",
            self.client.head_object,
            retry=self.retry,
            item_id=self.item_id,
            Bucket=self.bucket,
            Key=self.key,
        )
        return head

    def verify(self) -> None:
        if self.lost:
            raise InProgress(f"lost the lease s3://{self.bucket}/{self.key} to another delivery")
        head = self._head()
        if head is None:
            raise InProgress(f"lease s3://{self.bucket}/{self.key} disappeared")
        if head["ETag"] != self.etag:
            raise InProgress(f"lost the lease s3://{self.bucket}/{self.key} to another delivery")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost:
            return
        # Best effort: a lock left behind expires on its own.
        with contextlib.suppress(PipelineError):
            head = self._head()
            if head is not None and head["ETag"] == self.etag:
                s3_request(
                    f"lease release of s3://{self.bucket}/{self.key}",
                    self.client.delete_object,
                    retry=self.retry,
                    item_id=self.item_id,
                    Bucket=self.bucket,
                    Key=self.key,
                )


class S3Output(OutputLocation):
    def __init__(
        self,
        settings: Settings,
        collection: str,
        item_id: str,
        client: S3Client | None = None,
    ) -> None:
        """`client`: a shared client (operator commands over many items), left open on close."""
        super().__init__(collection, item_id)
        parsed = urlparse(settings.output_root)
        self.settings = settings
        self.bucket = parsed.netloc
        prefix = parsed.path.strip("/")
        self.key = "/".join(p for p in (prefix, self.collection, f"{self.item_id}.zarr") if p)
        self.marker_key = f"{self.key}{MARKER_SUFFIX}"
        self.lock_key = f"{self.key}{LOCK_SUFFIX}"
        self.staged = settings.convert_s3_write == "staged"
        staging_root = settings.work_dir.resolve() / "staging" / self.collection
        self.staging = staging_root / f"{self.item_id}.zarr.{uuid.uuid4().hex[:12]}"
        self._client: S3Client | None = client
        self._owns_client = client is None
        self.retry = RetryPolicies.from_settings(settings).s3

    @property
    def client(self) -> S3Client:
        if self._client is None:
            # One connection per upload thread (botocore keeps 10 and drops the rest).
            self._client = s3_client(self.settings, pool_connections=UPLOAD_THREADS)
        return self._client

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def write_url(self) -> str:
        return str(self.staging) if self.staged else self.url

    def storage_options(self) -> dict[str, Any] | None:
        return None if self.staged else s3_storage_options(self.settings)

    def _request(self, what: str, call: Callable[..., Any], **kwargs: Any) -> Any:
        return s3_request(what, call, retry=self.retry, item_id=self.item_id, **kwargs)

    def read_marker(self) -> dict[str, Any] | None:
        reply = _s3_get(
            self.client, self.bucket, self.marker_key, retry=self.retry, item_id=self.item_id
        )
        if reply is None:
            return None
        try:
            loaded: dict[str, Any] = json.loads(reply["Body"])
        except ValueError:
            return None
        return loaded

    def store_exists(self) -> bool:
        reply = self._request(
            "store check", self.client.head_object, Bucket=self.bucket, Key=f"{self.key}/zarr.json"
        )
        return reply is not None

    def clear(self) -> None:
        self._request(
            "marker delete", self.client.delete_object, Bucket=self.bucket, Key=self.marker_key
        )
        self.retry.call(self._delete_leftovers, item_id=self.item_id)
        if self.staged:
            for leftover in self.staging.parent.glob(f"{self.item_id}.zarr.*"):
                shutil.rmtree(leftover, ignore_errors=True)

    def _delete_leftovers(self) -> None:
        """One pass over everything under the store's prefix (a retry lists it again)."""
        paginator = self.client.get_paginator("list_objects_v2")
        where = f"s3://{self.bucket}/{self.key}/"
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.key}/"):
                keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                if not keys:
                    continue
                reply = s3_attempt(
                    f"delete under {where}",
                    self.client.delete_objects,
                    Bucket=self.bucket,
                    Delete={"Objects": keys, "Quiet": True},
                )
                # A leftover chunk would be read back as part of the next store.
                if reply and reply.get("Errors"):
                    failed = reply["Errors"]
                    raise TransientError(
                        f"S3 could not delete {len(failed)} leftover objects under "
                        f"{where}, e.g. {failed[0]}"
                    )
        except s3_errors() as exc:
            raise s3_fault(f"listing of {where}", exc) from exc

    def prepare(self) -> None:
        if self.staged:
            self.staging.parent.mkdir(parents=True, exist_ok=True)

    def publish(self) -> None:
        """Upload the staged store (metadata last); direct writes are already in place.

        Either way the marker written next is what makes the store complete.
        """
        if not self.staged:
            return
        files = [p for p in self.staging.rglob("*") if p.is_file()]
        metadata = [p for p in files if p.name in ("zarr.json", ".zattrs", ".zgroup")]
        data = [p for p in files if p.name not in ("zarr.json", ".zattrs", ".zgroup")]
        # Deepest metadata first, so the root zarr.json appears last.
        metadata.sort(key=lambda p: len(p.relative_to(self.staging).parts), reverse=True)
        with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
            list(pool.map(self._upload, data))
        for path in metadata:
            self._upload(path)
        shutil.rmtree(self.staging, ignore_errors=True)

    def _upload(self, path: Path) -> None:
        key = f"{self.key}/{path.relative_to(self.staging).as_posix()}"

        def attempt() -> None:
            with path.open("rb") as body:  # opened again by each attempt
                s3_attempt("upload", self.client.put_object, Bucket=self.bucket, Key=key, Body=body)

        self.retry.call(attempt, item_id=self.item_id)

    def discard(self) -> None:
        self.clear()

    def write_marker(self, marker: dict[str, Any]) -> None:
        body = json.dumps(marker, indent=2, sort_keys=True).encode()
        self._request(
            "marker write",
            self.client.put_object,
            Bucket=self.bucket,
            Key=self.marker_key,
            Body=body,
            ContentType="application/json",
        )

    def close(self) -> None:
        if self._client is not None and self._owns_client:
            self._client.close()
        self._client = None

    def lease_held(self) -> bool:
        reply = _s3_get(
            self.client, self.bucket, self.lock_key, retry=self.retry, item_id=self.item_id
        )
        if reply is None:
            return False
        try:
            return float(json.loads(reply["Body"])["expires_at"]) > time.time()
        except (ValueError, KeyError, TypeError):
            return False

    def acquire(self, lease_seconds: float) -> Lease:
        lease = _S3Lease(
            self.client,
            self.bucket,
            self.lock_key,
            lease_seconds,
            retry=self.retry,
            item_id=self.item_id,
        )
        lease.acquire()
        return lease


def s3_storage_options(settings: Settings) -> dict[str, Any]:
    """fsspec/s3fs options for the output bucket, from settings (not the environment)."""
    secret = settings.s3_secret_access_key
    options: dict[str, Any] = {
        "key": settings.s3_access_key_id,
        "secret": secret.get_secret_value() if secret else None,
        "client_kwargs": {"region_name": settings.s3_region or "us-east-1"},
    }
    if settings.s3_endpoint_url:
        options["endpoint_url"] = settings.s3_endpoint_url
    return options


def is_s3(root: str) -> bool:
    return root.startswith("s3://")


def output_for(
    settings: Settings, collection: str, item_id: str, client: S3Client | None = None
) -> OutputLocation:
    """The item's output location; `client` shares one S3 client across many items."""
    root = settings.output_root
    if is_s3(root):
        if not urlparse(root).netloc:
            raise InvalidInput(f"output_root {root!r} names no bucket")
        return S3Output(settings, collection, item_id, client)
    if "://" in root and not root.startswith("file://"):
        raise InvalidInput(f"output_root {root!r}: only a folder or s3://bucket/prefix")
    return LocalOutput(Path(root.removeprefix("file://")), collection, item_id)


def completed_marker(location: OutputLocation) -> dict[str, Any] | None:
    """The marker of a completed conversion, as the convert stage decides it: the marker's
    format, the store present, and the reply it records valid. None otherwise."""
    marker = location.read_marker()
    if not marker or marker.get("format") != MARKER_FORMAT:
        return None
    if not location.store_exists():
        return None
    try:
        ConvertDone.model_validate(marker.get("done"))
    except ValidationError:
        return None  # an unreadable marker counts as absent: the item is converted again
    return marker


# Listing and removal --------------------------------------------------------------------


@dataclass(frozen=True)
class OutputInfo:
    """One converted output found under output_root: a marker, a store, or both."""

    collection: str
    item_id: str
    url: str
    marker: dict[str, Any] | None  # None when absent or unreadable
    marker_present: bool
    store_present: bool
    completed_at: datetime | None  # the marker's `completed_at`
    # When the output was last written: the marker's modification time, else (no marker)
    # the newest file or object of the store.
    modified_at: datetime | None

    @property
    def age_reference(self) -> datetime | None:
        """The time an expiry compares: completion, else the last write."""
        return self.completed_at or self.modified_at

    @classmethod
    def of(
        cls,
        location: OutputLocation,
        marker: dict[str, Any] | None,
        *,
        marker_present: bool,
        store_present: bool,
        modified_at: datetime | None,
    ) -> OutputInfo:
        return cls(
            collection=location.collection,
            item_id=location.item_id,
            url=location.url,
            marker=marker,
            marker_present=marker_present,
            store_present=store_present,
            completed_at=_completed_at(marker),
            modified_at=modified_at,
        )


def _completed_at(marker: dict[str, Any] | None) -> datetime | None:
    value = marker.get("completed_at") if marker else None
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _safe_or_none(value: str) -> str | None:
    try:
        return check_safe_id(value)
    except ValueError:
        return None


def _ids_from_names(stores: set[str], markers: set[str]) -> list[str]:
    """Item ids from store names (`{id}.zarr`) and marker names (`{id}.zarr.done.json`)."""
    ids = {name.removesuffix(".zarr") for name in stores if name.endswith(".zarr")}
    suffix = f".zarr{MARKER_SUFFIX}"
    ids |= {name.removesuffix(suffix) for name in markers if name.endswith(suffix)}
    return sorted(i for i in ids if _safe_or_none(i) is not None)


def _is_collection_name(name: str) -> bool:
    return not name.startswith(("_", ".")) and _safe_or_none(name) is not None


def iter_outputs(settings: Settings, collection: str | None = None) -> Iterator[OutputInfo]:
    """Every converted output under output_root (of one collection), by collection and id."""
    if collection is not None:
        check_safe_id(collection)
    if is_s3(settings.output_root):
        yield from _s3_outputs(settings, collection)
    else:
        yield from _local_outputs(settings, collection)


def output_info(settings: Settings, collection: str, item_id: str) -> OutputInfo | None:
    """The output of one item; None when it has neither a marker nor a store."""
    location = output_for(settings, collection, item_id)
    if isinstance(location, S3Output):
        client = s3_client(settings)
        try:
            return _s3_info(client, location, store_present=None, retry=location.retry)
        finally:
            client.close()
    assert isinstance(location, LocalOutput)
    return _local_info(location)


# Listing on the filesystem


def _local_root(settings: Settings) -> Path:
    return Path(settings.output_root.removeprefix("file://")).resolve()


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except FileNotFoundError:
        return None


def _newest_mtime(folder: Path) -> datetime | None:
    newest = _mtime(folder)
    for parent, _dirs, files in os.walk(folder):
        for name in files:
            found = _mtime(Path(parent) / name)
            if found is not None and (newest is None or found > newest):
                newest = found
    return newest


def _local_info(location: LocalOutput) -> OutputInfo | None:
    marker_time = _mtime(location.marker)
    store_present = location.store.is_dir()
    if marker_time is None and not store_present:
        return None
    marker = location.read_marker() if marker_time is not None else None
    return OutputInfo.of(
        location,
        marker,
        marker_present=marker_time is not None,
        store_present=store_present,
        modified_at=marker_time or _newest_mtime(location.store),
    )


def _local_outputs(settings: Settings, collection: str | None) -> Iterator[OutputInfo]:
    root = _local_root(settings)
    if not root.is_dir():
        return
    names = [collection] if collection is not None else sorted(p.name for p in root.iterdir())
    for name in names:
        folder = root / name
        if not _is_collection_name(name) or not folder.is_dir():
            continue
        entries = list(folder.iterdir())
        stores = {p.name for p in entries if p.is_dir()}
        markers = {p.name for p in entries if p.is_file()}
        for item_id in _ids_from_names(stores, markers):
            info = _local_info(LocalOutput(root, name, item_id))
            if info is not None:
                yield info


# Listing on S3


def _s3_get(
    client: S3Client, bucket: str, key: str, *, retry: RetryPolicy, item_id: str | None
) -> dict[str, Any] | None:
    """The object's reply with its body read (`Body` bytes); None when it does not exist."""
    what = f"read of s3://{bucket}/{key}"

    def attempt() -> dict[str, Any] | None:
        reply: dict[str, Any] | None = s3_attempt(what, client.get_object, Bucket=bucket, Key=key)
        if reply is None:
            return None
        try:
            reply["Body"] = reply["Body"].read()
        except s3_errors() as exc:
            raise s3_fault(what, exc) from exc
        return reply

    return retry.call(attempt, item_id=item_id)


def _s3_pages(
    client: S3Client,
    bucket: str,
    prefix: str,
    delimiter: str | None = None,
    *,
    retry: RetryPolicy,
    item_id: str | None = None,
) -> list[dict[str, Any]]:
    """Every page of the listing; a failed page lists again from the start."""
    options: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if delimiter:
        options["Delimiter"] = delimiter

    def attempt() -> list[dict[str, Any]]:
        try:
            return list(client.get_paginator("list_objects_v2").paginate(**options))
        except s3_errors() as exc:
            raise s3_fault(f"listing of s3://{bucket}/{prefix}", exc) from exc

    return retry.call(attempt, item_id=item_id)


def _s3_newest(
    client: S3Client, bucket: str, prefix: str, *, retry: RetryPolicy, item_id: str
) -> datetime | None:
    """The newest LastModified under the prefix; None when it holds nothing."""
    times = [
        obj["LastModified"]
        for page in _s3_pages(client, bucket, prefix, retry=retry, item_id=item_id)
        for obj in page.get("Contents", [])
    ]
    return max(times) if times else None


def _s3_any(
    client: S3Client, bucket: str, prefix: str, *, retry: RetryPolicy, item_id: str
) -> bool:
    reply = s3_request(
        f"listing of s3://{bucket}/{prefix}",
        client.list_objects_v2,
        retry=retry,
        item_id=item_id,
        Bucket=bucket,
        Prefix=prefix,
        MaxKeys=1,
    )
    return bool(reply and (reply.get("KeyCount") or reply.get("Contents")))


def _s3_info(
    client: S3Client, location: S3Output, store_present: bool | None, *, retry: RetryPolicy
) -> OutputInfo | None:
    """`store_present` if a listing told already, else None to look it up."""
    bucket = location.bucket
    item_id = location.item_id
    reply = _s3_get(client, bucket, location.marker_key, retry=retry, item_id=item_id)
    newest = None
    if reply is None:  # no marker: the store's own age counts (a full listing, rare)
        newest = _s3_newest(client, bucket, f"{location.key}/", retry=retry, item_id=item_id)
        store_present = newest is not None
    elif store_present is None:
        store_present = _s3_any(client, bucket, f"{location.key}/", retry=retry, item_id=item_id)
    if reply is None and not store_present:
        return None
    marker: dict[str, Any] | None = None
    if reply is not None:
        with contextlib.suppress(ValueError):
            loaded = json.loads(reply["Body"])
            marker = loaded if isinstance(loaded, dict) else None
    return OutputInfo.of(
        location,
        marker,
        marker_present=reply is not None,
        store_present=store_present,
        modified_at=reply["LastModified"] if reply is not None else newest,
    )


def _s3_collections(
    client: S3Client, bucket: str, prefix: str, collection: str | None, *, retry: RetryPolicy
) -> list[str]:
    if collection is not None:
        return [collection]
    names = [
        str(common["Prefix"])[len(prefix) :].rstrip("/")
        for page in _s3_pages(client, bucket, prefix, delimiter="/", retry=retry)
        for common in page.get("CommonPrefixes", [])
    ]
    return sorted(name for name in names if _is_collection_name(name))


def _s3_outputs(settings: Settings, collection: str | None) -> Iterator[OutputInfo]:
    parsed = urlparse(settings.output_root)
    if not parsed.netloc:
        raise InvalidInput(f"output_root {settings.output_root!r} names no bucket")
    bucket = parsed.netloc
    root = parsed.path.strip("/")
    prefix = f"{root}/" if root else ""
    retry = RetryPolicies.from_settings(settings).s3
    client = s3_client(settings)
    try:
        for name in _s3_collections(client, bucket, prefix, collection, retry=retry):
            stores: set[str] = set()
            markers: set[str] = set()
            for page in _s3_pages(client, bucket, f"{prefix}{name}/", delimiter="/", retry=retry):
                start = len(prefix) + len(name) + 1
                stores |= {
                    str(c["Prefix"])[start:].rstrip("/") for c in page.get("CommonPrefixes", [])
                }
                markers |= {str(o["Key"])[start:] for o in page.get("Contents", [])}
            for item_id in _ids_from_names(stores, markers):
                location = S3Output(settings, name, item_id)
                info = _s3_info(
                    client, location, store_present=f"{item_id}.zarr" in stores, retry=retry
                )
                if info is not None:
                    yield info
    finally:
        client.close()


# Leases of a removal


@contextlib.contextmanager
def removal_lease(location: OutputLocation, lease_seconds: float) -> Iterator[None]:
    """Hold the item's lease while its output is removed; InProgress if a conversion has it.

    Without a collection folder on the filesystem nothing runs and nothing is stored, so no
    lock file is created; otherwise the local lock file is removed while still held, so a
    removal leaves none behind (S3's lock object goes with the release).
    """
    if isinstance(location, LocalOutput) and not location.folder.is_dir():
        yield
        return
    lease = location.acquire(lease_seconds)
    try:
        yield
        lease.verify()
    finally:
        if isinstance(location, LocalOutput):
            location.lock.unlink(missing_ok=True)  # still held: no one else has it open
        lease.release()

"""Small JSON documents in the object storage the pipeline already has: a folder or S3.

`open_object_store(settings, root)` gives the same four calls on both: `put` (optionally
create-only, the first writer wins), `get`, `keys` under a prefix, `delete`. Keys are
`/`-separated relative names; the caller builds them from checked ids only. Every S3 call
runs under the S3 retry policy (`retries`), a single attempt for `fail_fast` stores.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlparse

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import TransientError
from geozarr_pipeline.faults import is_s3_absent, is_s3_conflict, s3_errors, s3_fault
from geozarr_pipeline.files import write_atomic
from geozarr_pipeline.retries import RetryPolicies, RetryPolicy
from geozarr_pipeline.s3 import S3Client, s3_client

T = TypeVar("T")


class ObjectStore(ABC):
    location: str

    @abstractmethod
    def put(self, key: str, body: bytes, *, if_absent: bool = False) -> bool:
        """Write `body` at `key`; with `if_absent`, only if nothing is there (True if written)."""

    @abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key under `prefix` (a folder-like prefix ending in '/' or empty), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; nothing there is not an error."""

    @abstractmethod
    def usage(self, prefix: str = "") -> tuple[int, int]:
        """(objects, bytes) under `prefix`."""

    @abstractmethod
    def children(self, prefix: str = "") -> list[str]:
        """The names of the folders directly under `prefix` (one level, sorted)."""

    def close(self) -> None:
        return None

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FolderObjectStore(ObjectStore):
    """Files written to a temporary name, then renamed (or linked, create-only) into place."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, body: bytes, *, if_absent: bool = False) -> bool:
        try:
            return write_atomic(self._path(key), body, if_absent=if_absent)
        except OSError as exc:
            raise TransientError(f"cannot write {key} to {self.root}: {exc}") from exc

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            raise TransientError(f"cannot read {key} from {self.root}: {exc}") from exc

    def list_keys(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(
            path.relative_to(self.root).as_posix()
            for path in base.rglob("*")
            if path.is_file() and not path.name.startswith(".")
        )

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # Empty folders left behind would still look like entries to children().
        for parent in path.parents:
            if parent == self.root or self.root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def children(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    def usage(self, prefix: str = "") -> tuple[int, int]:
        base = self._path(prefix) if prefix else self.root
        sizes = [p.stat().st_size for p in base.rglob("*") if p.is_file()] if base.is_dir() else []
        return len(sizes), sum(sizes)


class S3ObjectStore(ObjectStore):
    """Objects under a prefix; create-only writes use `If-None-Match: *`."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: S3Client,
        *,
        retry: RetryPolicy,
        owns_client: bool = True,
    ):
        """`retry`: the S3 policy of every call; `owns_client` False: a shared client, left
        open by close()."""
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.retry = retry
        self.owns_client = owns_client
        self.location = f"s3://{bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _full(self, prefix: str) -> str:
        return self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")

    def _call(self, what: str, attempt: Callable[[], T]) -> T:
        """`attempt` (one S3 request, or one whole listing) under the retry policy, its
        botocore errors classified by `faults.s3_fault`. Records name no item."""

        def classified() -> T:
            try:
                return attempt()
            except s3_errors() as exc:
                raise s3_fault(what, exc) from exc

        return self.retry.call(classified, item_id=None)

    def put(self, key: str, body: bytes, *, if_absent: bool = False) -> bool:
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        attempts = 0

        def write() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self._key(key),
                    Body=body,
                    ContentType="application/json",
                    **extra,
                )
            except s3_errors() as exc:
                if if_absent and is_s3_conflict(exc):
                    # A retried create whose first attempt was applied finds its own body.
                    return attempts > 1 and self.get(key) == body
                raise
            return True

        return self._call(f"write of {key} to {self.location}", write)

    def get(self, key: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                reply = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            except s3_errors() as exc:
                if is_s3_absent(exc):
                    return None
                raise
            body: bytes = reply["Body"].read()
            return body

        return self._call(f"read of {key} from {self.location}", read)

    def _pages(self, prefix: str, **options: str) -> list[dict[str, Any]]:
        """Every page of a listing under `prefix`; a failed page lists again from the start."""

        def listing() -> list[dict[str, Any]]:
            paginator = self.client.get_paginator("list_objects_v2")
            return list(paginator.paginate(Bucket=self.bucket, Prefix=prefix, **options))

        return self._call(f"listing of {self.location}", listing)

    def list_keys(self, prefix: str = "") -> list[str]:
        strip = len(f"{self.prefix}/") if self.prefix else 0
        pages = self._pages(self._full(prefix))
        return sorted(
            str(item["Key"])[strip:] for page in pages for item in page.get("Contents", [])
        )

    def delete(self, key: str) -> None:
        self._call(
            f"delete of {key} from {self.location}",
            lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)),
        )

    def children(self, prefix: str = "") -> list[str]:
        full = self._full(prefix)
        return sorted(
            str(common["Prefix"])[len(full) :].rstrip("/")
            for page in self._pages(full, Delimiter="/")
            for common in page.get("CommonPrefixes", [])
        )

    def usage(self, prefix: str = "") -> tuple[int, int]:
        objects = [
            item for page in self._pages(self._full(prefix)) for item in page.get("Contents", [])
        ]
        return len(objects), sum(int(item.get("Size", 0)) for item in objects)

    def close(self) -> None:
        if self.owns_client:
            self.client.close()


def open_object_store(
    settings: Settings, root: str, *, fail_fast: bool = False, client: S3Client | None = None
) -> ObjectStore:
    """The store at `root`: a folder (or file:// URL) or s3://bucket/prefix.

    `fail_fast`: a few seconds and one attempt per call, for records that must not delay work;
    `client`: a shared S3 client (many stores from one command), not closed with the store.
    """
    parsed = urlparse(root)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"{root!r} names no bucket")
        retry = RetryPolicies.from_settings(settings).s3
        if fail_fast:
            retry = retry.once()
        if client is not None:
            return S3ObjectStore(parsed.netloc, parsed.path, client, retry=retry, owns_client=False)
        own = (
            s3_client(settings, connect_timeout=2.0, read_timeout=5.0)
            if fail_fast
            else s3_client(settings)
        )
        return S3ObjectStore(parsed.netloc, parsed.path, own, retry=retry)
    if parsed.scheme in ("", "file"):
        return FolderObjectStore(Path(parsed.path if parsed.scheme == "file" else root).resolve())
    raise ValueError(f"{root!r} must be a folder or an s3:// URL")

"""Small JSON documents in the object storage the pipeline already has: a folder or S3.

`open_object_store(settings, root)` gives the same four calls on both: `put` (optionally
create-only, the first writer wins), `get`, `keys` under a prefix, `delete`. Keys are
`/`-separated relative names; the caller builds them from checked ids only.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from urllib.parse import urlparse

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import TransientError
from geozarr_pipeline.faults import is_s3_absent, is_s3_conflict, s3_errors, s3_fault
from geozarr_pipeline.files import write_atomic
from geozarr_pipeline.s3 import S3Client, s3_client


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

    def __init__(self, bucket: str, prefix: str, client: S3Client, *, owns_client: bool = True):
        """`owns_client` False: a shared client, left open by close()."""
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.owns_client = owns_client
        self.location = f"s3://{bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, body: bytes, *, if_absent: bool = False) -> bool:
        extra = {"IfNoneMatch": "*"} if if_absent else {}
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
                return False
            raise s3_fault(f"write of {key} to {self.location}", exc) from exc
        return True

    def get(self, key: str) -> bytes | None:
        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))[
                "Body"
            ].read()
        except s3_errors() as exc:
            if is_s3_absent(exc):
                return None
            raise s3_fault(f"read of {key} from {self.location}", exc) from exc
        return body

    def list_keys(self, prefix: str = "") -> list[str]:
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(f"{self.prefix}/") if self.prefix else 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            return sorted(
                str(item["Key"])[strip:] for page in pages for item in page.get("Contents", [])
            )
        except s3_errors() as exc:
            raise s3_fault(f"listing of {self.location}", exc) from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except s3_errors() as exc:
            raise s3_fault(f"delete of {key} from {self.location}", exc) from exc

    def children(self, prefix: str = "") -> list[str]:
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, Delimiter="/"
            )
            return sorted(
                str(common["Prefix"])[len(full) :].rstrip("/")
                for page in pages
                for common in page.get("CommonPrefixes", [])
            )
        except s3_errors() as exc:
            raise s3_fault(f"listing of {self.location}", exc) from exc

    def usage(self, prefix: str = "") -> tuple[int, int]:
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        count = size = 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                for item in page.get("Contents", []):
                    count += 1
                    size += int(item.get("Size", 0))
        except s3_errors() as exc:
            raise s3_fault(f"listing of {self.location}", exc) from exc
        return count, size

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
        if client is not None:
            return S3ObjectStore(parsed.netloc, parsed.path, client, owns_client=False)
        own = (
            s3_client(settings, connect_timeout=2.0, read_timeout=5.0, total_attempts=1)
            if fail_fast
            else s3_client(settings)
        )
        return S3ObjectStore(parsed.netloc, parsed.path, own)
    if parsed.scheme in ("", "file"):
        return FolderObjectStore(Path(parsed.path if parsed.scheme == "file" else root).resolve())
    raise ValueError(f"{root!r} must be a folder or an s3:// URL")

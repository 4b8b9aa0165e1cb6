"""Read the structure of a Zarr v3 store from its metadata documents only.

No zarr/xarray/numpy: a store is a tree of `zarr.json` documents, read as JSON from a local
folder, over HTTP(S) or from S3. The root document's `consolidated_metadata`, when present,
gives the whole tree in one read; otherwise the tree is walked by listing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import httpx

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import InvalidInput, OutputCheckFailed
from geozarr_pipeline.faults import http_probe, s3_errors, s3_fault, s3_request
from geozarr_pipeline.retries import RetryPolicies, RetryPolicy

ZARR_JSON = "zarr.json"


@dataclass(frozen=True)
class ZarrNode:
    """One group or array of the store, with its metadata document."""

    path: str  # relative to the store root, "" for the root, no leading slash
    metadata: dict[str, Any]

    @property
    def is_array(self) -> bool:
        return self.metadata.get("node_type") == "array"

    @property
    def attributes(self) -> dict[str, Any]:
        attrs = self.metadata.get("attributes") or {}
        return attrs if isinstance(attrs, dict) else {}

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def shape(self) -> list[int]:
        return [int(n) for n in self.metadata.get("shape") or []]

    @property
    def data_type(self) -> str | None:
        value = self.metadata.get("data_type")
        return value if isinstance(value, str) else None

    @property
    def dimension_names(self) -> list[str]:
        return [str(d) for d in self.metadata.get("dimension_names") or []]


@dataclass
class StoreTree:
    """All nodes of a store, by path."""

    url: str
    nodes: dict[str, ZarrNode] = field(default_factory=dict)

    def get(self, path: str) -> ZarrNode | None:
        return self.nodes.get(path.strip("/"))

    def children(self, path: str) -> list[ZarrNode]:
        prefix = path.strip("/")
        depth = prefix.count("/") + 1 if prefix else 0
        return sorted(
            (
                node
                for p, node in self.nodes.items()
                if p and (not prefix or p.startswith(prefix + "/")) and p.count("/") == depth
            ),
            key=lambda n: n.path,
        )

    def groups(self) -> Iterator[ZarrNode]:
        return (n for n in self.nodes.values() if not n.is_array)


class StoreReader(Protocol):
    def read_json(self, path: str) -> dict[str, Any] | None:
        """The JSON document at `path` relative to the store root, None if there is none."""

    def list_children(self, path: str) -> list[str]:
        """Names of the sub-folders of `path`."""

    def close(self) -> None:
        """Release what the reader opened (its S3 client); the HTTP client is the caller's."""


def _document(raw: str | bytes, where: str) -> dict[str, Any] | None:
    """A metadata document parsed; one that is not JSON is a permanent output error."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise OutputCheckFailed(f"{where} is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else None


class LocalReader:
    def __init__(self, root: Path) -> None:
        self.root = root

    def read_json(self, path: str) -> dict[str, Any] | None:
        target = self.root / path
        try:
            raw = target.read_bytes()
        except FileNotFoundError:
            return None
        return _document(raw, str(target))

    def list_children(self, path: str) -> list[str]:
        folder = self.root / path
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir())

    def close(self) -> None:
        return None


class HttpReader:
    """Read-only over HTTP(S); cannot list, so the store must carry consolidated metadata."""

    def __init__(self, base_url: str, client: httpx.Client) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client

    def read_json(self, path: str) -> dict[str, Any] | None:
        url = f"{self.base_url}/{path}"
        response = http_probe(self.client, url, "store document")
        if response is None:
            return None
        return _document(response.content, url)

    def list_children(self, path: str) -> list[str]:
        raise OutputCheckFailed(
            f"{self.base_url} has no consolidated metadata and HTTP cannot list; "
            "read the store from S3 or the filesystem instead"
        )

    def close(self) -> None:
        return None


class S3Reader:
    """S3 through the output bucket's boto3 client, imported only when an s3:// store is read.

    Every call runs under `retry`, by default the S3 policy of `settings`."""

    def __init__(
        self, bucket: str, prefix: str, settings: Settings, *, retry: RetryPolicy | None = None
    ) -> None:
        from geozarr_pipeline.s3 import s3_client

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = s3_client(settings)
        self.retry = retry if retry is not None else RetryPolicies.from_settings(settings).s3

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}".strip("/") if self.prefix else path

    def read_json(self, path: str) -> dict[str, Any] | None:
        where = f"s3://{self.bucket}/{self._key(path)}"
        reply = s3_request(
            f"read of {where}",
            self.client.get_object,
            retry=self.retry,
            Bucket=self.bucket,
            Key=self._key(path),
        )
        if reply is None:
            return None
        try:
            body = reply["Body"].read()
        except s3_errors() as exc:
            raise s3_fault(f"read of {where}", exc) from exc
        return _document(body, where)

    def list_children(self, path: str) -> list[str]:
        prefix = self._key(path)
        prefix = f"{prefix}/" if prefix else ""

        def listing() -> list[str]:
            names: list[str] = []
            paginator = self.client.get_paginator("list_objects_v2")
            try:
                for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                    for common in page.get("CommonPrefixes", []):
                        names.append(common["Prefix"][len(prefix) :].rstrip("/"))
            except s3_errors() as exc:
                raise s3_fault(f"listing of s3://{self.bucket}/{prefix}", exc) from exc
            return sorted(names)

        # botocore makes one attempt (s3.s3_client): the whole listing is retried as one call.
        return self.retry.call(listing, item_id=None)

    def close(self) -> None:
        self.client.close()


def open_reader(url: str, settings: Settings, client: httpx.Client) -> StoreReader:
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalReader(Path(unquote(parsed.path) if parsed.scheme else url))
    if parsed.scheme in ("http", "https"):
        return HttpReader(url, client)
    if parsed.scheme == "s3":
        return S3Reader(parsed.netloc, parsed.path, settings)
    raise InvalidInput(f"unsupported store URL scheme in {url!r}")


def read_store(url: str, reader: StoreReader) -> StoreTree:
    """Every node of the store: from consolidated metadata, else by walking the tree."""
    root = reader.read_json(ZARR_JSON)
    if root is None:
        raise OutputCheckFailed(f"no Zarr v3 store at {url} (missing {ZARR_JSON})")
    if root.get("zarr_format") != 3:
        raise OutputCheckFailed(f"{url} is not a Zarr v3 store")
    tree = StoreTree(url=url)
    tree.nodes[""] = ZarrNode("", root)
    consolidated = root.get("consolidated_metadata") or {}
    entries = consolidated.get("metadata") if isinstance(consolidated, dict) else None
    if isinstance(entries, dict) and entries:
        for path, metadata in entries.items():
            if isinstance(metadata, dict):
                tree.nodes[path.strip("/")] = ZarrNode(path.strip("/"), metadata)
        return tree
    _walk(reader, "", tree)
    return tree


def _walk(reader: StoreReader, path: str, tree: StoreTree) -> None:
    for name in reader.list_children(path):
        child = f"{path}/{name}" if path else name
        metadata = reader.read_json(f"{child}/{ZARR_JSON}")
        if metadata is None:
            continue
        tree.nodes[child] = ZarrNode(child, metadata)
        if metadata.get("node_type") == "group":
            _walk(reader, child, tree)


def node_exists(reader: StoreReader, path: str) -> bool:
    """Whether the store really has a node at `path` (its own zarr.json is readable)."""
    return reader.read_json(f"{path.strip('/')}/{ZARR_JSON}".lstrip("/")) is not None

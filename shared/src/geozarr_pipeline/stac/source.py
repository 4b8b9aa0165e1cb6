"""The source item: fetched from its STAC URL, or built from a Zarr product's own metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx

from geozarr_pipeline.errors import InvalidInput, SourceNotFound
from geozarr_pipeline.faults import http_read
from geozarr_pipeline.retries import RetryPolicy, default_policies
from geozarr_pipeline.stac.store import StoreReader

ACCEPT_ITEM = {"Accept": "application/geo+json, application/json"}


def fetch_source_item(
    url: str,
    client: httpx.Client,
    *,
    retry: RetryPolicy | None = None,
    item_id: str | None = None,
) -> dict[str, Any]:
    """The source STAC item at `url` (http(s), or file:// in local mode).

    The caller has checked `url` against the URL policy; `client` checks every redirect hop.
    Faults are classified by `faults`: absent or denied is a permanent SourceNotFound, 408,
    429, 5xx and network errors are transient (retried under `retry`, the source read policy,
    the default settings' one if None; logged with `item_id`), and a document that is no item
    is invalid.
    """
    if urlparse(url).scheme.lower() == "file":
        path = Path(unquote(urlparse(url).path))
        if not path.is_file():
            raise SourceNotFound(f"source item {url} does not exist")
        text = path.read_text()
    else:
        policy = retry if retry is not None else default_policies().source
        text = policy.call(
            lambda: http_read(client, url, "source item", headers=ACCEPT_ITEM).text,
            item_id=item_id,
        )
    try:
        item = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"source item {url} is not JSON: {exc}") from exc
    if not isinstance(item, dict) or item.get("type") != "Feature":
        raise InvalidInput(f"{url} is neither a STAC item (type Feature) nor a .zarr URL")
    if not isinstance(item.get("assets"), dict):
        raise InvalidInput(f"source item {url} has no assets")
    return item


def item_from_product(reader: StoreReader, url: str) -> dict[str, Any]:
    """A source item from an EOPF product's `stac_discovery` attributes (v2 or v3 layout)."""
    attributes: dict[str, Any] | None = None
    for document in (".zattrs", "zarr.json"):
        data = reader.read_json(document)
        if data is None:
            continue
        attributes = data.get("attributes", data) if document == "zarr.json" else data
        break
    if attributes is None:
        raise SourceNotFound(f"no Zarr product at {url}")
    discovery = attributes.get("stac_discovery")
    if not isinstance(discovery, dict):
        raise InvalidInput(f"{url} carries no stac_discovery metadata to describe it")
    return discovery


def derived_from_link(source_item_url: str | None, zarr_url: str) -> dict[str, Any]:
    if source_item_url:
        return {
            "rel": "derived_from",
            "href": source_item_url,
            "type": "application/geo+json",
            "title": "Source EOPF Zarr STAC item",
        }
    return {
        "rel": "derived_from",
        "href": zarr_url,
        "type": "application/vnd.zarr",
        "title": "Source EOPF Zarr product",
    }

"""The source item: fetched from its STAC URL, or built from a Zarr product's own metadata."""

from __future__ import annotations

from typing import Any

import httpx

from geozarr_pipeline.errors import InvalidInput, RateLimited, SourceNotFound, TransientError
from geozarr_pipeline.stac.store import StoreReader


def fetch_source_item(url: str, client: httpx.Client) -> dict[str, Any]:
    """GET a STAC item; 404/410 is a permanent SourceNotFound; 408, 429, 5xx and network
    errors are transient."""
    try:
        response = client.get(url, headers={"Accept": "application/geo+json, application/json"})
    except httpx.HTTPError as exc:
        raise TransientError(f"cannot fetch source item {url}: {exc}") from exc
    if response.status_code in (404, 410):
        raise SourceNotFound(f"source item {url} does not exist ({response.status_code})")
    if response.status_code == 429:
        raise RateLimited(f"source item {url}: rate limited")
    if response.status_code >= 500 or response.status_code == 408:
        raise TransientError(f"source item {url} answered {response.status_code}")
    if response.status_code >= 400:
        raise InvalidInput(f"source item {url} answered {response.status_code}")
    try:
        item = response.json()
    except ValueError as exc:
        raise InvalidInput(f"source item {url} is not JSON: {exc}") from exc
    if not isinstance(item, dict) or item.get("type") != "Feature":
        raise InvalidInput(f"{url} is not a STAC item")
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

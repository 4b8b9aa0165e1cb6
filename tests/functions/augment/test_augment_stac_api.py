"""Augment through the STAC API backend (PostgreSQL + pgstac + stac-fastapi-pgstac)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from geozarr_pipeline.config import Settings
from geozarr_pipeline.stages import augment
from geozarr_pipeline.visual import RENDER_EXTENSION, WEB_MAP_LINKS_EXTENSION
from tests.fixtures.stac_api import ConvertedStore, StacApiInfo
from tests.fixtures.visual import register

RASTER = "http://127.0.0.1:8010"
OWNED = ("viewer", "xyz", "tilejson", "wmts")


def fetch(stac_api: StacApiInfo, collection: str, item_id: str) -> dict[str, Any]:
    response = httpx.get(f"{stac_api.url}/collections/{collection}/items/{item_id}", timeout=30)
    response.raise_for_status()
    item: dict[str, Any] = response.json()
    return item


def owned_links(item: dict[str, Any]) -> list[dict[str, Any]]:
    return [link for link in item["links"] if link["rel"] in OWNED]


def test_augment_writes_back_through_the_stac_api_idempotently(
    stac_api: StacApiInfo, converted_l2a: ConvertedStore
) -> None:
    settings = Settings(
        catalog_backend="stac-api",
        stac_api_url=stac_api.url,
        output_root=str(converted_l2a.root),
        raster_api_url=RASTER,
        allow_plain_http=True,
        allow_private_hosts=True,
    )
    collection = f"augment-{uuid.uuid4().hex[:8]}"
    registered = register(converted_l2a, settings, collection=collection)

    done = augment.run(registered, settings)
    assert done.viewer_url == (
        f"{RASTER}/collections/{collection}/items/{converted_l2a.item_id}/viewer"
    )
    first = fetch(stac_api, collection, converted_l2a.item_id)
    assert sorted(link["rel"] for link in owned_links(first)) == sorted(OWNED)
    assert first["assets"]["thumbnail"]["type"] == "image/png"
    assert first["properties"]["renders"]["true-color"]["variables"]
    for uri in (RENDER_EXTENSION, WEB_MAP_LINKS_EXTENSION):
        assert first["stac_extensions"].count(uri) == 1

    augment.run(registered, settings)
    second = fetch(stac_api, collection, converted_l2a.item_id)
    assert owned_links(second) == owned_links(first)
    assert second["assets"] == first["assets"]
    assert second["properties"]["renders"] == first["properties"]["renders"]

    # A redelivered register (upsert) followed by augment converges on the same item.
    register(converted_l2a, settings, collection=collection)
    augment.run(registered, settings)
    third = fetch(stac_api, collection, converted_l2a.item_id)
    assert owned_links(third) == owned_links(first)
    assert third["assets"] == first["assets"]
    listed = httpx.get(f"{stac_api.url}/collections/{collection}/items", timeout=30).json()
    assert len(listed["features"]) == 1

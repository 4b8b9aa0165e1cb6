"""Visualisation on a STAC item: web-map links, a thumbnail asset and render hints.

`add_visualisation` is a pure function of the item, so applying it twice gives the same
item: the links and assets it owns are replaced, never appended twice.
"""

from __future__ import annotations

import copy
from typing import Any

from geozarr_pipeline.errors import UnsupportedProduct
from geozarr_pipeline.visual.links import RasterApi
from geozarr_pipeline.visual.rendering import (
    REFLECTANCE_GROUP,
    TRUE_COLOR_BANDS,
    Rendering,
    true_color,
)
from geozarr_pipeline.visual.titiler_eopf import wmts_layer

StacItem = dict[str, Any]

RENDER_EXTENSION = "https://stac-extensions.github.io/render/v2.0.0/schema.json"
WEB_MAP_LINKS_EXTENSION = "https://stac-extensions.github.io/web-map-links/v1.2.0/schema.json"
# Link relations this module owns: any existing link with one of them is replaced.
VISUAL_RELS = ("viewer", "xyz", "tilejson", "wmts")
THUMBNAIL_KEY = "thumbnail"
PRODUCT_KEY = "product"
ZARR_SUFFIX = ".zarr"


def split_zarr_href(href: str) -> tuple[str, str]:
    """`.../X.zarr/measurements/reflectance` -> (`.../X.zarr`, `/measurements/reflectance`).

    A href without a `.zarr` segment is taken as a store root with no group.
    """
    marker = href.find(ZARR_SUFFIX + "/")
    if marker < 0:
        return href.rstrip("/"), "/"
    store = href[: marker + len(ZARR_SUFFIX)]
    group = "/" + href[marker + len(ZARR_SUFFIX) + 1 :].strip("/")
    return store, group


def store_root(item: StacItem) -> str | None:
    """The item's GeoZarr store: its `store` link, its `product` asset, or a `.zarr` href."""
    for link in item.get("links") or []:
        if link.get("rel") == "store" and link.get("href"):
            return str(link["href"]).rstrip("/")
    assets: dict[str, Any] = item.get("assets") or {}
    product = assets.get(PRODUCT_KEY) or {}
    if product.get("href"):
        return str(product["href"]).rstrip("/")
    for asset in assets.values():
        href = str(asset.get("href", ""))
        if ZARR_SUFFIX + "/" in href or href.rstrip("/").endswith(ZARR_SUFFIX):
            return split_zarr_href(href)[0]
    return None


def storage_store(item: StacItem) -> str | None:
    """The store as the raster API reads it: the product's `s3` alternate, else its root."""
    product = (item.get("assets") or {}).get(PRODUCT_KEY) or {}
    alternate = ((product.get("alternate") or {}).get("s3") or {}).get("href")
    return str(alternate).rstrip("/") if alternate else store_root(item)


def group_of(item: StacItem, href: str) -> str:
    """The group an asset href points at, relative to the item's store."""
    root = store_root(item)
    if root and href.rstrip("/").startswith(root + "/"):
        return "/" + href.rstrip("/")[len(root) + 1 :]
    return split_zarr_href(href)[1]


def find_reflectance_asset(item: StacItem) -> tuple[str, str]:
    """The key and group of the asset holding the multiscale reflectance bands."""
    assets: dict[str, Any] = item.get("assets") or {}
    candidates = []
    for key, asset in assets.items():
        group = group_of(item, str(asset.get("href", "")))
        if key == "reflectance" or group.rstrip("/").endswith(REFLECTANCE_GROUP):
            candidates.append((key, group))
    if not candidates:
        raise UnsupportedProduct(
            f"item {item.get('id')!r} has no reflectance asset "
            f"(an asset keyed 'reflectance' or pointing at {REFLECTANCE_GROUP})",
            assets=sorted(assets),
        )
    candidates.sort(key=lambda pair: (pair[0] != "reflectance", pair[0]))
    key, group = candidates[0]
    bands = assets[key].get("bands") or assets[key].get("eo:bands") or []
    names = {str(band.get("name", "")).lower() for band in bands if isinstance(band, dict)}
    if names and not set(TRUE_COLOR_BANDS) <= names:
        missing = sorted(set(TRUE_COLOR_BANDS) - names)
        raise UnsupportedProduct(
            f"asset {key!r} of item {item.get('id')!r} lacks the true-colour bands {missing}"
        )
    return key, (group if group != "/" else REFLECTANCE_GROUP)


def default_rendering(item: StacItem) -> Rendering:
    """True colour from the item's reflectance asset."""
    key, group = find_reflectance_asset(item)
    return true_color(asset=key, group=group)


def visual_links(api: RasterApi, item: StacItem, rendering: Rendering) -> list[dict[str, Any]]:
    item_id = str(item["id"])
    collection = str(item["collection"])
    store = storage_store(item) or item_id
    return [
        {
            "rel": "viewer",
            "href": api.viewer_url(collection, item_id),
            "type": "text/html",
            "title": f"Viewer for {item_id}",
        },
        {
            "rel": "xyz",
            "href": api.tiles_url(collection, item_id, rendering),
            "type": "image/png",
            "title": rendering.title,
        },
        {
            "rel": "tilejson",
            "href": api.tilejson_url(collection, item_id, rendering),
            "type": "application/json",
            "title": f"TileJSON for {item_id}",
        },
        {
            "rel": "wmts",
            "href": api.wmts_url(collection, item_id, rendering),
            "type": "application/xml",
            "title": f"WMTS capabilities for {item_id}",
            "wmts:layer": wmts_layer(store, api.tms),
        },
    ]


def thumbnail_asset(
    api: RasterApi, collection: str, item_id: str, rendering: Rendering
) -> dict[str, Any]:
    return {
        "href": api.preview_url(collection, item_id, rendering),
        "type": "image/png",
        "roles": [THUMBNAIL_KEY],
        "title": rendering.title,
    }


def add_visualisation(
    item: StacItem, api: RasterApi, rendering: Rendering | None = None
) -> StacItem:
    """A copy of the item with links, thumbnail and renders (default: true colour)."""
    rendering = rendering or default_rendering(item)
    item_id = str(item["id"])
    collection = str(item.get("collection") or "")
    if not collection:
        raise UnsupportedProduct(f"item {item_id!r} names no collection")
    result = copy.deepcopy(item)

    kept = [link for link in result.get("links") or [] if link.get("rel") not in VISUAL_RELS]
    result["links"] = kept + visual_links(api, result, rendering)

    assets = dict(result.get("assets") or {})
    assets[THUMBNAIL_KEY] = thumbnail_asset(api, collection, item_id, rendering)
    result["assets"] = assets

    properties = dict(result.get("properties") or {})
    renders = dict(properties.get("renders") or {})
    renders[rendering.key] = rendering.render_entry()
    properties["renders"] = renders
    result["properties"] = properties

    extensions = list(result.get("stac_extensions") or [])
    for uri in (RENDER_EXTENSION, WEB_MAP_LINKS_EXTENSION):
        if uri not in extensions:
            extensions.append(uri)
    result["stac_extensions"] = extensions
    return result

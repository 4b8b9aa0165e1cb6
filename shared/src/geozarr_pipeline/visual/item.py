"""Visualisation on a STAC item: web-map links, a thumbnail asset and render hints.

The item is a pystac Item (`read_registered_item` reads the catalog's JSON): the links are
`pystac.Link`s (pystac has no web-map-links module, so `wmts:layer` is an extra field of the
link), the thumbnail a `pystac.Asset`, and the renders are written through pystac's render
extension (v2.0.0; `variables` and `bidx`, which its `Render` does not model, are kept in the
render's `properties`).

`visualise` is a pure function of the item's content, so applying it twice gives the same
item: the links and assets it owns are replaced, never appended twice.

The lookups (`store_root`, `storage_store`, `default_rendering`, ...) take a pystac Item or
the item's JSON: the local raster server reads items from the catalog as dicts, partial ones
included.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pystac
from pystac.extensions.render import Render, RenderExtension

from geozarr_pipeline.errors import UnsupportedProduct
from geozarr_pipeline.stac.item import read_registered_item
from geozarr_pipeline.visual.links import RasterApi
from geozarr_pipeline.visual.rendering import (
    REFLECTANCE_GROUP,
    TRUE_COLOR_BANDS,
    Rendering,
    true_color,
)
from geozarr_pipeline.visual.titiler_eopf import wmts_layer

StacItem = dict[str, Any]
# An item as pystac reads it, or its JSON.
ItemLike = pystac.Item | Mapping[str, Any]

# pystac's RenderExtension writes this version (its default and only supported one).
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


def _item_id(item: ItemLike) -> Any:
    return item.id if isinstance(item, pystac.Item) else item.get("id")


def _links(item: ItemLike) -> list[tuple[Any, Any]]:
    """(rel, href) of each link, hrefs as written."""
    if isinstance(item, pystac.Item):
        return [(link.rel, link.get_href(transform_href=False)) for link in item.links]
    return [(link.get("rel"), link.get("href")) for link in item.get("links") or []]


def _assets(item: ItemLike) -> dict[str, tuple[str, Mapping[str, Any]]]:
    """Each asset's href and the fields beyond pystac's own (`alternate`, `bands`, ...)."""
    if isinstance(item, pystac.Item):
        return {key: (asset.href, asset.extra_fields) for key, asset in item.assets.items()}
    assets: Mapping[str, Any] = item.get("assets") or {}
    return {key: (str(asset.get("href") or ""), asset) for key, asset in assets.items()}


def store_root(item: ItemLike) -> str | None:
    """The item's GeoZarr store: its `store` link, its `product` asset, or a `.zarr` href."""
    for rel, href in _links(item):
        if rel == "store" and href:
            return str(href).rstrip("/")
    assets = _assets(item)
    if PRODUCT_KEY in assets and assets[PRODUCT_KEY][0]:
        return assets[PRODUCT_KEY][0].rstrip("/")
    for href, _fields in assets.values():
        if ZARR_SUFFIX + "/" in href or href.rstrip("/").endswith(ZARR_SUFFIX):
            return split_zarr_href(href)[0]
    return None


def storage_store(item: ItemLike) -> str | None:
    """The store as the raster API reads it: the product's `s3` alternate, else its root."""
    _href, fields = _assets(item).get(PRODUCT_KEY) or ("", {})
    alternate = ((fields.get("alternate") or {}).get("s3") or {}).get("href")
    return str(alternate).rstrip("/") if alternate else store_root(item)


def group_of(item: ItemLike, href: str) -> str:
    """The group an asset href points at, relative to the item's store."""
    root = store_root(item)
    if root and href.rstrip("/").startswith(root + "/"):
        return "/" + href.rstrip("/")[len(root) + 1 :]
    return split_zarr_href(href)[1]


def find_reflectance_asset(item: ItemLike) -> tuple[str, str]:
    """The key and group of the asset holding the multiscale reflectance bands."""
    assets = _assets(item)
    candidates = []
    for key, (href, _fields) in assets.items():
        group = group_of(item, href)
        if key == "reflectance" or group.rstrip("/").endswith(REFLECTANCE_GROUP):
            candidates.append((key, group))
    if not candidates:
        raise UnsupportedProduct(
            f"item {_item_id(item)!r} has no reflectance asset "
            f"(an asset keyed 'reflectance' or pointing at {REFLECTANCE_GROUP})",
            assets=sorted(assets),
        )
    candidates.sort(key=lambda pair: (pair[0] != "reflectance", pair[0]))
    key, group = candidates[0]
    fields = assets[key][1]
    bands = fields.get("bands") or fields.get("eo:bands") or []
    names = {str(band.get("name", "")).lower() for band in bands if isinstance(band, dict)}
    if names and not set(TRUE_COLOR_BANDS) <= names:
        missing = sorted(set(TRUE_COLOR_BANDS) - names)
        raise UnsupportedProduct(
            f"asset {key!r} of item {_item_id(item)!r} lacks the true-colour bands {missing}"
        )
    return key, (group if group != "/" else REFLECTANCE_GROUP)


def default_rendering(item: ItemLike) -> Rendering:
    """True colour from the item's reflectance asset."""
    key, group = find_reflectance_asset(item)
    return true_color(asset=key, group=group)


def visual_links(api: RasterApi, item: pystac.Item, rendering: Rendering) -> list[pystac.Link]:
    """The viewer, XYZ, TileJSON and WMTS links (web-map-links fields as extra fields)."""
    item_id = item.id
    collection = str(item.collection_id or "")
    store = storage_store(item) or item_id
    return [
        pystac.Link(
            rel="viewer",
            target=api.viewer_url(collection, item_id),
            media_type="text/html",
            title=f"Viewer for {item_id}",
        ),
        pystac.Link(
            rel="xyz",
            target=api.tiles_url(collection, item_id, rendering),
            media_type="image/png",
            title=rendering.title,
        ),
        pystac.Link(
            rel="tilejson",
            target=api.tilejson_url(collection, item_id, rendering),
            media_type="application/json",
            title=f"TileJSON for {item_id}",
        ),
        pystac.Link(
            rel="wmts",
            target=api.wmts_url(collection, item_id, rendering),
            media_type="application/xml",
            title=f"WMTS capabilities for {item_id}",
            extra_fields={"wmts:layer": wmts_layer(store, api.tms)},
        ),
    ]


def thumbnail_asset(
    api: RasterApi, collection: str, item_id: str, rendering: Rendering
) -> pystac.Asset:
    return pystac.Asset(
        href=api.preview_url(collection, item_id, rendering),
        media_type="image/png",
        roles=[THUMBNAIL_KEY],
        title=rendering.title,
    )


def render_of(rendering: Rendering) -> Render:
    """The render-extension object of a rendering (the same as `Rendering.render_entry`).

    Fields are set in the order the entry has always been written in; `variables` and
    `bidx` (titiler-eopf's, not modelled by pystac's `Render`) go into its `properties`.
    """
    render = Render({})
    render.title = rendering.title
    render.assets = [rendering.asset]
    render.rescale = [list(rendering.rescale)]
    render.properties["variables"] = list(rendering.variables)
    render.properties["bidx"] = list(rendering.bidx)
    render.color_formula = rendering.color_formula or None
    return render


def _declare(item: pystac.Item, uri: str) -> None:
    """Declare the extension at exactly `uri`, once (pystac's `add_to` accepts any version)."""
    if uri not in item.stac_extensions:
        item.stac_extensions.append(uri)


def visualise(item: pystac.Item, api: RasterApi, rendering: Rendering | None = None) -> None:
    """Add the links, thumbnail and renders (default: true colour) to the item, in place."""
    rendering = rendering or default_rendering(item)
    collection = item.collection_id or ""
    if not collection:
        raise UnsupportedProduct(f"item {item.id!r} names no collection")

    for rel in VISUAL_RELS:
        item.remove_links(rel)
    item.add_links(visual_links(api, item, rendering))

    item.add_asset(THUMBNAIL_KEY, thumbnail_asset(api, collection, item.id, rendering))

    _declare(item, RENDER_EXTENSION)
    render = RenderExtension.ext(item)
    renders = render.renders if item.properties.get("renders") else {}
    render.renders = {**renders, rendering.key: render_of(rendering)}

    _declare(item, WEB_MAP_LINKS_EXTENSION)


def add_visualisation(
    item: StacItem, api: RasterApi, rendering: Rendering | None = None
) -> StacItem:
    """A copy of the item's JSON with links, thumbnail and renders (default: true colour).

    Read and built with pystac (`visualise`); every link read is kept, the self link too.
    """
    read = read_registered_item(item, repr(item.get("id")))
    visualise(read, api, rendering)
    return copy.deepcopy(read.to_dict(include_self_link=True, transform_hrefs=False))

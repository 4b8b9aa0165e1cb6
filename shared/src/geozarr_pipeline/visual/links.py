"""URLs of the raster API for one item, in the shapes operators already use.

{raster}/collections/{collection}/items/{item}/viewer
{raster}/collections/{collection}/items/{item}/tiles/WebMercatorQuad/{z}/{x}/{y}.png?...
{raster}/collections/{collection}/items/{item}/WebMercatorQuad/tilejson.json?...
{raster}/collections/{collection}/items/{item}/WebMercatorQuad/WMTSCapabilities.xml
{raster}/collections/{collection}/items/{item}/preview?format=png&...
"""

from __future__ import annotations

from dataclasses import dataclass

from geozarr_pipeline.visual.encoding import quote_value, with_query
from geozarr_pipeline.visual.rendering import Rendering

DEFAULT_TMS = "WebMercatorQuad"
TILE_TEMPLATE = "{z}/{x}/{y}"


@dataclass(frozen=True)
class RasterApi:
    """The raster API at `base_url` (no trailing slash needed)."""

    base_url: str
    tms: str = DEFAULT_TMS

    def item_root(self, collection: str, item_id: str) -> str:
        base = self.base_url.rstrip("/")
        return f"{base}/collections/{quote_value(collection)}/items/{quote_value(item_id)}"

    def viewer_url(self, collection: str, item_id: str) -> str:
        return f"{self.item_root(collection, item_id)}/viewer"

    def tiles_url(self, collection: str, item_id: str, rendering: Rendering) -> str:
        root = self.item_root(collection, item_id)
        return with_query(f"{root}/tiles/{self.tms}/{TILE_TEMPLATE}.png", rendering.query())

    def tilejson_url(self, collection: str, item_id: str, rendering: Rendering) -> str:
        root = self.item_root(collection, item_id)
        return with_query(f"{root}/{self.tms}/tilejson.json", rendering.query())

    def wmts_url(self, collection: str, item_id: str) -> str:
        return f"{self.item_root(collection, item_id)}/{self.tms}/WMTSCapabilities.xml"

    def preview_url(self, collection: str, item_id: str, rendering: Rendering) -> str:
        root = self.item_root(collection, item_id)
        return with_query(f"{root}/preview", [("format", "png"), *rendering.query()])

"""URLs of the raster API for one item, built on the titiler-eopf contract (`titiler_eopf`).

{raster}/collections/{collection}/items/{item}/viewer
{raster}/collections/{collection}/items/{item}/tiles/WebMercatorQuad/{z}/{x}/{y}.png?tilesize=256&...
{raster}/collections/{collection}/items/{item}/WebMercatorQuad/tilejson.json?tilesize=256&...
{raster}/collections/{collection}/items/{item}/WMTSCapabilities.xml?...
{raster}/collections/{collection}/items/{item}/preview.png?max_size=512&...
"""

from __future__ import annotations

from dataclasses import dataclass

from geozarr_pipeline.visual import titiler_eopf as contract
from geozarr_pipeline.visual.encoding import quote_value, with_query
from geozarr_pipeline.visual.rendering import Rendering

DEFAULT_TMS = contract.DEFAULT_TMS
TILE_FORMAT = "png"
# The long side of the thumbnail: a preview of this size reads a coarse level.
THUMBNAIL_SIZE = 512
# titiler.core passes the query's `tilesize` (None when absent) to titiler-eopf's reader, which
# then sizes the output at native resolution and reads the finest level at every zoom
# (titiler/eopf/reader.py, get_target_resolution): tile links name their size.
TILE_SIZE = 256


@dataclass(frozen=True)
class RasterApi:
    """The raster API at `base_url` (no trailing slash needed)."""

    base_url: str
    tms: str = DEFAULT_TMS

    def item_root(self, collection: str, item_id: str) -> str:
        base = self.base_url.rstrip("/")
        prefix = contract.ITEM_PREFIX.format(
            collection_id=quote_value(collection), item_id=quote_value(item_id)
        )
        return f"{base}{prefix}"

    def viewer_url(self, collection: str, item_id: str) -> str:
        return self.item_root(collection, item_id) + contract.VIEWER.path()

    def tiles_url(self, collection: str, item_id: str, rendering: Rendering) -> str:
        path = contract.TILE.path(
            tileMatrixSetId=self.tms, z="{z}", x="{x}", y="{y}", format=TILE_FORMAT
        )
        query = [("tilesize", str(TILE_SIZE)), *rendering.query()]
        return with_query(self.item_root(collection, item_id) + path, query)

    def tilejson_url(self, collection: str, item_id: str, rendering: Rendering) -> str:
        path = contract.TILEJSON.path(tileMatrixSetId=self.tms)
        query = [("tilesize", str(TILE_SIZE)), *rendering.query()]
        return with_query(self.item_root(collection, item_id) + path, query)

    def wmts_url(self, collection: str, item_id: str, rendering: Rendering) -> str:
        path = contract.WMTS.path()
        return with_query(self.item_root(collection, item_id) + path, rendering.query())

    def preview_url(self, collection: str, item_id: str, rendering: Rendering) -> str:
        path = contract.PREVIEW.path(format=TILE_FORMAT)
        query = [("max_size", str(THUMBNAIL_SIZE)), *rendering.query()]
        return with_query(self.item_root(collection, item_id) + path, query)

"""Visualisation of registered items: raster-API links, renders, thumbnail, URL encoding."""

from geozarr_pipeline.visual.encoding import encode_query, quote_value, with_query
from geozarr_pipeline.visual.item import (
    RENDER_EXTENSION,
    VISUAL_RELS,
    WEB_MAP_LINKS_EXTENSION,
    add_visualisation,
    default_rendering,
    split_zarr_href,
    visualise,
)
from geozarr_pipeline.visual.links import DEFAULT_TMS, RasterApi
from geozarr_pipeline.visual.rendering import Rendering, true_color

__all__ = [
    "DEFAULT_TMS",
    "RENDER_EXTENSION",
    "VISUAL_RELS",
    "WEB_MAP_LINKS_EXTENSION",
    "RasterApi",
    "Rendering",
    "add_visualisation",
    "default_rendering",
    "encode_query",
    "quote_value",
    "split_zarr_href",
    "true_color",
    "visualise",
    "with_query",
]

"""The raster API's URL contract: titiler-eopf's item routes, query parameters and levels.

Read from EOPF-Explorer/titiler-eopf at commit 4c9f7a88995baada367992c0b84b76552a30ec73
(2026-07-21), the production raster API; the local raster server implements the same:

- `titiler/eopf/main.py`: the item factory is mounted at
  `/collections/{collection_id}/items/{item_id}`.
- `titiler/eopf/factory.py` (titiler.core's TilerFactory routes): tiles at
  `/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}`, TileJSON at
  `/{tileMatrixSetId}/tilejson.json`, whole-item images at `/preview.{format}`.
- `titiler/eopf/extensions.py`: `/viewer` (EOPFViewerExtension) and `/WMTSCapabilities.xml`
  (EOPFwmtsExtension) directly under the item, with `variables` or `expression` in the
  query and no tile matrix set segment: the document lists every supported one.
- `titiler/eopf/dependencies.py`: LayerParams = `bidx` + `expression` + `variables`, the
  latter `{group}:{variable}` repeated once per output band; one of `variables` and
  `expression` is required on every image route. DatasetPathParams: the store of an item
  is `{store root}/{collection_id}/{item_id}.zarr`, found by name, not through the catalog.
- `titiler/eopf/reader.py` (`get_multiscale_level`, `get_target_resolution`): when the group
  of a variable carries a `multiscales` layout, each read takes the level whose resolution
  fits the output's, so variables name the multiscale group (`/measurements/reflectance:b04`)
  and the level follows the zoom. A variable naming a level (`.../reflectance/r10m:b04`)
  always reads that level. The choice is over the whole layout: a level chosen that lacks the
  variable fails the read.
- The output size matters: titiler.core's tile route hands the query's `tilesize` (None when
  absent) to the reader, and without it `get_target_resolution` sizes the output at native
  resolution, so the finest level is read at every zoom. A tile URL names `tilesize`; the
  TileJSON route adds `tilesize=512` to its tiles when the query has none; the WMTS route
  drops `tilesize` from its tiles' query (extensions.py), so WMTS tiles read the finest level
  at every zoom in production (an upstream limitation, mirrored by the local server).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

UPSTREAM_REPOSITORY = "EOPF-Explorer/titiler-eopf"
UPSTREAM_COMMIT = "4c9f7a88995baada367992c0b84b76552a30ec73"

ITEM_PREFIX = "/collections/{collection_id}/items/{item_id}"
DEFAULT_TMS = "WebMercatorQuad"

LAYER_PARAMETERS = frozenset({"variables", "expression", "bidx", "sel"})
RENDER_PARAMETERS = frozenset(
    {
        "rescale",
        "color_formula",
        "colormap_name",
        "colormap",
        "nodata",
        "resampling",
        "reproject",
        "return_mask",
        "algorithm",
        "algorithm_params",
        "unscale",
    }
)


@dataclass(frozen=True)
class Route:
    """One route under the item prefix: its path template and the query it accepts."""

    name: str
    template: str
    needs_layer: bool
    own_parameters: frozenset[str] = field(default_factory=frozenset)

    @property
    def parameters(self) -> frozenset[str]:
        if not self.needs_layer:
            return self.own_parameters
        return self.own_parameters | LAYER_PARAMETERS | RENDER_PARAMETERS

    @property
    def pattern(self) -> re.Pattern[str]:
        regex = re.escape(self.template)
        for name in re.findall(r"\{(\w+)\}", self.template):
            regex = regex.replace(re.escape("{" + name + "}"), f"(?P<{name}>[^/]+?)", 1)
        return re.compile(f"^{regex}$")

    def path(self, **values: str) -> str:
        return self.template.format(**values)


VIEWER = Route("viewer", "/viewer", needs_layer=False)
TILE = Route(
    "tile",
    "/tiles/{tileMatrixSetId}/{z}/{x}/{y}.{format}",
    needs_layer=True,
    own_parameters=frozenset({"tilesize", "buffer", "padding"}),
)
TILEJSON = Route(
    "tilejson",
    "/{tileMatrixSetId}/tilejson.json",
    needs_layer=True,
    own_parameters=frozenset({"tile_format", "tilesize", "minzoom", "maxzoom"}),
)
WMTS = Route(
    "wmts",
    "/WMTSCapabilities.xml",
    needs_layer=True,
    own_parameters=frozenset({"tile_format", "use_epsg", "minzoom", "maxzoom"}),
)
PREVIEW = Route(
    "preview",
    "/preview.{format}",
    needs_layer=True,
    own_parameters=frozenset({"max_size", "width", "height", "dst_crs"}),
)
ROUTES = (VIEWER, TILE, TILEJSON, WMTS, PREVIEW)
IMAGE_FORMATS = frozenset({"png", "npy", "tif", "jpeg", "jpg", "jp2", "webp", "pngraw"})


def variable_spec(group: str, variable: str) -> str:
    """`/measurements/reflectance` + `b04` -> `/measurements/reflectance:b04`."""
    return f"/{group.strip('/')}:{variable}"


def split_variable(spec: str) -> tuple[str, str]:
    """`/measurements/reflectance:b04` -> (`/measurements/reflectance`, `b04`)."""
    group, separator, variable = spec.rpartition(":")
    if not separator or not variable:
        raise ValueError(f"variable {spec!r} is not of the form '/{{group}}:{{variable}}'")
    return "/" + group.strip("/"), variable


def item_store(store_root: str, collection_id: str, item_id: str) -> str:
    """Where titiler-eopf looks for an item's store (dependencies.py, DatasetPathParams)."""
    return f"{store_root.rstrip('/')}/{collection_id}/{item_id}.zarr"


def wmts_layer(store_url: str, tms: str = DEFAULT_TMS) -> str:
    """The identifier of the WMTS layer of an item's default rendering.

    extensions.py (EOPFwmtsExtension) names each layer `{title}_{tms}_{render name}`, the
    title being the store path the item resolves to and the render name `default`.
    """
    return f"{store_url.rstrip('/')}_{tms}_default"


@dataclass(frozen=True)
class RasterRequest:
    """A raster-API URL parsed back into its route, path values and query."""

    route: Route
    collection_id: str
    item_id: str
    path_values: Mapping[str, str]
    query: tuple[tuple[str, str], ...]
    raw_query: str

    def values(self, key: str) -> list[str]:
        return [value for name, value in self.query if name == key]


def parse_url(url: str, base_url: str) -> RasterRequest:
    """Parse a URL of the raster API at `base_url`; ValueError if it is not one of its routes."""
    base = urlsplit(base_url.rstrip("/"))
    parts = urlsplit(url)
    if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
        raise ValueError(f"{url} is not on the raster API {base_url}")
    prefix = base.path.rstrip("/") + "/collections/"
    if not parts.path.startswith(prefix):
        raise ValueError(f"{url} is not under {prefix}")
    collection_id, items, rest = parts.path[len(prefix) :].partition("/items/")
    item_id, slash, tail = rest.partition("/")
    if not items or not item_id or not slash:
        raise ValueError(f"{url} names no collection and item")
    for route in ROUTES:
        match = route.pattern.match("/" + tail)
        if match:
            return RasterRequest(
                route=route,
                collection_id=unquote(collection_id),
                item_id=unquote(item_id),
                path_values={k: unquote(v) for k, v in match.groupdict().items()},
                query=tuple(parse_qsl(parts.query, keep_blank_values=True)),
                raw_query=parts.query,
            )
    raise ValueError(f"{url}: no route of the raster API matches /{tail}")


def contract_problems(url: str, base_url: str) -> list[str]:
    """What a raster-API URL gets wrong against the contract (empty when it keeps it)."""
    try:
        request = parse_url(url, base_url)
    except ValueError as exc:
        return [str(exc)]
    problems: list[str] = []
    route = request.route
    unknown = sorted({key for key, _ in request.query} - route.parameters)
    if unknown:
        problems.append(f"{route.name}: query parameters not in the contract: {unknown}")
    if "+" in request.raw_query:
        problems.append(f"{route.name}: '+' in the query (spaces must be encoded as %20)")
    fmt = request.path_values.get("format")
    if fmt is not None and fmt not in IMAGE_FORMATS:
        problems.append(f"{route.name}: unknown image format {fmt!r}")
    if route is TILE and not request.values("tilesize"):
        problems.append("tile: no tilesize (titiler-eopf then reads the finest level)")
    if route.needs_layer:
        variables = request.values("variables")
        if not variables and not request.values("expression"):
            problems.append(f"{route.name}: neither variables nor expression")
        for spec in variables:
            try:
                split_variable(spec)
            except ValueError as exc:
                problems.append(f"{route.name}: {exc}")
    return problems


# The Zarr conventions reader.py recognises by uuid (`_has_multiscales`, `_has_spatial`).
MULTISCALES_CONVENTION = "d35379db-88df-4056-af3a-620245f8e347"
SPATIAL_CONVENTION = "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4"


def multiscale_group_problems(attributes: Mapping[str, Any]) -> list[str]:
    """What keeps titiler-eopf from reading a group as multiscale, level by tile (reader.py,
    `_get_variable`): the multiscales convention, spatial dimensions, a transform per level."""
    problems = []
    conventions = attributes.get("zarr_conventions") or []
    uuids = {c.get("uuid") for c in conventions if isinstance(c, Mapping)}
    if MULTISCALES_CONVENTION not in uuids:
        problems.append("zarr_conventions does not name the multiscales convention")
    if SPATIAL_CONVENTION in uuids and not attributes.get("spatial:dimensions"):
        problems.append("no spatial:dimensions beside the spatial convention")
    layout = (attributes.get("multiscales") or {}).get("layout") or []
    try:
        layout_resolutions(layout)
    except (ValueError, KeyError, TypeError) as exc:
        problems.append(str(exc))
    return problems


ZoomLevelStrategy = Literal["AUTO", "LOWER", "UPPER"]
STRATEGY_PERCENT = {"AUTO": 50, "LOWER": 100, "UPPER": 0}


def layout_resolutions(layout: Sequence[Mapping[str, Any]]) -> list[tuple[str, float]]:
    """(asset, resolution) of each layout entry, in layout order, from its `spatial:transform`."""
    found = []
    for entry in layout:
        transform = entry.get("spatial:transform")
        if not isinstance(transform, Sequence) or len(transform) < 5:
            raise ValueError(f"multiscales layout entry {entry.get('asset')!r} has no transform")
        found.append((str(entry["asset"]), min(abs(transform[0]), abs(transform[4]))))
    return found


def multiscale_level(
    layout: Sequence[Mapping[str, Any]],
    target_resolution: float,
    strategy: ZoomLevelStrategy = "AUTO",
) -> str:
    """The level of a multiscales layout titiler-eopf reads for an output resolution.

    Mirrors `get_multiscale_level` of titiler/eopf/reader.py at the commit above: from the
    coarsest level, take a level once the target is more than half-way (AUTO) from the next
    finer one towards it; else the first level of the layout.
    """
    resolutions = layout_resolutions(layout)
    if not resolutions:
        raise ValueError("empty multiscales layout")
    percentage = STRATEGY_PERCENT.get(strategy, 50)
    available = sorted(resolutions, key=lambda pair: pair[1], reverse=True)
    if len(available) == 1:
        return available[0][0]
    for (asset, current), (_, finer) in itertools.pairwise(available):
        threshold = finer - (finer - current) * (percentage / 100.0)
        if target_resolution > threshold or target_resolution == current:
            return asset
    return resolutions[0][0]

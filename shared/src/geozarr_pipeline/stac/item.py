"""Build the registered STAC item from the source item and the converted store's structure.

Nothing here is guessed from path names: the reflectance pyramid is the group carrying a
`multiscales` layout, bands are the arrays its levels really hold, and every other asset is
a group of the store that exists and has a grid.

Items are read and built as pystac Items. pystac's projection extension (v2.0.0) writes the
`proj:*` fields. Its eo and raster extension classes are v1.1.0 (`eo:bands`, `raster:bands`),
while the item declares eo and raster v2.0.0 with STAC 1.1 `bands`, so band fields, `gsd`,
`alternate` and the processing properties are plain extra fields.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any

import pystac
from pystac.extensions.projection import ProjectionExtension
from pystac.utils import str_to_datetime

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import InvalidInput, OutputCheckFailed
from geozarr_pipeline.stac.grid import Grid, group_grid, multiscale_grids
from geozarr_pipeline.stac.hrefs import ALTERNATE_ASSETS_EXTENSION, asset_hrefs
from geozarr_pipeline.stac.store import StoreTree, ZarrNode

ZARR_MULTISCALES = "application/vnd.zarr; version=3; profile=multiscales"
ZARR_V3 = "application/vnd.zarr; version=3"
EXTENSIONS = {
    "projection": ProjectionExtension.get_schema_uri(),
    "eo": "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v2.0.0/schema.json",
    "alternate-assets": ALTERNATE_ASSETS_EXTENSION,
}
# Properties that describe the source product's own layout, not the converted store.
SOURCE_ONLY_PROPERTIES = ("proj:bbox", "proj:shape", "proj:transform", "proj:epsg", "proj:wkt2")
# Source links not carried over: the catalog sets its own, and derived_from points at the source.
DROPPED_SOURCE_LINK_RELS = frozenset({"self", "root", "parent", "collection", "derived_from"})
# Source asset fields an auxiliary asset takes over when the store does not state them.
SOURCE_RASTER_FIELDS = ("raster:scale", "raster:offset")
# A bbox agrees with its geometry when it holds the geometry's bounds (within float rounding)
# and no side lies further out than this share of the geometry's span.
BBOX_ROUNDING_DEGREES = 1e-7
BBOX_SLACK = 0.01


@dataclass(frozen=True)
class AuxiliaryLayer:
    """A non-reflectance variable worth its own asset, wherever the store holds it."""

    variable: str
    key: str
    title: str
    roles: tuple[str, ...]


AUXILIARY_LAYERS = (
    AuxiliaryLayer("scl", "SCL", "Scene classification map (SCL)", ("data", "classification")),
    AuxiliaryLayer("aot", "AOT", "Aerosol optical thickness (AOT)", ("data",)),
    AuxiliaryLayer("wvp", "WVP", "Water vapour (WVP)", ("data",)),
    AuxiliaryLayer("cld", "CLD", "Cloud probability", ("data", "cloud")),
    AuxiliaryLayer("snw", "SNW", "Snow probability", ("data", "snow-ice")),
)


class RegisteredItem(pystac.Item):
    """A pystac Item that writes `datetime` as the source wrote it.

    pystac writes a datetime in its own form (`Z`, microseconds when there are any); a source's
    `+00:00` or millisecond text names the same instant and is kept as it was published.
    """

    datetime_text: str | None = None

    def to_dict(
        self, include_self_link: bool = True, transform_hrefs: bool = True
    ) -> dict[str, Any]:
        data = super().to_dict(include_self_link=include_self_link, transform_hrefs=transform_hrefs)
        text = self.datetime_text
        if text is not None and str_to_datetime(text) == self.datetime:
            data["properties"]["datetime"] = text
        return data


def item_dict(item: pystac.Item) -> dict[str, Any]:
    """The item's JSON as the catalog stores it: no self link, hrefs as they are, a copy."""
    return copy.deepcopy(item.to_dict(include_self_link=False, transform_hrefs=False))


def read_source_item(data: dict[str, Any], where: str) -> pystac.Item:
    """The source item read by pystac, not migrated: its fields and extensions as published."""
    published = (data.get("properties") or {}).get("datetime")
    if published is not None:
        try:
            str_to_datetime(published)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput(
                f"source item {where}: datetime {str(published)[:60]!r} is not an RFC 3339 "
                "date-time",
                field="datetime",
            ) from exc
    try:
        return pystac.Item.from_dict(data, migrate=False)
    except (pystac.STACError, pystac.STACTypeError, AttributeError, KeyError, TypeError) as exc:
        raise InvalidInput(f"source item {where} is not a STAC item: {exc}") from exc


def read_registered_item(data: dict[str, Any], where: str) -> RegisteredItem:
    """A registered item, as a catalog returns it, read by pystac and not migrated.

    Written back (`to_dict(transform_hrefs=False)`, or `item_dict`, which leaves out the self
    link) it is the JSON that was read: its datetime text kept, links with their extra fields.
    """
    try:
        item = RegisteredItem.from_dict(data, migrate=False)
    except (
        pystac.STACError,
        pystac.STACTypeError,
        AttributeError,
        KeyError,
        TypeError,
        ValueError,
        OverflowError,
    ) as exc:
        raise InvalidInput(f"item {where} is not a STAC item: {str(exc)[:300]}") from exc
    published = item.properties.get("datetime")
    item.datetime_text = published if isinstance(published, str) else None
    return item


def _extension_key(url: str) -> str:
    """`https://stac-extensions.github.io/eo/v2.0.0/schema.json` -> `.../eo`."""
    return url.rsplit("/v", 1)[0]


def merge_extensions(source: list[str], ours: list[str]) -> list[str]:
    """Source extensions kept, ours added, an extension at two versions kept only at ours."""
    our_keys = {_extension_key(u) for u in ours}
    kept = [u for u in source if _extension_key(u) not in our_keys]
    return sorted(set(kept) | set(ours))


def _fill_value(node: ZarrNode) -> float | int | str | None:
    value = node.metadata.get("fill_value")
    if isinstance(value, str):
        lowered = value.lower()
        if lowered == "nan":
            return "nan"
        if lowered in ("infinity", "inf"):
            return "inf"
        if lowered in ("-infinity", "-inf"):
            return "-inf"
        return None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, int | float):
        return value
    return None


def raster_fields(node: ZarrNode) -> dict[str, Any]:
    """data_type, nodata and scale/offset of an array, from its own metadata.

    nodata only where the array declares a CF `_FillValue`: that is what clients mask
    (xarray ignores a Zarr v3 `fill_value` without it). A class map or a probability written
    without one has no nodata; its fill value 0 is a class or 0 %, not "no data"."""
    fields: dict[str, Any] = {}
    if node.data_type:
        fields["data_type"] = node.data_type
    nodata = _fill_value(node) if "_FillValue" in node.attributes else None
    if nodata is not None:
        fields["nodata"] = nodata
    scale = node.attributes.get("scale_factor")
    offset = node.attributes.get("add_offset")
    if isinstance(scale, int | float) and not isinstance(scale, bool):
        fields["raster:scale"] = scale
    if isinstance(offset, int | float) and not isinstance(offset, bool):
        fields["raster:offset"] = offset
    return fields


def band_catalogue(source_item: pystac.Item) -> dict[str, dict[str, Any]]:
    """Spectral description of each band (lower-case name) from the source item.

    Reads STAC 1.1 `bands` of the assets and properties, and the older `eo:bands`.
    """
    found: dict[str, dict[str, Any]] = {}

    def add(entry: dict[str, Any]) -> None:
        name = str(entry.get("name", "")).lower()
        if not name:
            return
        if name.isdigit() or (len(name) == 2 and name[0].isdigit()):
            name = f"b{name}"
        info = found.setdefault(name, {})
        for ours, keys in (
            ("description", ("description",)),
            ("eo:common_name", ("eo:common_name", "common_name")),
            ("eo:center_wavelength", ("eo:center_wavelength", "center_wavelength")),
            ("eo:full_width_half_max", ("eo:full_width_half_max", "full_width_half_max")),
        ):
            for key in keys:
                if key in entry and ours not in info:
                    value = entry[key]
                    if ours == "eo:center_wavelength" and isinstance(value, int | float):
                        # Some sources give nanometres; STAC wants micrometres.
                        value = round(value / 1000 if value > 100 else value, 6)
                    info[ours] = value

    def asset_bands(asset: pystac.Asset) -> list[dict[str, Any]]:
        bands = asset.extra_fields.get("bands") or asset.extra_fields.get("eo:bands") or []
        return [entry for entry in bands if isinstance(entry, dict)]

    for asset in source_item.assets.values():
        bands = asset_bands(asset)
        if len(bands) == 1:
            add(bands[0])
    for asset in source_item.assets.values():
        for entry in asset_bands(asset):
            add(entry)
    for entry in source_item.properties.get("bands") or []:
        if isinstance(entry, dict):
            add(entry)
    return found


def _level_resolution(grids: dict[str, Grid], name: str) -> float:
    grid = grids.get(name)
    return grid.resolution if grid else math.inf


def _zarr_asset(
    media_type: str, title: str, roles: list[str], grid: Grid, fields: dict[str, Any]
) -> pystac.Asset:
    """An asset of the store on `grid`; its href is set once every asset is known."""
    asset = pystac.Asset(
        href="",
        media_type=media_type,
        title=title,
        roles=roles,
        extra_fields={"gsd": grid.resolution},
    )
    grid.describe(ProjectionExtension.ext(asset))
    asset.extra_fields.update(fields)
    return asset


def reflectance_asset(
    tree: StoreTree, pyramid: ZarrNode, bands_info: dict[str, dict[str, Any]]
) -> tuple[pystac.Asset, Grid]:
    grids = multiscale_grids(tree, pyramid)
    if not grids:
        raise OutputCheckFailed(f"{pyramid.path}: no level of the multiscales layout has a grid")
    levels = sorted(grids, key=lambda name: _level_resolution(grids, name))
    finest = grids[levels[0]]
    bands: dict[str, dict[str, Any]] = {}
    for level in levels:
        grid = grids[level]
        for array in tree.children(f"{pyramid.path}/{level}"):
            if not array.is_array or len(array.shape) < 2 or array.name in bands:
                continue
            if array.name not in bands_info and "long_name" not in array.attributes:
                continue
            band: dict[str, Any] = {"name": array.name}
            band.update(bands_info.get(array.name, {}))
            if "description" not in band and isinstance(array.attributes.get("long_name"), str):
                band["description"] = array.attributes["long_name"]
            band.update(raster_fields(array))
            band["gsd"] = grid.resolution
            bands[array.name] = band
    if not bands:
        raise OutputCheckFailed(f"{pyramid.path}: the pyramid holds no band arrays")
    asset = _zarr_asset(
        ZARR_MULTISCALES,
        "Surface reflectance (multiscale GeoZarr)",
        ["data", "reflectance"],
        finest,
        {"bands": [bands[name] for name in sorted(bands)]},
    )
    return asset, finest


def auxiliary_assets(
    tree: StoreTree, source_assets: dict[str, pystac.Asset], skip_prefix: str
) -> dict[str, tuple[str, pystac.Asset]]:
    """Asset key -> (node path, asset) for the auxiliary layers the store holds.

    Each layer is taken at its finest resolution; groups inside the pyramid are skipped.
    """
    chosen: dict[str, tuple[float, str, str, pystac.Asset]] = {}
    for group in tree.groups():
        if not group.path or group.path.startswith(skip_prefix):
            continue
        children = {n.name: n for n in tree.children(group.path) if n.is_array}
        layers = [layer for layer in AUXILIARY_LAYERS if layer.variable in children]
        if not layers:
            continue
        grid = group_grid(tree, group)
        if grid is None:
            continue
        for layer in layers:
            previous = chosen.get(layer.key)
            if previous is not None and previous[0] <= grid.resolution:
                continue
            array = children[layer.variable]
            key = f"{layer.key}_{grid.resolution:g}m"
            asset = _zarr_asset(ZARR_V3, layer.title, list(layer.roles), grid, raster_fields(array))
            source = source_assets.get(key)
            if source is not None:
                asset.description = source.description
                for field in SOURCE_RASTER_FIELDS:
                    if field in source.extra_fields and field not in asset.extra_fields:
                        asset.extra_fields[field] = source.extra_fields[field]
            long_name = array.attributes.get("long_name")
            if asset.description is None and isinstance(long_name, str):
                asset.description = long_name
            chosen[layer.key] = (grid.resolution, key, array.path, asset)
    return {key: (path, asset) for _resolution, key, path, asset in chosen.values()}


def find_pyramid(tree: StoreTree) -> ZarrNode:
    """The reflectance pyramid: the group with a `multiscales` layout holding band arrays."""
    candidates = [g for g in tree.groups() if "multiscales" in g.attributes]
    preferred = [g for g in candidates if g.name == "reflectance"] or candidates
    if not preferred:
        raise OutputCheckFailed(f"{tree.url}: no group with a multiscales layout")
    return sorted(preferred, key=lambda g: g.path)[0]


def _is_position(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) >= 2
        and all(isinstance(c, int | float) and not isinstance(c, bool) for c in value[:2])
    )


def normalized_longitude(lon: float) -> float:
    """The longitude in [-180, 180]: one written past the antimeridian (180.5, or -180.5)
    is the same meridian on the other side of it (-179.5, or 179.5)."""
    if -180.0 <= lon <= 180.0:
        return lon
    wrapped = (lon + 180.0) % 360.0 - 180.0
    return 180.0 if wrapped == -180.0 and lon > 0 else wrapped


def _sequences(geometry: dict[str, Any]) -> list[list[tuple[float, float]]]:
    """The geometry's coordinate sequences (rings, lines, points) as (lon, lat) pairs, the
    longitudes normalised to [-180, 180] (`normalized_longitude`)."""
    if geometry.get("type") == "GeometryCollection":
        parts = geometry.get("geometries") or []
        return [seq for part in parts if isinstance(part, dict) for seq in _sequences(part)]
    sequences: list[list[tuple[float, float]]] = []

    def collect(coords: Any) -> None:
        if _is_position(coords):
            sequences.append([(normalized_longitude(float(coords[0])), float(coords[1]))])
        elif isinstance(coords, list) and coords and all(_is_position(c) for c in coords):
            sequences.append([(normalized_longitude(float(c[0])), float(c[1])) for c in coords])
        elif isinstance(coords, list):
            for part in coords:
                collect(part)

    collect(geometry.get("coordinates"))
    return sequences


def _has_long_edge(sequence: list[tuple[float, float]]) -> bool:
    """An edge over 180 degrees of longitude: taken the shorter way, it crosses 180."""
    return any(abs(b[0] - a[0]) > 180.0 for a, b in itertools.pairwise(sequence))


def _eastward(sequence: list[tuple[float, float]]) -> list[float]:
    """Longitudes counted eastwards across 180: -179 is 181 in a part that crosses 180 and in
    a part lying west of 0 (the western half of a geometry split at the antimeridian)."""
    lons = [lon for lon, _lat in sequence]
    if _has_long_edge(sequence):
        return [lon + 360.0 if lon < 0 else lon for lon in lons]
    if lons and max(lons) <= 0:
        return [lon + 360.0 for lon in lons]
    return lons


def crosses_antimeridian(geometry: dict[str, Any]) -> bool:
    """Whether the geometry spans the antimeridian.

    Edges are taken the shorter way round, so a part with an edge over 180 degrees of
    longitude crosses it. A geometry split at the antimeridian (a part reaching +180, another
    reaching -180) does when it is narrower counted eastwards across 180 than across 0; a
    single part reaching both goes round the globe.
    """
    sequences = [seq for seq in _sequences(geometry) if seq]
    if any(_has_long_edge(seq) for seq in sequences):
        return True
    reaches_east = [
        max(lon for lon, _ in seq) >= 180.0 - BBOX_ROUNDING_DEGREES for seq in sequences
    ]
    reaches_west = [
        min(lon for lon, _ in seq) <= BBOX_ROUNDING_DEGREES - 180.0 for seq in sequences
    ]
    if not any(reaches_east) or not any(reaches_west):
        return False
    if any(e and w for e, w in zip(reaches_east, reaches_west, strict=True)):
        return False
    lons = [lon for seq in sequences for lon, _lat in seq]
    eastward = [lon for seq in sequences for lon in _eastward(seq)]
    return max(eastward) - min(eastward) < max(lons) - min(lons)


def geometry_bbox(geometry: dict[str, Any]) -> list[float] | None:
    """The geometry's bounds, longitudes in [-180, 180]; west > east when it crosses the
    antimeridian."""
    sequences = [seq for seq in _sequences(geometry) if seq]
    if not sequences:
        return None
    lats = [lat for seq in sequences for _lon, lat in seq]
    if crosses_antimeridian(geometry):
        eastward = [lon for seq in sequences for lon in _eastward(seq)]
        west, east = min(eastward), max(eastward) - 360.0
        # Within [-180, 180] already but for float rounding at the antimeridian itself.
        return [max(west, -180.0), min(lats), max(east, -180.0), max(lats)]
    lons = [lon for seq in sequences for lon, _lat in seq]
    return [min(lons), min(lats), max(lons), max(lats)]


def _well_formed(bbox: Any) -> bool:
    """4 or 6 numbers with south <= north (west > east is allowed: the antimeridian form)."""
    if not isinstance(bbox, list) or len(bbox) not in (4, 6):
        return False
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
        return False
    return bool(bbox[1] <= bbox[len(bbox) // 2 + 1])


def _normalized_bbox(bbox: list[float]) -> list[float]:
    """A well-formed bbox with its longitudes in [-180, 180]: one written past the
    antimeridian ([179.5, s, 180.5, n]) becomes the antimeridian form ([179.5, s, -179.5, n]),
    and one spanning 360 degrees or more the whole globe."""
    half = len(bbox) // 2
    west, east = bbox[0], bbox[half]
    if -180.0 <= west <= 180.0 and -180.0 <= east <= 180.0:
        return list(bbox)
    normalized = list(bbox)
    if east - west >= 360.0:
        normalized[0], normalized[half] = -180.0, 180.0
    else:
        normalized[0], normalized[half] = normalized_longitude(west), normalized_longitude(east)
    return normalized


def _horizontal(bbox: list[float]) -> list[float]:
    half = len(bbox) // 2
    return [bbox[0], bbox[1], bbox[half], bbox[half + 1]]


def bbox_agrees(bbox: list[float], bounds: list[float]) -> bool:
    """Whether a well-formed bbox states the geometry's `bounds` (from `geometry_bbox`).

    The same way round the antimeridian, holding the bounds within float rounding, and no
    side further out than BBOX_SLACK of the geometry's span.
    """
    west, south, east, north = _horizontal(bbox)
    b_west, b_south, b_east, b_north = bounds
    if (west > east) != (b_west > b_east):
        return False
    if b_west > b_east:
        east, b_east = east + 360.0, b_east + 360.0
    slack_x = max(BBOX_ROUNDING_DEGREES, BBOX_SLACK * (b_east - b_west))
    slack_y = max(BBOX_ROUNDING_DEGREES, BBOX_SLACK * (b_north - b_south))
    return (
        b_west - slack_x <= west <= b_west + BBOX_ROUNDING_DEGREES
        and b_south - slack_y <= south <= b_south + BBOX_ROUNDING_DEGREES
        and b_east - BBOX_ROUNDING_DEGREES <= east <= b_east + slack_x
        and b_north - BBOX_ROUNDING_DEGREES <= north <= b_north + slack_y
    )


def item_bbox(bbox: Any, geometry: dict[str, Any] | None) -> list[float] | None:
    """The source bbox when it agrees with the geometry, else the geometry's own bounds.

    A genuine antimeridian bbox (west > east around a geometry that crosses 180) is kept;
    EOPF products carry west > east for scenes far from it, and those are recomputed, as is a
    bbox that misses part of the geometry or is far larger. A 3D bbox keeps its heights.
    Longitudes are normalised to [-180, 180] first (STAC's range): a bbox or a geometry
    written past 180 ([179.5, s, 180.5, n]) is read as the antimeridian one it means.
    """
    bounds = geometry_bbox(geometry) if geometry else None
    if _well_formed(bbox):
        bbox = _normalized_bbox(bbox)
    if bounds is None:
        return bbox if _well_formed(bbox) else None
    if _well_formed(bbox) and bbox_agrees(bbox, bounds):
        return list(bbox)
    if _well_formed(bbox) and len(bbox) == 6:
        west, south, east, north = bounds
        return [west, south, bbox[2], east, north, bbox[5]]
    return bounds


def _copied_link(link: pystac.Link) -> pystac.Link:
    """A copy with its extra fields (pystac's `Link.clone` drops them)."""
    return pystac.Link.from_dict(link.to_dict(transform_href=False))


def build_item(
    *,
    item_id: str,
    collection: str,
    source_item: pystac.Item,
    source_link: pystac.Link,
    store_url: str,
    tree: StoreTree,
    settings: Settings,
) -> tuple[pystac.Item, dict[str, str]]:
    """The item (a pystac Item; `item_dict` gives its JSON), and for each asset the
    store-relative path it points at."""
    bands_info = band_catalogue(source_item)
    pyramid = find_pyramid(tree)
    reflectance, finest = reflectance_asset(tree, pyramid, bands_info)
    node_paths: dict[str, str] = {"reflectance": pyramid.path}
    assets: dict[str, pystac.Asset] = {"reflectance": reflectance}
    for key, (path, asset) in sorted(
        auxiliary_assets(tree, source_item.assets, pyramid.path + "/").items()
    ):
        assets[key] = asset
        node_paths[key] = path
    assets["product"] = pystac.Asset(
        href="", media_type=ZARR_V3, title="GeoZarr store", roles=["data", "metadata"]
    )
    node_paths["product"] = ""
    base = store_url.rstrip("/")
    uses_alternates = False
    for key, asset in assets.items():
        asset.href, alternates = asset_hrefs(f"{base}/{node_paths[key]}".rstrip("/"), settings)
        if alternates:
            asset.extra_fields["alternate"] = alternates
            uses_alternates = True

    properties = copy.deepcopy(source_item.properties)
    for name in SOURCE_ONLY_PROPERTIES:
        properties.pop(name, None)
    ours = [EXTENSIONS["projection"], EXTENSIONS["eo"], EXTENSIONS["raster"]]
    if uses_alternates:
        ours.append(EXTENSIONS["alternate-assets"])
    geometry = copy.deepcopy(source_item.geometry)
    item = RegisteredItem(
        id=item_id,
        geometry=geometry,
        bbox=item_bbox(source_item.bbox, geometry),
        datetime=source_item.datetime,
        properties=properties,
        stac_extensions=merge_extensions(list(source_item.stac_extensions), ours),
        collection=collection,
    )
    published = properties.get("datetime")
    item.datetime_text = published if isinstance(published, str) else None
    ProjectionExtension.ext(item).code = finest.code
    for link in source_item.links:
        if link.rel not in DROPPED_SOURCE_LINK_RELS:
            item.add_link(_copied_link(link))
    item.add_link(source_link)
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item, node_paths

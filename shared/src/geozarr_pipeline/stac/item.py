"""Build the registered STAC item from the source item and the converted store's structure.

Nothing here is guessed from path names: the reflectance pyramid is the group carrying a
`multiscales` layout, bands are the arrays its levels really hold, and every other asset is
a group of the store that exists and has a grid.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import OutputCheckFailed
from geozarr_pipeline.stac.grid import Grid, group_grid, multiscale_grids
from geozarr_pipeline.stac.hrefs import ALTERNATE_ASSETS_EXTENSION, asset_hrefs
from geozarr_pipeline.stac.store import StoreTree, ZarrNode

STAC_VERSION = "1.1.0"
ZARR_MULTISCALES = "application/vnd.zarr; version=3; profile=multiscales"
ZARR_V3 = "application/vnd.zarr; version=3"
EXTENSIONS = {
    "projection": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "eo": "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v2.0.0/schema.json",
    "alternate-assets": ALTERNATE_ASSETS_EXTENSION,
}
# Properties that describe the source product's own layout, not the converted store.
SOURCE_ONLY_PROPERTIES = ("proj:bbox", "proj:shape", "proj:transform", "proj:epsg", "proj:wkt2")
# Source links not carried over: the catalog sets its own, and derived_from points at the source.
DROPPED_SOURCE_LINK_RELS = frozenset({"self", "root", "parent", "collection", "derived_from"})


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
    """data_type, nodata and scale/offset of an array, from its own metadata."""
    fields: dict[str, Any] = {}
    if node.data_type:
        fields["data_type"] = node.data_type
    nodata = _fill_value(node)
    if nodata is not None:
        fields["nodata"] = nodata
    scale = node.attributes.get("scale_factor")
    offset = node.attributes.get("add_offset")
    if isinstance(scale, int | float) and not isinstance(scale, bool):
        fields["raster:scale"] = scale
    if isinstance(offset, int | float) and not isinstance(offset, bool):
        fields["raster:offset"] = offset
    return fields


def band_catalogue(source_item: dict[str, Any]) -> dict[str, dict[str, Any]]:
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

    for asset in (source_item.get("assets") or {}).values():
        bands = asset.get("bands") or asset.get("eo:bands") or []
        if len(bands) == 1:
            add(bands[0])
    for asset in (source_item.get("assets") or {}).values():
        for entry in asset.get("bands") or asset.get("eo:bands") or []:
            add(entry)
    for entry in (source_item.get("properties") or {}).get("bands") or []:
        add(entry)
    return found


def _level_resolution(grids: dict[str, Grid], name: str) -> float:
    grid = grids.get(name)
    return grid.resolution if grid else math.inf


def reflectance_asset(
    tree: StoreTree, pyramid: ZarrNode, bands_info: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], Grid]:
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
    asset: dict[str, Any] = {
        "type": ZARR_MULTISCALES,
        "title": "Surface reflectance (multiscale GeoZarr)",
        "roles": ["data", "reflectance"],
        "gsd": finest.resolution,
        **finest.stac_fields(),
        "bands": [bands[name] for name in sorted(bands)],
    }
    return asset, finest


def auxiliary_assets(
    tree: StoreTree, source_assets: dict[str, Any], skip_prefix: str
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Asset key -> (node path, asset) for the auxiliary layers the store holds.

    Each layer is taken at its finest resolution; groups inside the pyramid are skipped.
    """
    chosen: dict[str, tuple[float, str, str, dict[str, Any]]] = {}
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
            asset: dict[str, Any] = {
                "type": ZARR_V3,
                "title": layer.title,
                "roles": list(layer.roles),
                "gsd": grid.resolution,
                **grid.stac_fields(),
                **raster_fields(array),
            }
            source = source_assets.get(key) or {}
            for field in ("title", "description", "raster:scale", "raster:offset"):
                if field in source and field not in asset:
                    asset[field] = source[field]
            long_name = array.attributes.get("long_name")
            if "description" not in asset and isinstance(long_name, str):
                asset["description"] = long_name
            chosen[layer.key] = (grid.resolution, key, array.path, asset)
    return {key: (path, asset) for _resolution, key, path, asset in chosen.values()}


def find_pyramid(tree: StoreTree) -> ZarrNode:
    """The reflectance pyramid: the group with a `multiscales` layout holding band arrays."""
    candidates = [g for g in tree.groups() if "multiscales" in g.attributes]
    preferred = [g for g in candidates if g.name == "reflectance"] or candidates
    if not preferred:
        raise OutputCheckFailed(f"{tree.url}: no group with a multiscales layout")
    return sorted(preferred, key=lambda g: g.path)[0]


def _bbox_of(geometry: dict[str, Any]) -> list[float] | None:
    points: list[tuple[float, float]] = []

    def collect(coords: Any) -> None:
        if (
            isinstance(coords, list)
            and len(coords) >= 2
            and all(isinstance(c, int | float) for c in coords[:2])
        ):
            points.append((float(coords[0]), float(coords[1])))
        elif isinstance(coords, list):
            for item in coords:
                collect(item)

    collect(geometry.get("coordinates"))
    if not points:
        return None
    xs, ys = zip(*points, strict=True)
    return [min(xs), min(ys), max(xs), max(ys)]


def item_bbox(bbox: Any, geometry: dict[str, Any] | None) -> Any:
    """The source bbox if it is a valid 2D or 3D one, else the geometry's bounds.

    West > east is valid STAC (a bbox crossing the antimeridian) and is kept.
    """
    if isinstance(bbox, list) and len(bbox) in (4, 6):
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
        if numbers and bbox[1] <= bbox[len(bbox) // 2 + 1]:
            return bbox
    return _bbox_of(geometry) if geometry else bbox


def build_item(
    *,
    item_id: str,
    collection: str,
    source_item: dict[str, Any],
    source_link: dict[str, Any],
    store_url: str,
    tree: StoreTree,
    settings: Settings,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The item, and for each asset the store-relative path it points at."""
    bands_info = band_catalogue(source_item)
    pyramid = find_pyramid(tree)
    reflectance, finest = reflectance_asset(tree, pyramid, bands_info)
    source_assets = source_item.get("assets") or {}
    node_paths: dict[str, str] = {"reflectance": pyramid.path}
    assets: dict[str, dict[str, Any]] = {"reflectance": reflectance}
    for key, (path, asset) in sorted(
        auxiliary_assets(tree, source_assets, pyramid.path + "/").items()
    ):
        assets[key] = asset
        node_paths[key] = path
    assets["product"] = {
        "type": ZARR_V3,
        "title": "GeoZarr store",
        "roles": ["data", "metadata"],
    }
    node_paths["product"] = ""
    base = store_url.rstrip("/")
    uses_alternates = False
    for key, asset in assets.items():
        url = f"{base}/{node_paths[key]}".rstrip("/")
        href, alternates = asset_hrefs(url, settings)
        asset["href"] = href
        if alternates:
            asset["alternate"] = alternates
            uses_alternates = True

    properties = copy.deepcopy(source_item.get("properties") or {})
    for name in SOURCE_ONLY_PROPERTIES:
        properties.pop(name, None)
    properties["proj:code"] = finest.code
    if "datetime" not in properties:
        properties["datetime"] = None

    ours = [EXTENSIONS["projection"], EXTENSIONS["eo"], EXTENSIONS["raster"]]
    if uses_alternates:
        ours.append(EXTENSIONS["alternate-assets"])
    links = [
        copy.deepcopy(link)
        for link in source_item.get("links") or []
        if isinstance(link, dict) and link.get("rel") not in DROPPED_SOURCE_LINK_RELS
    ]
    links.append(source_link)
    geometry = copy.deepcopy(source_item.get("geometry"))
    bbox = item_bbox(source_item.get("bbox"), geometry)
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": merge_extensions(list(source_item.get("stac_extensions") or []), ours),
        "id": item_id,
        "collection": collection,
        "geometry": geometry,
        "bbox": bbox,
        "properties": properties,
        "links": links,
        "assets": assets,
    }
    return item, node_paths

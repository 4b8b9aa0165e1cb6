"""A source STAC item for a synthetic product, shaped like a real EODC item.

The packaged template is a real item from stac.core.eopf.eodc.eu. Its assets expose the
product the same way: `product` is the Zarr store root (`application/vnd.zarr`, roles
data+metadata, `xarray:open_datatree_kwargs`), `product_metadata` its `.zmetadata`, and the
band/dataset assets are paths inside the store (`<store>/measurements/reflectance/r10m/b02`).
Here every href inside the store is re-rooted on `zarr_href`; geometry, bbox, datetimes and
the projection/satellite/processing/cover properties come from the product's `stac_discovery`
(for a synthetic product, its cloud and snow cover are its own scene's, see scene.py).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from geozarr_local.sample.hierarchy import SOURCE_ITEM_TEMPLATE, reference_text
from geozarr_local.sample.layout import PLACEHOLDER_BASE, item_url

TEMPLATE_API_ROOT = "https://stac.core.eopf.eodc.eu"
ZIP_PREFIX = "https://download.user.eopf.eodc.eu"
TILE = re.compile(r"_T(\d{2})([A-Z])([A-Z]{2})_")


def source_item_template() -> dict[str, Any]:
    template: dict[str, Any] = json.loads(reference_text(SOURCE_ITEM_TEMPLATE))
    return template


def product_id_from_attrs(product_attrs: dict[str, Any]) -> str:
    """The product id of `stac_discovery` without its `.SAFE` suffix."""
    return str(product_attrs["stac_discovery"]["id"]).removesuffix(".SAFE")


def make_source_item(
    item_id: str,
    collection: str,
    zarr_href: str,
    product_attrs: dict[str, Any],
    *,
    api_base: str = PLACEHOLDER_BASE,
    members: Collection[str] | None = None,
) -> dict[str, Any]:
    """The source item of a product whose store is at `zarr_href`.

    `product_attrs` are the store's root attributes. `members` (paths inside the store),
    when given, drops the template's assets that point at paths the product lacks (an L1C
    has no `scl`, `aot`, ...). `api_base` is the STAC API root the links point at.
    """
    item = source_item_template()
    template_store = item["assets"]["product"]["href"]
    zarr_href = zarr_href.rstrip("/")
    api_base = api_base.rstrip("/")

    level = str(product_attrs["stac_discovery"]["properties"].get("processing:level", "L2A"))
    assets: dict[str, Any] = {}
    for key, asset in item["assets"].items():
        href: str = asset["href"]
        if href.startswith(template_store):
            inner = _inner_path(href[len(template_store) :].lstrip("/"), level, members)
            if inner is None:
                continue
            asset["href"] = f"{zarr_href}/{inner}" if inner else zarr_href
            if level.upper() == "L1C":
                _describe_as_toa(asset)
        elif href.startswith(ZIP_PREFIX):
            asset["href"] = f"{api_base}/zip/collections/{collection}/items/{item_id}.zip"
        assets[key] = asset
    item["assets"] = assets

    sd = product_attrs["stac_discovery"]
    geometry = copy.deepcopy(sd["geometry"])
    lons = [float(p[0]) for p in geometry["coordinates"][0]]
    lats = [float(p[1]) for p in geometry["coordinates"][0]]
    bbox = [min(lons), min(lats), max(lons), max(lats)]

    item["id"] = item_id
    item["collection"] = collection
    item["geometry"] = geometry
    item["bbox"] = bbox
    item["properties"] = _properties(item["properties"], sd["properties"], product_attrs, bbox)
    item["properties"]["grid:code"], mgrs = _mgrs(item_id, item["properties"])
    item["properties"].update(mgrs)
    item["links"] = _links(item["links"], api_base, collection, item_id)
    return item


def _inner_path(inner: str, level: str, members: Collection[str] | None) -> str | None:
    """The template's path inside the store, adapted to this product; None if it has none."""
    if members is None or not inner or inner == ".zmetadata" or inner in members:
        return inner
    # An L1C names its quicklook after its level (quality/l1c_quicklook/...).
    adapted = inner.replace("l2a_", f"{level.lower()}_")
    return adapted if adapted in members else None


def _describe_as_toa(asset: dict[str, Any]) -> None:
    """L1C reflectances are top of atmosphere: say so where the template says BOA/surface."""
    for key in ("title", "description"):
        if isinstance(asset.get(key), str):
            text = asset[key].replace("Surface Reflectance", "Top-of-atmosphere Reflectance")
            asset[key] = text.replace("BOA reflectance", "TOA reflectance")


def _iso(value: Any) -> str | None:
    if not value or value == "null":
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _properties(
    template: dict[str, Any],
    source: dict[str, Any],
    product_attrs: dict[str, Any],
    bbox: list[float],
) -> dict[str, Any]:
    props = copy.deepcopy(template)
    start = _iso(source.get("start_datetime")) or _iso(source.get("datetime"))
    end = _iso(source.get("end_datetime")) or start
    created = _iso(source.get("created")) or start
    props.update(
        {
            "datetime": _iso(source.get("datetime")) or start,
            "start_datetime": start,
            "end_datetime": end,
            "created": created,
            "updated": created,
            "published": created,
            "platform": source.get("platform", props.get("platform")),
            "constellation": source.get("constellation", props.get("constellation")),
            "processing:level": source.get("processing:level", props.get("processing:level")),
            "product:type": source.get("product:type", props.get("product:type")),
            "eo:cloud_cover": source.get("eo:cloud_cover", props.get("eo:cloud_cover")),
            "eo:snow_cover": source.get("eo:snow_cover", props.get("eo:snow_cover")),
            "eopf:datatake_id": source.get("eopf:data_take_id", props.get("eopf:datatake_id")),
            "eopf:instrument_mode": source.get(
                "eopf:instrument_mode", props.get("eopf:instrument_mode")
            ),
            "proj:code": f"EPSG:{source['proj:epsg']}"
            if "proj:epsg" in source
            else props.get("proj:code"),
            # The EODC items carry the geographic bbox here; kept as they publish it.
            "proj:bbox": list(bbox),
            "proj:centroid": {
                "lat": round((bbox[1] + bbox[3]) / 2, 4),
                "lon": round((bbox[0] + bbox[2]) / 2, 4),
            },
        }
    )
    for key in (
        "sat:orbit_state",
        "sat:absolute_orbit",
        "sat:relative_orbit",
        "sat:platform_international_designator",
        "sci:doi",
        "product:timeliness",
        "product:timeliness_category",
        "processing:facility",
    ):
        if key in source:
            props[key] = source[key]
    if "eopf:baseline" in source:
        props["processing:version"] = source["eopf:baseline"]
    other = product_attrs.get("other_metadata", {})
    if "mean_sun_azimuth_angle_in_deg_for_all_bands_all_detectors" in other:
        props["view:sun_azimuth"] = float(
            other["mean_sun_azimuth_angle_in_deg_for_all_bands_all_detectors"]
        )
    if "mean_sun_zenith_angle_in_deg_for_all_bands_all_detectors" in other:
        props["view:sun_elevation"] = 90.0 - float(
            other["mean_sun_zenith_angle_in_deg_for_all_bands_all_detectors"]
        )
    return props


def _mgrs(item_id: str, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    match = TILE.search(f"{item_id}_")
    if match is None:
        return str(props.get("grid:code")), {}
    zone, band, square = match.groups()
    return f"MGRS-{zone}{band}{square}", {
        "mgrs:utm_zone": int(zone),
        "mgrs:latitude_band": band,
        "mgrs:grid_square": square,
    }


def _links(
    template: list[dict[str, Any]], api_base: str, collection: str, item_id: str
) -> list[dict[str, Any]]:
    collection_url = f"{api_base}/collections/{collection}"
    rewritten: dict[str, str] = {
        "collection": collection_url,
        "parent": collection_url,
        "root": f"{api_base}/",
        "self": item_url(api_base, collection, item_id),
    }
    links = []
    for link in template:
        link = dict(link)
        if link["rel"] in rewritten:
            link["href"] = rewritten[link["rel"]]
        links.append(link)
    return links

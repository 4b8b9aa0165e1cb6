"""Where a product comes from: the URL policy and STAC item -> Zarr URL resolution.

`source_url` is either a STAC item URL (resolved through its assets, the way an EODC item
needs) or a direct Zarr URL (a path ending in `.zarr`). Every URL that is fetched, the item
and the Zarr it points to, passes the same policy: https and s3 always, file:// and plain
http only when allowed (local mode), an optional host allow-list, and no private, loopback
or link-local addresses unless allowed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import InvalidInput, SourceNotFound, UnsupportedProduct
from geozarr_pipeline.faults import http_probe
from geozarr_pipeline.retries import RetryPolicies
from geozarr_pipeline.stac.source import fetch_source_item
from geozarr_pipeline.urlpolicy import check_url, fsspec_http_options, policy_client

SENTINEL2_PRODUCT_TYPES = frozenset({"S02MSIL1C", "S02MSIL2A"})


@dataclass(frozen=True)
class SourceProduct:
    """A resolved source: the product's Zarr URL and, if it came from one, its STAC item."""

    source_url: str
    zarr_url: str
    item_url: str | None = None
    item: dict[str, Any] | None = None


def is_zarr_url(url: str) -> bool:
    return urlparse(url).path.rstrip("/").endswith(".zarr")


def local_path(url: str) -> str:
    """The filesystem path of a file:// URL (other URLs unchanged)."""
    parsed = urlparse(url)
    if parsed.scheme.lower() == "file":
        return unquote(parsed.path)
    return url


def storage_options(url: str, settings: Settings) -> dict[str, Any] | None:
    """fsspec options to read a source URL."""
    scheme = urlparse(url).scheme.lower()
    if scheme == "s3":
        options: dict[str, Any] = {"anon": settings.source_s3_anonymous}
        if settings.source_s3_endpoint_url:
            options["endpoint_url"] = settings.source_s3_endpoint_url
        return options
    if scheme in ("http", "https"):
        # Honour HTTP(S)_PROXY like the item fetch does (cluster egress may need a proxy);
        # every chunk read, each redirect hop included, passes the URL policy.
        return fsspec_http_options(settings)
    return None


def http_client(settings: Settings) -> httpx.Client:
    """The client of the item and metadata fetches: every hop passes the URL policy."""
    return policy_client(settings, user_agent="geozarr-pipeline-convert")


def _is_zarr_asset(asset: dict[str, Any]) -> bool:
    """Typed `application/vnd.zarr` or `application/vnd+zarr`, or an href into a store."""
    return "zarr" in str(asset.get("type", "")).lower() or ".zarr" in str(asset.get("href", ""))


def zarr_root_of(href: str) -> str | None:
    """The product root of an href inside a Zarr store (cut after the `.zarr` segment)."""
    parsed = urlparse(href)
    segments = parsed.path.split("/")
    for index, segment in enumerate(segments):
        if segment.endswith(".zarr"):
            return parsed._replace(
                path="/".join(segments[: index + 1]), query="", fragment=""
            ).geturl()
    return None


def zarr_url_from_item(item: dict[str, Any], item_url: str) -> str:
    """The product's Zarr URL from its assets.

    EODC items carry a `product` asset at the store root (`application/vnd.zarr`, roles
    data+metadata) and per-band assets inside the store (some typed `application/vnd+zarr`);
    prefer the root asset, else cut any Zarr asset's href at its `.zarr` segment.
    """
    assets: dict[str, Any] = item["assets"]
    candidates = [a for a in assets.values() if isinstance(a, dict) and _is_zarr_asset(a)]
    product = assets.get("product")
    if isinstance(product, dict) and _is_zarr_asset(product):
        candidates.insert(0, product)
    for asset in candidates:
        root = zarr_root_of(str(asset.get("href", "")))
        if root:
            return root
    raise InvalidInput(
        f"source item {item.get('id', item_url)!r} has no Zarr asset "
        f"(assets: {', '.join(sorted(assets)) or 'none'})"
    )


def check_sentinel2_properties(properties: dict[str, Any], where: str) -> None:
    """Refuse metadata that names a mission or product type other than Sentinel-2 MSI."""
    product_type = properties.get("product:type") or properties.get("product_type")
    constellation = str(properties.get("constellation", "")).lower()
    platform = str(properties.get("platform", "")).lower()
    if product_type is not None and str(product_type) not in SENTINEL2_PRODUCT_TYPES:
        raise UnsupportedProduct(
            f"{where}: product type {product_type!r} is not a Sentinel-2 MSI L1C/L2A product"
        )
    if constellation and constellation != "sentinel-2":
        raise UnsupportedProduct(f"{where}: constellation {constellation!r} is not Sentinel-2")
    if platform and not platform.startswith("sentinel-2"):
        raise UnsupportedProduct(f"{where}: platform {platform!r} is not Sentinel-2")


def resolve_source(
    source_url: str,
    settings: Settings,
    client: httpx.Client | None = None,
    *,
    item_id: str | None = None,
) -> SourceProduct:
    """Resolve an event's `source_url` into the Zarr URL to convert (for `item_id`, named in
    the retry log)."""
    check_url(source_url, settings)
    if is_zarr_url(source_url):
        return SourceProduct(source_url=source_url, zarr_url=source_url.rstrip("/"))
    owns_client = client is None
    active = client or http_client(settings)
    retry = RetryPolicies.from_settings(settings).source
    try:
        item = fetch_source_item(source_url, active, retry=retry, item_id=item_id)
    finally:
        if owns_client:
            active.close()
    properties = item.get("properties")
    check_sentinel2_properties(
        properties if isinstance(properties, dict) else {}, f"source item {item.get('id')!r}"
    )
    zarr_url = zarr_url_from_item(item, source_url)
    check_url(zarr_url, settings, what="product Zarr URL")
    return SourceProduct(source_url=source_url, zarr_url=zarr_url, item_url=source_url, item=item)


def _probe_metadata(client: httpx.Client, zarr_url: str) -> str:
    """The text of the product's `.zmetadata`, else of its `zarr.json` (Zarr v3)."""
    for name in (".zmetadata", "zarr.json"):
        response = http_probe(client, f"{zarr_url}/{name}", "product metadata")
        if response is not None:
            return response.text
    raise SourceNotFound(f"no Zarr product at {zarr_url} (no .zmetadata)")


def read_root_metadata(
    zarr_url: str,
    settings: Settings,
    client: httpx.Client | None = None,
    *,
    item_id: str | None = None,
) -> dict[str, Any]:
    """The product's consolidated metadata (`.zmetadata`), fetched before the heavy open.

    It tells a missing product (4xx) from a network fault (retried under the source read
    policy, logged with `item_id`) cheaply, and its root attributes say whether the product is
    Sentinel-2.
    """
    scheme = urlparse(zarr_url).scheme.lower()
    if scheme in ("http", "https"):
        owns_client = client is None
        active = client or http_client(settings)
        retry = RetryPolicies.from_settings(settings).source
        try:
            text = retry.call(lambda: _probe_metadata(active, zarr_url), item_id=item_id)
        finally:
            if owns_client:
                active.close()
    elif scheme in ("file", ""):
        root = Path(local_path(zarr_url))
        for name in (".zmetadata", "zarr.json"):
            if (root / name).is_file():
                text = (root / name).read_text()
                break
        else:
            raise SourceNotFound(f"no Zarr product at {zarr_url}")
    else:
        return {}
    try:
        parsed: dict[str, Any] = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"product metadata of {zarr_url} is not JSON: {exc}") from exc
    return parsed


def check_sentinel2_metadata(metadata: dict[str, Any], zarr_url: str) -> None:
    """Refuse a product whose consolidated metadata is not an EOPF Sentinel-2 product."""
    entries = metadata.get("metadata")
    if not isinstance(entries, dict):
        return
    if "measurements/reflectance/.zgroup" not in entries:
        raise UnsupportedProduct(
            f"{zarr_url} is not a Sentinel-2 product (no measurements/reflectance group)"
        )
    root_attrs = entries.get(".zattrs", {})
    stac = root_attrs.get("stac_discovery", {}) if isinstance(root_attrs, dict) else {}
    properties = stac.get("properties", {}) if isinstance(stac, dict) else {}
    if isinstance(properties, dict):
        check_sentinel2_properties(properties, zarr_url)

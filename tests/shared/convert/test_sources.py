"""Source URL policy and STAC item -> Zarr resolution (real HTTP to the sample server)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from geozarr_local.processes import free_port
from geozarr_local.sample.hierarchy import SOURCE_ITEM_TEMPLATE, reference_text
from geozarr_pipeline.config import Settings
from geozarr_pipeline.convert import sources
from geozarr_pipeline.errors import (
    InvalidInput,
    PipelineError,
    SourceNotFound,
    TransientError,
    UnsupportedProduct,
    status_code_for,
)
from tests.fixtures.sample import SampleServerInfo
from tests.shared.convert.conftest import local_settings


def reference_item() -> dict[str, Any]:
    """The real EODC source item (a packaged copy of reference/stac/source-item.*.json)."""
    item: dict[str, Any] = json.loads(reference_text(SOURCE_ITEM_TEMPLATE))
    return item


def strict() -> Settings:
    return Settings(allow_file_urls=False, allow_plain_http=False, allow_private_hosts=False)


def assert_permanent(error: PipelineError) -> None:
    assert 400 <= status_code_for(error) < 500
    assert status_code_for(error) != 404
    assert not error.retryable


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd.zarr", "file://"),
        ("http://example.org/x.zarr", "plain http"),
        ("ftp://example.org/x.zarr", "scheme 'ftp'"),
        ("gs://bucket/x.zarr", "scheme 'gs'"),
        ("https://user:secret@example.org/x.zarr", "credentials"),
        ("https://127.0.0.1/x.zarr", "non-public address"),
        ("https://localhost:8443/items/x", "non-public address"),
        ("https://[::1]/x.zarr", "non-public address"),
        ("https://10.1.2.3/x.zarr", "non-public address"),
        ("https://169.254.169.254/latest/meta-data", "non-public address"),
        ("https://192.168.0.10/x.zarr", "non-public address"),
    ],
)
def test_refused_urls(url: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason) as caught:
        sources.resolve_source(url, strict())
    assert_permanent(caught.value)


def test_local_mode_allows_file_http_and_loopback() -> None:
    settings = Settings(allow_file_urls=True, allow_plain_http=True, allow_private_hosts=True)
    for url in ("file:///data/x.zarr", "http://127.0.0.1:9/x.zarr", "https://10.0.0.1/x.zarr"):
        sources.check_url(url, settings)
    assert sources.resolve_source("http://127.0.0.1:9/p/x.zarr/", settings).zarr_url == (
        "http://127.0.0.1:9/p/x.zarr"
    )


def test_s3_bucket_is_a_name_not_a_host_to_resolve() -> None:
    sources.check_url("s3://no-such-host.invalid/x.zarr", strict())


def test_host_allow_list() -> None:
    settings = Settings(allowed_hosts=["*.eodc.eu", "stac.example.org"], allow_private_hosts=True)
    sources.check_url("https://objects.eodc.eu/bucket/x.zarr", settings)
    sources.check_url("https://stac.example.org/collections/c/items/i", settings)
    sources.check_url("s3://stac.example.org/x.zarr", settings)
    for url in ("https://evil.example.com/x.zarr", "https://eodc.eu.evil.net/x.zarr"):
        with pytest.raises(InvalidInput, match="not in the allowed hosts"):
            sources.check_url(url, settings)


def test_eodc_item_resolves_to_the_product_root() -> None:
    item = reference_item()
    url = sources.zarr_url_from_item(item, "https://stac.example/items/x")
    assert url == item["assets"]["product"]["href"]
    assert url.endswith(f"{item['id']}.zarr")


def test_item_without_product_asset_is_cut_at_the_store_root() -> None:
    item = reference_item()
    del item["assets"]["product"]
    url = sources.zarr_url_from_item(item, "https://stac.example/items/x")
    assert url == reference_item()["assets"]["product"]["href"]


def test_item_without_zarr_asset_is_a_clear_4xx() -> None:
    item = reference_item()
    item["assets"] = {k: v for k, v in item["assets"].items() if k == "zipped_product"}
    with pytest.raises(InvalidInput, match="no Zarr asset") as caught:
        sources.zarr_url_from_item(item, "https://stac.example/items/x")
    assert_permanent(caught.value)


@pytest.mark.parametrize(
    "change",
    [
        {"constellation": "sentinel-1", "platform": "sentinel-1a"},
        {"product:type": "S01SIWGRH"},
        {"platform": "landsat-9"},
    ],
)
def test_not_sentinel2_item_is_unsupported(tmp_path: Path, change: dict[str, str]) -> None:
    item = copy.deepcopy(reference_item())
    item["properties"].update(change)
    path = tmp_path / "item.json"
    path.write_text(json.dumps(item))
    with pytest.raises(UnsupportedProduct) as caught:
        sources.resolve_source(path.as_uri(), Settings(allow_file_urls=True))
    assert_permanent(caught.value)


def test_item_over_http_resolves_to_the_served_product(
    sample_server: SampleServerInfo, tmp_path: Path
) -> None:
    settings = local_settings(tmp_path)
    product = sources.resolve_source(sample_server.l2a_item_url, settings)
    assert product.item_url == sample_server.l2a_item_url
    assert product.zarr_url == sample_server.zarr_url(sample_server.l2a_id)
    assert product.item is not None
    assert product.item["id"] == sample_server.l2a_id
    metadata = sources.read_root_metadata(product.zarr_url, settings)
    sources.check_sentinel2_metadata(metadata, product.zarr_url)


def test_item_over_http_is_refused_without_local_mode(sample_server: SampleServerInfo) -> None:
    with pytest.raises(InvalidInput, match="plain http"):
        sources.resolve_source(sample_server.l2a_item_url, strict())
    loopback_https = sample_server.l2a_item_url.replace("http://", "https://")
    with pytest.raises(InvalidInput, match="non-public"):
        sources.resolve_source(loopback_https, strict())


def test_missing_item_and_product_are_permanent(
    sample_server: SampleServerInfo, tmp_path: Path
) -> None:
    settings = local_settings(tmp_path)
    missing_item = sample_server.item_url(sample_server.l2a.collection, "S2X_MISSING")
    with pytest.raises(SourceNotFound) as caught:
        sources.resolve_source(missing_item, settings)
    assert_permanent(caught.value)
    with pytest.raises(SourceNotFound):
        sources.read_root_metadata(sample_server.zarr_url("S2X_MISSING"), settings)


def test_unreachable_host_is_transient(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/collections/c/items/i"
    with pytest.raises(TransientError) as caught:
        sources.resolve_source(url, local_settings(tmp_path))
    assert caught.value.retryable

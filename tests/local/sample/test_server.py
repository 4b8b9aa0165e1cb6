"""The sample server serves items and stores over real HTTP, as a STAC API and object store."""

from __future__ import annotations

import httpx
import numpy as np
import xarray as xr
import zarr

from tests.fixtures.sample import SampleServerInfo


def test_healthz(sample_server: SampleServerInfo) -> None:
    assert httpx.get(f"{sample_server.base_url}/healthz").status_code == 200


def test_item_hrefs_use_the_server_base(sample_server: SampleServerInfo) -> None:
    response = httpx.get(sample_server.l2a_item_url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/geo+json"
    item = response.json()
    assert item["id"] == sample_server.l2a_id
    assert item["assets"]["product"]["href"] == sample_server.zarr_url(sample_server.l2a_id)
    links = {link["rel"]: link["href"] for link in item["links"]}
    assert links["self"] == sample_server.l2a_item_url
    assert "sample.invalid" not in response.text
    assert response.headers["access-control-allow-origin"] == "*"


def test_unknown_item_and_key_are_404(sample_server: SampleServerInfo) -> None:
    base = sample_server.base_url
    assert httpx.get(sample_server.item_url("sentinel-2-l2a", "nope")).status_code == 404
    store = sample_server.zarr_url(sample_server.l2a_id)
    assert httpx.get(f"{store}/measurements/nope/.zarray").status_code == 404
    assert httpx.head(f"{store}/measurements/nope/.zarray").status_code == 404
    assert httpx.get(f"{base}/products/%2e%2e/%2e%2e/etc/passwd").status_code == 404
    assert httpx.get(f"{base}/elsewhere").status_code == 404


def test_byte_ranges(sample_server: SampleServerInfo) -> None:
    url = f"{sample_server.zarr_url(sample_server.l2a_id)}/.zmetadata"
    whole = httpx.get(url).content
    part = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == whole[10:20]
    tail = httpx.get(url, headers={"Range": "bytes=-5"})
    assert tail.content == whole[-5:]
    assert httpx.get(url, headers={"Range": f"bytes={len(whole) + 5}-"}).status_code == 416


def test_store_opens_over_http(sample_server: SampleServerInfo) -> None:
    url = sample_server.zarr_url(sample_server.l2a_id)
    tree = xr.open_datatree(url, engine="zarr")
    remote = tree["measurements/reflectance/r20m/b05"].values
    local = xr.open_datatree(sample_server.l2a.product_path, engine="zarr")
    np.testing.assert_array_equal(remote, local["measurements/reflectance/r20m/b05"].values)
    assert zarr.open_group(url, mode="r").attrs["stac_discovery"]["id"].startswith("S2A_MSIL2A")


def test_store_opens_with_the_converter_reader(sample_server: SampleServerInfo) -> None:
    from geozarr_pipeline.convert.engine import load_library

    tree = load_library().open_source_datatree(sample_server.zarr_url(sample_server.l1c_id))
    b08 = tree["measurements/reflectance/r10m/b08"]
    assert b08.chunks is not None
    assert float(b08.mean()) > 0

"""The register item built from a real eopf-geozarr store and the sample's source item."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import InvalidInput, OutputCheckFailed, RateLimited, TransientError
from geozarr_pipeline.stac.hrefs import asset_hrefs
from geozarr_pipeline.stac.validate import validate_item, validation_errors
from geozarr_pipeline.stages.register import build_registered_item
from tests.fixtures.sample import LOCAL_SOURCES
from tests.fixtures.stac_api import ConvertedStore, place_converted


def _build(store: ConvertedStore, settings: Settings, **kwargs: bool) -> dict[str, Any]:
    with httpx.Client(timeout=10) as client:
        return build_registered_item(
            store.done(**kwargs), settings, client, "http://catalog.invalid/collections/c"
        )


@pytest.fixture(scope="module")
def item(converted_l2a: ConvertedStore, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = Settings(output_root=str(converted_l2a.root), **LOCAL_SOURCES)
    return _build(converted_l2a, settings)


def _zarr(store: Path, node: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((store / node / "zarr.json").read_text())
    return data


def test_every_asset_href_is_an_existing_node(
    item: dict[str, Any], converted_l2a: ConvertedStore
) -> None:
    root = str(converted_l2a.path.resolve())
    for key, asset in item["assets"].items():
        assert asset["href"].startswith(root), key
        node = Path(asset["href"])
        assert (node / "zarr.json").is_file(), f"{key} -> {node}"


def test_reflectance_asset_describes_the_pyramid(
    item: dict[str, Any], converted_l2a: ConvertedStore
) -> None:
    asset = item["assets"]["reflectance"]
    assert asset["type"] == "application/vnd.zarr; version=3; profile=multiscales"
    pyramid = _zarr(converted_l2a.path, "measurements/reflectance")
    layout = pyramid["attributes"]["multiscales"]["layout"]
    finest = layout[0]["asset"]
    assert asset["proj:shape"] == layout[0]["spatial:shape"]
    assert asset["proj:code"] == pyramid["attributes"]["proj:code"]
    b02 = _zarr(converted_l2a.path, f"measurements/reflectance/{finest}/b02")
    assert asset["proj:transform"] == b02["attributes"]["proj:transform"][:6]
    # Every band array held by any level is a band, with its real dtype and nodata.
    arrays = {
        p.parent.name
        for p in (converted_l2a.path / "measurements/reflectance").glob("*/*/zarr.json")
        if json.loads(p.read_text())["node_type"] == "array"
        and len(json.loads(p.read_text())["shape"]) == 2
    }
    names = {band["name"] for band in asset["bands"]}
    assert names == arrays
    for band in asset["bands"]:
        assert band["data_type"] == "float32"
        assert band["nodata"] == "nan"
    blue = next(b for b in asset["bands"] if b["name"] == "b02")
    assert blue["eo:common_name"] == "blue"
    assert 0.4 < blue["eo:center_wavelength"] < 0.6


def test_overview_levels_are_georeferenced_from_the_layout(
    item: dict[str, Any], converted_l2a: ConvertedStore
) -> None:
    """Derived levels carry stale proj: attributes; bands of coarse-only levels use the layout."""
    from geozarr_pipeline.stac.grid import multiscale_grids
    from geozarr_pipeline.stac.store import LocalReader, read_store

    tree = read_store(str(converted_l2a.path), LocalReader(converted_l2a.path))
    pyramid = tree.get("measurements/reflectance")
    assert pyramid is not None
    grids = multiscale_grids(tree, pyramid)
    for name, grid in grids.items():
        level = _zarr(converted_l2a.path, f"measurements/reflectance/{name}")
        assert list(grid.shape) == level["attributes"]["spatial:shape"]
        # The level spans the same extent as the finest level (within one pixel).
        assert abs(grid.bbox[2] - item["assets"]["reflectance"]["proj:bbox"][2]) <= grid.resolution


def test_auxiliary_assets_and_source_fields(item: dict[str, Any], sample_server: Any) -> None:
    keys = set(item["assets"])
    assert any(k.startswith("SCL_") for k in keys)
    assert any(k.startswith("AOT_") for k in keys)
    assert "zipped_product" not in keys
    text = json.dumps(item)
    assert "xarray:open" not in text
    assert "proj:bbox" not in item["properties"]
    source = httpx.get(sample_server.l2a_item_url).json()
    for key in ("datetime", "platform", "eo:cloud_cover"):
        if key in source["properties"]:
            assert item["properties"][key] == source["properties"][key]
    derived = [link for link in item["links"] if link["rel"] == "derived_from"]
    assert derived == [
        {
            "rel": "derived_from",
            "href": sample_server.l2a_item_url,
            "type": "application/geo+json",
            "title": "Source EOPF Zarr STAC item",
        }
    ]


def test_item_validates_and_an_invalid_item_is_rejected(item: dict[str, Any]) -> None:
    assert validation_errors(item) == []
    broken = copy.deepcopy(item)
    broken["assets"]["reflectance"]["proj:shape"] = ["wide", "tall"]
    del broken["geometry"]
    with pytest.raises(OutputCheckFailed) as excinfo:
        validate_item(broken)
    assert "geometry" in excinfo.value.message
    assert "proj:shape" in excinfo.value.message
    core_only = copy.deepcopy(item)
    core_only["properties"]["datetime"] = "yesterday"
    assert any("datetime" in p for p in validation_errors(core_only))


def test_same_event_builds_the_same_item(
    item: dict[str, Any], converted_l2a: ConvertedStore
) -> None:
    settings = Settings(output_root=str(converted_l2a.root), **LOCAL_SOURCES)
    assert _build(converted_l2a, settings) == item


def test_direct_zarr_source_uses_the_product_metadata(
    converted_l2a: ConvertedStore, tmp_path: Path
) -> None:
    done = place_converted(converted_l2a, tmp_path, with_item=False)
    settings = Settings(output_root=str(tmp_path), **LOCAL_SOURCES)
    with httpx.Client(timeout=10) as client:
        built = build_registered_item(done, settings, client, "http://catalog.invalid/c")
    derived = next(link for link in built["links"] if link["rel"] == "derived_from")
    assert derived["href"] == converted_l2a.zarr_url
    properties = built["properties"]
    assert properties.get("datetime") or properties.get("start_datetime")
    assert validation_errors(built) == []


def test_s3_hrefs_become_public_with_the_s3_form_as_alternate() -> None:
    settings = Settings(
        output_root="s3://bucket/geozarr", public_base_url="https://data.example.org/geozarr"
    )
    href, alternates = asset_hrefs(
        "s3://bucket/geozarr/c/x.zarr/measurements/reflectance", settings
    )
    assert href == "https://data.example.org/geozarr/c/x.zarr/measurements/reflectance"
    assert alternates == {
        "s3": {
            "href": "s3://bucket/geozarr/c/x.zarr/measurements/reflectance",
            "alternate:name": "S3",
        }
    }
    outside, none = asset_hrefs("s3://other/x.zarr", settings)
    assert (outside, none) == ("s3://other/x.zarr", {})


def test_an_asset_node_missing_from_the_store_is_an_output_error(
    converted_l2a: ConvertedStore, tmp_path: Path
) -> None:
    done = place_converted(converted_l2a, tmp_path)
    shutil.rmtree(Path(done.output_url) / "quality")
    settings = Settings(output_root=str(tmp_path), **LOCAL_SOURCES)
    with httpx.Client() as client, pytest.raises(OutputCheckFailed, match="missing"):
        build_registered_item(done, settings, client, "http://catalog.invalid/c")


def test_a_metadata_document_that_is_not_json_is_an_output_error(tmp_path: Path) -> None:
    from geozarr_pipeline.stac.store import HttpReader, LocalReader

    (tmp_path / "zarr.json").write_text("<html>not a store</html>")
    transport = httpx.MockTransport(lambda _r: httpx.Response(200, text="<html>proxy</html>"))
    with httpx.Client(transport=transport) as client:
        for reader in (LocalReader(tmp_path), HttpReader("http://store.invalid/x.zarr", client)):
            with pytest.raises(OutputCheckFailed, match="not valid JSON"):
                reader.read_json("zarr.json")


@pytest.mark.parametrize(("status", "error"), [(408, TransientError), (429, RateLimited)])
def test_source_and_store_reads_retry_timeouts_and_rate_limits(
    status: int, error: type[Exception]
) -> None:
    from geozarr_pipeline.stac.source import fetch_source_item
    from geozarr_pipeline.stac.store import HttpReader

    transport = httpx.MockTransport(lambda _r: httpx.Response(status))
    with httpx.Client(transport=transport) as client:
        with pytest.raises(error):
            fetch_source_item("http://source.invalid/item", client)
        with pytest.raises(error):
            HttpReader("http://store.invalid/x.zarr", client).read_json("zarr.json")


def test_a_file_url_store_is_written_as_its_local_path(tmp_path: Path) -> None:
    from geozarr_pipeline.stac.hrefs import canonical_store_url

    folder = tmp_path / "with space" / "X.zarr"
    assert canonical_store_url(folder.as_uri()) == str(folder.resolve())
    assert canonical_store_url(str(folder)) == str(folder.resolve())


@pytest.mark.parametrize("with_item", [True, False], ids=["item-url", "zarr-url"])
def test_source_urls_of_the_event_follow_the_source_policy(
    converted_l2a: ConvertedStore, with_item: bool, tmp_path: Path
) -> None:
    """Without local mode, a loopback plain-http source named by the event is never fetched."""
    plain = place_converted(converted_l2a, tmp_path / "plain", with_item=with_item)
    settings = Settings(output_root=str(tmp_path / "plain"))
    with httpx.Client() as client, pytest.raises(InvalidInput, match="plain http is not allowed"):
        build_registered_item(plain, settings, client, "http://catalog.invalid/c")
    https_loopback = place_converted(
        converted_l2a,
        tmp_path / "loopback",
        with_item=with_item,
        source_item_url="https://127.0.0.1/items/x" if with_item else None,
        zarr_url="https://127.0.0.1/x.zarr",
    )
    settings = Settings(output_root=str(tmp_path / "loopback"))
    with httpx.Client() as client, pytest.raises(InvalidInput, match="non-public address"):
        build_registered_item(https_loopback, settings, client, "http://catalog.invalid/c")

"""The item builder on the real converter's full-size output structure (reference hierarchy).

`data/*.geozarr-hierarchy.json` is what eopf-geozarr 0.12 wrote for a real 10980 x 10980 L2A
tile (pydantic-zarr v3 GroupSpec): its metadata carries the converter's known defects (stale
array-level proj: attributes on overview levels, a zero spatial:bbox), which the builder must
not copy into the item.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pystac
import pytest

from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import InvalidInput
from geozarr_pipeline.stac.grid import multiscale_grids
from geozarr_pipeline.stac.item import build_item, item_dict, raster_fields, read_source_item
from geozarr_pipeline.stac.store import StoreTree, ZarrNode
from geozarr_pipeline.stac.validate import validation_errors

DATA = Path(__file__).parent / "data"
HIERARCHY = (
    DATA / "S2A_MSIL2A_20251008T100041_N0511_R122_T32TQM_20251008T122613.geozarr-hierarchy.json"
)
REFERENCE_SOURCE_ITEM = (
    Path(__file__).parents[3]
    / "local/src/geozarr_local/sample/reference"
    / "source-item.S2A_MSIL2A_20251113T102311_N0511_R065_T32TNQ_20251113T142515.json"
)


def _tree(spec: dict[str, Any]) -> StoreTree:
    tree = StoreTree(url="s3://bucket/geozarr/item.zarr")

    def add(path: str, node: dict[str, Any]) -> None:
        metadata = {k: v for k, v in node.items() if k != "members"}
        tree.nodes[path] = ZarrNode(path, metadata)
        for name, child in (node.get("members") or {}).items():
            add(f"{path}/{name}" if path else name, child)

    add("", spec)
    return tree


@pytest.fixture(scope="module")
def tree() -> StoreTree:
    return _tree(json.loads(HIERARCHY.read_text()))


def test_every_level_gets_its_real_grid(tree: StoreTree) -> None:
    pyramid = tree.get("measurements/reflectance")
    assert pyramid is not None
    grids = multiscale_grids(tree, pyramid)
    assert sorted(grids) == ["r10m", "r120m", "r20m", "r360m", "r60m", "r720m"]
    for name, grid in grids.items():
        level = tree.get(f"measurements/reflectance/{name}")
        assert level is not None
        assert list(grid.shape) == level.attributes["spatial:shape"]
        assert grid.code == "EPSG:32632"
        assert grid.transform[2] == 699960.0
        assert grid.transform[5] == 4700040.0
    assert grids["r10m"].resolution == 10.0
    assert grids["r60m"].resolution == 60.0
    # Overview levels: from the layout, not from their stale 60 m array attributes.
    assert grids["r120m"].resolution == 120.0
    assert grids["r360m"].resolution == 360.0
    assert grids["r720m"].resolution == pytest.approx(360.0 * 305 / 152)
    for grid in grids.values():
        # Every level covers the tile (109.8 km) within one of its own pixels.
        assert abs((grid.bbox[2] - grid.bbox[0]) - 109800.0) <= grid.resolution


def test_full_size_item(tree: StoreTree) -> None:
    source_item = json.loads(REFERENCE_SOURCE_ITEM.read_text())
    settings = Settings(
        output_root="s3://bucket/geozarr", public_base_url="https://data.example.org/geozarr"
    )
    built, paths = build_item(
        item_id="S2A_TEST",
        collection="sentinel-2-l2a",
        source_item=read_source_item(source_item, "the reference source item"),
        source_link=pystac.Link("derived_from", "https://stac.example.org/items/x"),
        store_url=tree.url,
        tree=tree,
        settings=settings,
    )
    built.add_link(pystac.Link("collection", "https://stac.example.org/c"))
    item = item_dict(built)
    assert validation_errors(item) == []
    reflectance = item["assets"]["reflectance"]
    assert reflectance["proj:shape"] == [10980, 10980]
    assert reflectance["proj:bbox"] == [699960.0, 4590240.0, 809760.0, 4700040.0]
    names = [band["name"] for band in reflectance["bands"]]
    assert names == sorted(
        ["b01", "b02", "b03", "b04", "b05", "b06", "b07", "b08", "b09", "b11", "b12", "b8a"]
    )
    gsd = {band["name"]: band["gsd"] for band in reflectance["bands"]}
    assert gsd["b02"] == 10.0
    assert gsd["b05"] == 20.0
    assert gsd["b09"] == 60.0
    nir = next(b for b in reflectance["bands"] if b["name"] == "b08")
    assert nir["eo:common_name"] == "nir"
    assert nir["eo:center_wavelength"] == pytest.approx(0.842)
    assert {k.split("_")[0] for k in item["assets"]} >= {
        "reflectance",
        "SCL",
        "AOT",
        "WVP",
        "product",
    }
    assert item["assets"]["SCL_20m"]["proj:shape"] == [5490, 5490]
    assert item["assets"]["AOT_10m"]["raster:scale"] == 0.001  # from the source item's asset
    assert paths["SCL_20m"] == "conditions/mask/l2a_classification/r20m/scl"
    for asset in item["assets"].values():
        assert asset["href"].startswith("https://data.example.org/geozarr/item.zarr")
        assert asset["alternate"]["s3"]["href"].startswith("s3://bucket/geozarr/item.zarr")
    # Source-only fields are gone; the source properties stay.
    assert "proj:bbox" not in item["properties"]
    assert item["properties"]["eo:cloud_cover"] == source_item["properties"]["eo:cloud_cover"]
    assert "xarray:open_dataset_kwargs" not in json.dumps(item)


def test_a_source_bbox_with_west_greater_than_east_far_from_180_is_recomputed(
    tree: StoreTree,
) -> None:
    """As EOPF products carry it (see their stac_discovery)."""
    source = json.loads(REFERENCE_SOURCE_ITEM.read_text())
    west, south, east, north = source["bbox"]
    source["bbox"] = [east, south, west, north]
    assert _built(tree, source)["bbox"] == [west, south, east, north]


def test_a_source_bbox_across_the_antimeridian_is_kept(tree: StoreTree) -> None:
    source = json.loads(REFERENCE_SOURCE_ITEM.read_text())
    source["geometry"] = {
        "type": "Polygon",
        "coordinates": [
            [[179.5, -17.0], [-179.5, -17.0], [-179.5, -16.0], [179.5, -16.0], [179.5, -17.0]]
        ],
    }
    source["bbox"] = [179.5, -17.0, -179.5, -16.0]
    assert _built(tree, source)["bbox"] == [179.5, -17.0, -179.5, -16.0]


def _built(tree: StoreTree, source: dict[str, Any]) -> dict[str, Any]:
    built, _paths = build_item(
        item_id="S2A_TEST",
        collection="sentinel-2-l2a",
        source_item=read_source_item(source, "a source item"),
        source_link=pystac.Link("derived_from", "https://stac.example.org/items/x"),
        store_url=tree.url,
        tree=tree,
        settings=Settings(output_root="s3://bucket/geozarr"),
    )
    return item_dict(built)


@pytest.mark.parametrize(
    "published", ["2025-11-13T10:23:11.024+00:00", "2025-11-13T10:23:11.024000Z", None]
)
def test_the_source_datetime_is_written_as_published(
    tree: StoreTree, published: str | None
) -> None:
    """pystac would write `...11.024000Z` for all of them; the item keeps the source's text."""
    source = json.loads(REFERENCE_SOURCE_ITEM.read_text())
    source["properties"]["datetime"] = published
    assert _built(tree, source)["properties"]["datetime"] == published


def test_a_source_datetime_that_is_no_date_time_is_invalid_input(tree: StoreTree) -> None:
    source = json.loads(REFERENCE_SOURCE_ITEM.read_text())
    source["properties"]["datetime"] = "null"  # as EOPF L1C products carry it
    with pytest.raises(InvalidInput, match="datetime"):
        _built(tree, source)


def test_a_source_with_no_datetime_and_no_range_is_invalid_input(tree: StoreTree) -> None:
    source = json.loads(REFERENCE_SOURCE_ITEM.read_text())
    source["properties"]["datetime"] = None
    del source["properties"]["start_datetime"], source["properties"]["end_datetime"]
    with pytest.raises(InvalidInput, match="datetime"):
        _built(tree, source)


def test_scale_offset_and_nodata_come_from_the_array() -> None:
    """keep_scale_offset=True output: uint16 with CF scale/offset attributes and fill 0."""
    node = ZarrNode(
        "measurements/reflectance/r10m/b02",
        {
            "node_type": "array",
            "data_type": "uint16",
            "fill_value": 0,
            "shape": [10980, 10980],
            "attributes": {"scale_factor": 0.0001, "add_offset": -0.1, "_FillValue": 0},
        },
    )
    assert raster_fields(node) == {
        "data_type": "uint16",
        "nodata": 0,
        "raster:scale": 0.0001,
        "raster:offset": -0.1,
    }
    floats = ZarrNode(
        "x",
        {
            "node_type": "array",
            "data_type": "float32",
            "fill_value": "NaN",
            "attributes": {"_FillValue": "AAAAAAAA+H8="},
        },
    )
    assert raster_fields(floats) == {"data_type": "float32", "nodata": "nan"}
    # A class map without a CF _FillValue: its Zarr fill value 0 is a class, not nodata.
    classes = ZarrNode("scl", {"node_type": "array", "data_type": "uint8", "fill_value": 0})
    assert raster_fields(classes) == {"data_type": "uint8"}

"""The source item has the shape of a real EODC item and points at the sample product."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from geozarr_local.sample.hierarchy import SOURCE_ITEM_TEMPLATE, load_hierarchy, walk
from geozarr_local.sample.item import make_source_item, source_item_template
from tests.fixtures.sample import SampleRoot

STORE = "http://127.0.0.1:9/products/X.zarr"


def _item(kind: str = "l2a", **kwargs: Any) -> dict[str, Any]:
    spec = load_hierarchy(kind)
    return make_source_item("X", "sentinel-2-l2a", STORE, spec["attributes"], **kwargs)


def test_item_has_the_reference_shape() -> None:
    reference = source_item_template()
    item = _item()
    assert set(item) == set(reference)
    assert item["stac_extensions"] == reference["stac_extensions"]
    assert set(item["properties"]) == set(reference["properties"])
    assert [link["rel"] for link in item["links"]] == [link["rel"] for link in reference["links"]]
    assert set(item["assets"]) == set(reference["assets"])
    for key, asset in item["assets"].items():
        ref = reference["assets"][key]
        assert set(asset) == set(ref), key
        assert asset["type"] == ref["type"], key
        assert asset["roles"] == ref["roles"], key


def test_item_exposes_the_store_like_the_real_item() -> None:
    item = _item()
    assert item["assets"]["product"]["href"] == STORE
    assert item["assets"]["product"]["type"] == "application/vnd.zarr"
    assert item["assets"]["product_metadata"]["href"] == f"{STORE}/.zmetadata"
    assert item["assets"]["B02_10m"]["href"] == f"{STORE}/measurements/reflectance/r10m/b02"
    assert item["assets"]["SR_20m"]["href"] == f"{STORE}/measurements/reflectance/r20m"
    scl = item["assets"]["SCL_20m"]["href"]
    assert scl == f"{STORE}/conditions/mask/l2a_classification/r20m/scl"


def test_item_geometry_and_time_come_from_the_product() -> None:
    spec = load_hierarchy("l2a")
    sd = spec["attributes"]["stac_discovery"]
    item = _item()
    assert item["id"] == "X"
    assert item["collection"] == "sentinel-2-l2a"
    assert item["geometry"] == sd["geometry"]
    lons = [p[0] for p in sd["geometry"]["coordinates"][0]]
    lats = [p[1] for p in sd["geometry"]["coordinates"][0]]
    assert item["bbox"] == [min(lons), min(lats), max(lons), max(lats)]
    assert item["properties"]["datetime"].startswith("2025-10-08T10:00:41")
    assert item["properties"]["proj:code"] == "EPSG:32632"
    assert item["properties"]["platform"] == "sentinel-2a"
    assert item["properties"]["sat:relative_orbit"] == sd["properties"]["sat:relative_orbit"]


def test_links_point_at_the_api_base() -> None:
    item = _item(api_base="http://api.test")
    links = {link["rel"]: link["href"] for link in item["links"]}
    assert links["self"] == "http://api.test/collections/sentinel-2-l2a/items/X"
    assert links["collection"] == "http://api.test/collections/sentinel-2-l2a"
    assert links["root"] == "http://api.test/"


def test_l1c_item_keeps_only_assets_the_product_has() -> None:
    spec = load_hierarchy("l1c")
    members = {path for path, _ in walk(spec)}
    item = _item("l1c", members=members)
    assert "SCL_20m" not in item["assets"]
    assert "AOT_10m" not in item["assets"]
    assert "product" in item["assets"]
    for asset in item["assets"].values():
        href = asset["href"]
        if href.startswith(STORE + "/") and not href.endswith(".zmetadata"):
            assert href[len(STORE) + 1 :] in members
    assert item["properties"]["processing:level"] == "L1C"
    assert item["assets"]["TCI_10m"]["href"] == f"{STORE}/quality/l1c_quicklook/r10m/tci"
    assert "TOA" in item["assets"]["B02_10m"]["description"]


@pytest.mark.parametrize(
    "name",
    [
        "products/S2A_MSIL2A_20251008T100041_N0511_R122_T32TQM_20251008T122613.source-hierarchy.json",
        "products/S2B_MSIL1C_20250113T103309_N0511_R108_T32TLQ_20250113T122458.source-hierarchy.json",
        f"stac/{SOURCE_ITEM_TEMPLATE}",
    ],
)
def test_packaged_reference_copies_equal_the_shared_reference(name: str) -> None:
    repo = Path(__file__).resolve().parents[3]
    shared = repo.parent / "shared" / "reference" / name
    if not shared.is_file():
        pytest.skip("../shared/reference is not beside this clone")
    packaged = repo / "local/src/geozarr_local/sample/reference" / Path(name).name
    assert json.loads(packaged.read_text()) == json.loads(shared.read_text())
    assert packaged.read_bytes() == shared.read_bytes()


def test_written_item_matches_the_product(sample_root: SampleRoot) -> None:
    item = json.loads(sample_root.l2a.item_path.read_text())
    assert item["id"] == sample_root.l2a.item_id
    assert item["assets"]["product"]["href"].endswith(f"/products/{sample_root.l2a.item_id}.zarr")

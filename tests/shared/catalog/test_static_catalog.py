"""The on-disk static catalog: layout, links, modes, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from geozarr_pipeline.catalog import open_catalog
from geozarr_pipeline.catalog.static import StaticCatalog
from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import InvalidInput, SourceNotFound


def _item(item_id: str = "S2A_TEST", title: str = "first") -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "geometry": {"type": "Point", "coordinates": [1.0, 2.0]},
        "bbox": [1.0, 2.0, 1.0, 2.0],
        "properties": {"datetime": "2025-01-01T00:00:00Z", "title": title},
        "links": [{"rel": "derived_from", "href": "http://source/item"}],
        "assets": {"reflectance": {"href": "/data/x.zarr/measurements/reflectance"}},
    }


def test_layout_and_links(tmp_path: Path) -> None:
    catalog = open_catalog(Settings(catalog_root=tmp_path))
    assert isinstance(catalog, StaticCatalog)
    url = catalog.put_item(_item(), "upsert")
    item_path = tmp_path / "sentinel-2-l2a" / "S2A_TEST" / "S2A_TEST.json"
    assert url == item_path.resolve().as_uri()
    root = json.loads((tmp_path / "catalog.json").read_text())
    assert {
        "rel": "child",
        "href": "./sentinel-2-l2a/collection.json",
        "type": "application/json",
    } in root["links"]
    collection = json.loads((tmp_path / "sentinel-2-l2a" / "collection.json").read_text())
    assert collection["id"] == "sentinel-2-l2a"
    assert collection["extent"]["spatial"]["bbox"]
    stored = json.loads(item_path.read_text())
    rels = {link["rel"]: link["href"] for link in stored["links"]}
    assert (item_path.parent / rels["collection"]).resolve() == (
        tmp_path / "sentinel-2-l2a" / "collection.json"
    ).resolve()
    assert (item_path.parent / rels["root"]).resolve() == (tmp_path / "catalog.json").resolve()
    assert rels["derived_from"] == "http://source/item"
    assert not list(tmp_path.rglob("*.tmp"))


def test_modes(tmp_path: Path) -> None:
    catalog = StaticCatalog(tmp_path)
    catalog.put_item(_item(title="first"), "create-or-skip")
    catalog.put_item(_item(title="second"), "create-or-skip")
    assert catalog.get_item("sentinel-2-l2a", "S2A_TEST")["properties"]["title"] == "first"

    augmented = catalog.get_item("sentinel-2-l2a", "S2A_TEST")
    augmented["assets"]["thumbnail"] = {"href": "http://tiles/preview.png", "roles": ["thumbnail"]}
    catalog.put_item(augmented, "replace")

    catalog.put_item(_item(title="third"), "upsert")
    upserted = catalog.get_item("sentinel-2-l2a", "S2A_TEST")
    assert upserted["properties"]["title"] == "third"
    assert "thumbnail" in upserted["assets"], "upsert keeps what augment added"
    assert [link["rel"] for link in upserted["links"]].count("self") == 1

    catalog.put_item(_item(title="fourth"), "replace")
    replaced = catalog.get_item("sentinel-2-l2a", "S2A_TEST")
    assert replaced["properties"]["title"] == "fourth"
    assert "thumbnail" not in replaced["assets"]
    collection = json.loads((tmp_path / "catalog.json").read_text())
    assert [link["rel"] for link in collection["links"]].count("child") == 1


def test_missing_item_and_unsafe_ids(tmp_path: Path) -> None:
    catalog = StaticCatalog(tmp_path)
    with pytest.raises(SourceNotFound):
        catalog.get_item("sentinel-2-l2a", "nothing")
    with pytest.raises(InvalidInput):
        catalog.put_item(_item(item_id="../escape"), "upsert")


def test_delete_item_removes_its_folder_at_once(tmp_path: Path) -> None:
    catalog = StaticCatalog(tmp_path)
    catalog.put_item(_item("S2A_GONE"), "upsert")
    catalog.put_item(_item("S2A_KEPT"), "upsert")
    collection = tmp_path / "sentinel-2-l2a"
    assert catalog.delete_item("sentinel-2-l2a", "S2A_GONE") is True
    with pytest.raises(SourceNotFound):
        catalog.get_item("sentinel-2-l2a", "S2A_GONE")
    assert catalog.get_item("sentinel-2-l2a", "S2A_KEPT")["id"] == "S2A_KEPT"
    # The item folder is gone whole, and so is the renamed copy it went through.
    assert sorted(p.name for p in collection.iterdir()) == [".lock", "S2A_KEPT", "collection.json"]
    assert catalog.delete_item("sentinel-2-l2a", "S2A_GONE") is False


def test_delete_item_of_nothing_creates_nothing(tmp_path: Path) -> None:
    catalog = StaticCatalog(tmp_path / "catalog")
    assert catalog.delete_item("no-such-collection", "x") is False
    assert not (tmp_path / "catalog").exists()
    with pytest.raises(InvalidInput):
        catalog.delete_item("sentinel-2-l2a", "../escape")

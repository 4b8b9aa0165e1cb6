"""Links, renders and thumbnail built for a registered item, and applying them twice."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest

from geozarr_pipeline.errors import UnsupportedProduct
from geozarr_pipeline.visual import (
    RENDER_EXTENSION,
    WEB_MAP_LINKS_EXTENSION,
    RasterApi,
    add_visualisation,
    split_zarr_href,
)
from geozarr_pipeline.visual.rendering import render_query

DATA = Path(__file__).parent / "data"
RASTER = "https://raster.example.test/raster"
REFLECTANCE = "/measurements/reflectance"
TRUE_COLOR_VARIABLES = [
    "/measurements/reflectance/r10m:b04",
    "/measurements/reflectance/r10m:b03",
    "/measurements/reflectance/r10m:b02",
]


@pytest.fixture
def registered() -> dict[str, Any]:
    """The predecessor's registered item (its own visual links carry `+` for spaces)."""
    item: dict[str, Any] = json.loads((DATA / "registered-item.json").read_text())
    return item


@pytest.fixture
def augmented(registered: dict[str, Any]) -> dict[str, Any]:
    return add_visualisation(registered, RasterApi(RASTER))


def links_by_rel(item: dict[str, Any], rel: str) -> list[dict[str, Any]]:
    return [link for link in item["links"] if link["rel"] == rel]


def raw_query_pairs(href: str) -> list[tuple[str, str]]:
    """The query as written (still encoded), split on & and the first =."""
    query = urlsplit(href).query
    return [tuple(part.split("=", 1)) for part in query.split("&")] if query else []  # type: ignore[misc]


def decoded(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(unquote(k), unquote(v)) for k, v in pairs]


def test_links_have_the_operator_shapes(augmented: dict[str, Any]) -> None:
    root = f"{RASTER}/collections/{augmented['collection']}/items/{augmented['id']}"
    (viewer,) = links_by_rel(augmented, "viewer")
    (xyz,) = links_by_rel(augmented, "xyz")
    (tilejson,) = links_by_rel(augmented, "tilejson")
    (wmts,) = links_by_rel(augmented, "wmts")
    assert viewer["href"] == f"{root}/viewer"
    assert viewer["type"] == "text/html"
    assert xyz["href"].startswith(f"{root}/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png?")
    assert xyz["type"] == "image/png"
    assert tilejson["href"].startswith(f"{root}/WebMercatorQuad/tilejson.json?")
    assert tilejson["type"] == "application/json"
    assert wmts["href"] == f"{root}/WebMercatorQuad/WMTSCapabilities.xml"
    assert wmts["wmts:layer"] == "true-color"
    for link in (viewer, xyz, tilejson, wmts):
        assert link["title"]


def test_default_rendering_is_true_colour_of_the_10m_level(augmented: dict[str, Any]) -> None:
    (xyz,) = links_by_rel(augmented, "xyz")
    query = decoded(raw_query_pairs(xyz["href"]))
    assert [v for k, v in query if k == "variables"] == TRUE_COLOR_VARIABLES
    assert [v for k, v in query if k == "rescale"] == ["0,1"]
    (formula,) = [v for k, v in query if k == "color_formula"]
    assert " " in formula
    assert [v for k, v in query if k == "bidx"] == ["1"]


def test_every_query_value_is_encoded_the_same_way(augmented: dict[str, Any]) -> None:
    hrefs = [link["href"] for link in augmented["links"] if link["rel"] in ("xyz", "tilejson")]
    hrefs.append(augmented["assets"]["thumbnail"]["href"])
    queries = []
    for href in hrefs:
        assert "+" not in href, href
        assert " " not in href, href
        pairs = raw_query_pairs(href)
        assert pairs
        for key, value in pairs:
            assert value == quote(unquote(value), safe=""), (key, value)
            assert key == quote(unquote(key), safe="")
            assert not re.search(r"[,:/ ]", value), (key, value)
        queries.append([pair for pair in decoded(pairs) if pair != ("format", "png")])
    assert queries[0] == queries[1] == queries[2]


def test_render_entry_describes_the_same_rendering(augmented: dict[str, Any]) -> None:
    entry = augmented["properties"]["renders"]["true-color"]
    assert entry["assets"] == ["reflectance"]
    assert entry["variables"] == TRUE_COLOR_VARIABLES
    assert entry["rescale"] == [[0.0, 1.0]]
    assert entry["title"]
    (xyz,) = links_by_rel(augmented, "xyz")
    assert render_query(entry) == decoded(raw_query_pairs(xyz["href"]))


def test_thumbnail_is_a_png_preview(augmented: dict[str, Any]) -> None:
    thumbnail = augmented["assets"]["thumbnail"]
    root = f"{RASTER}/collections/{augmented['collection']}/items/{augmented['id']}"
    assert thumbnail["href"].startswith(f"{root}/preview?format=png&")
    assert thumbnail["type"] == "image/png"
    assert thumbnail["roles"] == ["thumbnail"]


def test_extensions_declared_once(augmented: dict[str, Any]) -> None:
    for uri in (RENDER_EXTENSION, WEB_MAP_LINKS_EXTENSION):
        assert augmented["stac_extensions"].count(uri) == 1


def test_other_links_and_assets_are_kept(
    registered: dict[str, Any], augmented: dict[str, Any]
) -> None:
    owned = {"viewer", "xyz", "tilejson", "wmts"}
    before = [link for link in registered["links"] if link["rel"] not in owned]
    after = [link for link in augmented["links"] if link["rel"] not in owned]
    assert after == before
    for key, asset in registered["assets"].items():
        if key != "thumbnail":
            assert augmented["assets"][key] == asset


def test_augmenting_twice_gives_the_same_item(
    registered: dict[str, Any], augmented: dict[str, Any]
) -> None:
    original = copy.deepcopy(registered)
    again = add_visualisation(augmented, RasterApi(RASTER))
    assert again == augmented
    assert registered == original, "the input item must not be modified"
    rels = [link["rel"] for link in again["links"]]
    for rel in ("viewer", "xyz", "tilejson", "wmts"):
        assert rels.count(rel) == 1


def test_a_new_raster_base_replaces_the_old_links(augmented: dict[str, Any]) -> None:
    moved = add_visualisation(augmented, RasterApi("http://127.0.0.1:9999/"))
    for rel in ("viewer", "xyz", "tilejson", "wmts"):
        (link,) = links_by_rel(moved, rel)
        assert link["href"].startswith("http://127.0.0.1:9999/collections/")
    assert moved["assets"]["thumbnail"]["href"].startswith("http://127.0.0.1:9999/collections/")


def test_item_without_reflectance_is_unsupported(registered: dict[str, Any]) -> None:
    del registered["assets"]["reflectance"]
    with pytest.raises(UnsupportedProduct, match="reflectance"):
        add_visualisation(registered, RasterApi(RASTER))


def test_reflectance_without_true_colour_bands_is_unsupported(registered: dict[str, Any]) -> None:
    bands = registered["assets"]["reflectance"]["bands"]
    registered["assets"]["reflectance"]["bands"] = [b for b in bands if b["name"] != "b04"]
    with pytest.raises(UnsupportedProduct, match="b04"):
        add_visualisation(registered, RasterApi(RASTER))


@pytest.mark.parametrize(
    ("href", "store", "group"),
    [
        ("s3://b/p/X.zarr/measurements/reflectance", "s3://b/p/X.zarr", REFLECTANCE),
        ("/data/X.zarr/measurements/reflectance/", "/data/X.zarr", REFLECTANCE),
        ("https://h/X.zarr", "https://h/X.zarr", "/"),
    ],
)
def test_split_zarr_href(href: str, store: str, group: str) -> None:
    assert split_zarr_href(href) == (store, group)

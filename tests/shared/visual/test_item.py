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
from geozarr_pipeline.visual import titiler_eopf as contract
from geozarr_pipeline.visual.rendering import render_query
from geozarr_pipeline.visual.titiler_eopf import (
    contract_problems,
    multiscale_level,
    parse_url,
    split_variable,
)

DATA = Path(__file__).parent / "data"
RASTER = "https://raster.example.test/raster"
REFLECTANCE = "/measurements/reflectance"
TRUE_COLOR_VARIABLES = [
    "/measurements/reflectance:b04",
    "/measurements/reflectance:b03",
    "/measurements/reflectance:b02",
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
    assert wmts["href"].startswith(f"{root}/WMTSCapabilities.xml?")
    store = registered_store(augmented)
    assert wmts["wmts:layer"] == f"{store}_WebMercatorQuad_default"
    for link in (viewer, xyz, tilejson, wmts):
        assert link["title"]


def registered_store(item: dict[str, Any]) -> str:
    """The store the raster API reads: the product's s3 alternate, else the store link."""
    product = item["assets"].get("product") or {}
    alternate = (product.get("alternate") or {}).get("s3")
    if alternate:
        return str(alternate["href"]).rstrip("/")
    (store,) = links_by_rel(item, "store")
    return str(store["href"]).rstrip("/")


def test_every_link_keeps_the_titiler_eopf_contract(augmented: dict[str, Any]) -> None:
    hrefs = {link["rel"]: link["href"] for link in augmented["links"]}
    hrefs["thumbnail"] = augmented["assets"]["thumbnail"]["href"]
    routes = {}
    for rel in ("viewer", "xyz", "tilejson", "wmts", "thumbnail"):
        assert contract_problems(hrefs[rel], RASTER) == [], rel
        request = parse_url(hrefs[rel], RASTER)
        assert (request.collection_id, request.item_id) == (
            augmented["collection"],
            augmented["id"],
        )
        routes[rel] = request
    assert {rel: request.route for rel, request in routes.items()} == {
        "viewer": contract.VIEWER,
        "xyz": contract.TILE,
        "tilejson": contract.TILEJSON,
        "wmts": contract.WMTS,
        "thumbnail": contract.PREVIEW,
    }
    reflectance = augmented["assets"]["reflectance"]["href"]
    group = "/" + reflectance.rstrip("/").split(".zarr/", 1)[1]
    for rel in ("xyz", "tilejson", "wmts", "thumbnail"):
        variables = routes[rel].values("variables")
        assert [split_variable(v)[0] for v in variables] == [group] * 3, rel
        assert "%20" in routes[rel].raw_query, "the colour formula's spaces are %20"
    assert routes["xyz"].path_values["tileMatrixSetId"] == "WebMercatorQuad"
    assert routes["thumbnail"].values("max_size") == ["512"]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"{RASTER}/collections/c/items/i/WebMercatorQuad/WMTSCapabilities.xml", "no route"),
        (f"{RASTER}/collections/c/items/i/tiles/WebMercatorQuad/1/2/3.png", "neither"),
        (f"{RASTER}/collections/c/items/i/tiles/WebMercatorQuad/1/2/3.png?variables=/g:b", "size"),
        (f"{RASTER}/collections/c/items/i/preview.png?variables=b04", "not of the form"),
        (f"{RASTER}/collections/c/items/i/viewer?color_formula=a+b", "not in the contract"),
        (f"{RASTER}/collections/c/items/i/preview.png?variables=/g:b&color_formula=a+b", "'+'"),
        (
            f"{RASTER}/collections/c/items/i/tiles/WebMercatorQuad/1/2/3.gif?variables=/g:b",
            "format",
        ),
        ("https://elsewhere.test/collections/c/items/i/viewer", "not on the raster API"),
    ],
)
def test_the_contract_names_what_a_link_gets_wrong(url: str, problem: str) -> None:
    problems = contract_problems(url, RASTER)
    assert problems
    assert any(problem in p for p in problems), problems


def test_multiscale_level_mirrors_titiler_eopf() -> None:
    def entry(asset: str, size: float) -> dict[str, Any]:
        return {"asset": asset, "spatial:transform": [size, 0.0, 0.0, 0.0, -size, 0.0]}

    layout = [entry("r10m", 10), entry("r20m", 20), entry("r60m", 60), entry("r120m", 120)]
    # From the coarsest: a level is taken once the target is past half-way from the finer one.
    assert multiscale_level(layout, 500.0) == "r120m"
    assert multiscale_level(layout, 91.0) == "r120m"
    assert multiscale_level(layout, 90.0) == "r60m"
    assert multiscale_level(layout, 60.0) == "r60m"
    assert multiscale_level(layout, 41.0) == "r60m"
    assert multiscale_level(layout, 39.0) == "r20m"
    assert multiscale_level(layout, 15.5) == "r20m"
    assert multiscale_level(layout, 15.0) == "r10m"
    assert multiscale_level(layout, 1.0) == "r10m"
    assert multiscale_level(layout, 39.0, "UPPER") == "r60m"
    assert multiscale_level(layout, 59.0, "LOWER") == "r20m"
    assert multiscale_level(layout[:1], 999.0) == "r10m"
    with pytest.raises(ValueError, match="transform"):
        multiscale_level([{"asset": "r10m"}], 10.0)


def test_default_rendering_is_true_colour_of_the_multiscale_group(
    augmented: dict[str, Any],
) -> None:
    (xyz,) = links_by_rel(augmented, "xyz")
    query = decoded(raw_query_pairs(xyz["href"]))
    assert [v for k, v in query if k == "variables"] == TRUE_COLOR_VARIABLES
    assert [v for k, v in query if k == "rescale"] == ["0,1"]
    (formula,) = [v for k, v in query if k == "color_formula"]
    assert " " in formula
    assert [v for k, v in query if k == "bidx"] == ["1"]


def test_every_query_value_is_encoded_the_same_way(augmented: dict[str, Any]) -> None:
    hrefs = [
        link["href"] for link in augmented["links"] if link["rel"] in ("xyz", "tilejson", "wmts")
    ]
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
        queries.append([pair for pair in decoded(pairs) if pair[0] not in ("max_size", "tilesize")])
    assert queries[0] == queries[1] == queries[2] == queries[3]


def test_render_entry_describes_the_same_rendering(augmented: dict[str, Any]) -> None:
    entry = augmented["properties"]["renders"]["true-color"]
    assert entry["assets"] == ["reflectance"]
    assert entry["variables"] == TRUE_COLOR_VARIABLES
    assert entry["rescale"] == [[0.0, 1.0]]
    assert entry["title"]
    (xyz,) = links_by_rel(augmented, "xyz")
    size, *query = decoded(raw_query_pairs(xyz["href"]))
    assert size == ("tilesize", "256"), "titiler-eopf picks no level for a tile of no size"
    assert render_query(entry) == query


def test_thumbnail_is_a_png_preview(augmented: dict[str, Any]) -> None:
    thumbnail = augmented["assets"]["thumbnail"]
    root = f"{RASTER}/collections/{augmented['collection']}/items/{augmented['id']}"
    assert thumbnail["href"].startswith(f"{root}/preview.png?max_size=512&")
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


def test_a_multiscale_group_titiler_eopf_cannot_read_is_named() -> None:
    conventions = [
        {"uuid": contract.MULTISCALES_CONVENTION, "name": "multiscales"},
        {"uuid": contract.SPATIAL_CONVENTION, "name": "spatial:"},
    ]
    level = {"asset": "r10m", "spatial:transform": [10.0, 0.0, 0.0, 0.0, -10.0, 0.0]}
    good = {
        "zarr_conventions": conventions,
        "spatial:dimensions": ["y", "x"],
        "multiscales": {"layout": [level]},
    }
    assert contract.multiscale_group_problems(good) == []
    no_convention = {**good, "zarr_conventions": conventions[1:]}
    assert "multiscales convention" in contract.multiscale_group_problems(no_convention)[0]
    no_dimensions = {k: v for k, v in good.items() if k != "spatial:dimensions"}
    assert "spatial:dimensions" in contract.multiscale_group_problems(no_dimensions)[0]
    no_transform = {**good, "multiscales": {"layout": [{"asset": "r10m"}]}}
    assert "transform" in contract.multiscale_group_problems(no_transform)[0]

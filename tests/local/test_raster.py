"""Every link of an augmented item, answered by the local raster server over real HTTP."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import morecantile
import numpy as np
import pytest

from geozarr_local.stack import LocalStack
from geozarr_pipeline.catalog import open_catalog
from geozarr_pipeline.config import Settings
from geozarr_pipeline.visual.titiler_eopf import contract_problems, multiscale_level
from tests.fixtures.stack import ChainRun
from tests.fixtures.visual import MapSetup, read_png

WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")
WMTS = "{http://www.opengis.net/wmts/1.0}"
OWS = "{http://www.opengis.net/ows/1.1}"


def footprint_centre(item: dict[str, Any]) -> tuple[float, float]:
    ring = item["geometry"]["coordinates"][0]
    lons = [p[0] for p in ring[:-1]]
    lats = [p[1] for p in ring[:-1]]
    return sum(lons) / len(lons), sum(lats) / len(lats)


def fill_template(template: str, z: int, x: int, y: int) -> str:
    return template.replace("{z}", str(z)).replace("{x}", str(x)).replace("{y}", str(y))


def assert_canonical_query(url: str) -> None:
    assert "+" not in url
    assert " " not in url
    for part in urlsplit(url).query.split("&"):
        _key, _, value = part.partition("=")
        assert value == quote(unquote(value), safe=""), part


@pytest.fixture(scope="module")
def tilejson(map_setup: MapSetup) -> dict[str, Any]:
    response = httpx.get(map_setup.link("tilejson"), timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


def test_tilejson_is_valid_tilejson(map_setup: MapSetup, tilejson: dict[str, Any]) -> None:
    assert tilejson["tilejson"] == "3.0.0"
    assert tilejson["scheme"] == "xyz"
    (template,) = tilejson["tiles"]
    assert template.startswith(f"{map_setup.raster_url}/collections/")
    assert "/tiles/WebMercatorQuad/{z}/{x}/{y}.png?" in template
    assert_canonical_query(template)
    west, south, east, north = tilejson["bounds"]
    assert -180 <= west < east <= 180
    assert -90 <= south < north <= 90
    bbox = map_setup.item["bbox"]
    assert west < bbox[2]
    assert east > bbox[0]
    assert south < bbox[3]
    assert north > bbox[1]
    assert 0 <= tilejson["minzoom"] <= tilejson["maxzoom"] <= 24
    lon, lat, zoom = tilejson["center"]
    assert west <= lon <= east
    assert south <= lat <= north
    assert zoom == tilejson["minzoom"]


def test_tilejson_tiles_carry_the_link_query(map_setup: MapSetup, tilejson: dict[str, Any]) -> None:
    link_query = urlsplit(map_setup.link("tilejson")).query
    assert urlsplit(tilejson["tiles"][0]).query == link_query


@pytest.mark.parametrize("zoom_from", ["maxzoom", "minzoom"])
def test_tile_inside_the_footprint_has_imagery(
    map_setup: MapSetup, tilejson: dict[str, Any], zoom_from: str
) -> None:
    lon, lat = footprint_centre(map_setup.item)
    tile = WEB_MERCATOR.tile(lon, lat, tilejson[zoom_from])
    url = fill_template(map_setup.link("xyz"), tile.z, tile.x, tile.y)
    response = httpx.get(url, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    levels = response.headers["X-GeoZarr-Levels"].split(",")
    if zoom_from == "maxzoom":
        assert levels == ["/measurements/reflectance/r10m"]
    else:
        assert len(levels) == 1
        assert levels[0].rsplit("/", 1)[1] in ("r360m", "r720m"), levels
    pixels = read_png(response.content)
    assert pixels.shape[0] == 4, "RGB plus alpha"
    alpha = pixels[3]
    # At maxzoom the tile lies inside the footprint; at minzoom the item is a small part of it.
    least = 0.5 if zoom_from == "maxzoom" else 0.0005
    assert (alpha > 0).mean() > least, "the tile at the footprint centre shows data"
    rgb = pixels[:3][:, alpha > 0].astype(int)
    assert rgb.std() > 1.0, "imagery, not a flat fill"
    assert np.abs(rgb[0] - rgb[2]).mean() > 0.5, "three distinct bands"


def test_tile_outside_the_footprint_is_404(map_setup: MapSetup) -> None:
    lon, lat = footprint_centre(map_setup.item)
    tile = WEB_MERCATOR.tile(-lon, -lat, 12)
    response = httpx.get(fill_template(map_setup.link("xyz"), tile.z, tile.x, tile.y), timeout=60)
    assert response.status_code == 404


def test_thumbnail_is_a_png_preview_of_a_coarse_level(map_setup: MapSetup) -> None:
    response = httpx.get(map_setup.item["assets"]["thumbnail"]["href"], timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    pixels = read_png(response.content)
    assert pixels.shape[0] == 4
    assert max(pixels.shape[1:]) <= 512
    # The level the contract picks for a 512-pixel image of the whole item (at full size a
    # coarse one; this small sample's finest level is about 512 pixels across).
    group = json.loads((map_setup.store / "measurements/reflectance/zarr.json").read_text())
    layout = group["attributes"]["multiscales"]["layout"]
    finest = layout[0]
    extent = finest["spatial:transform"][0] * max(finest["spatial:shape"])
    expected = f"/measurements/reflectance/{multiscale_level(layout, extent / 512)}"
    assert response.headers["X-GeoZarr-Levels"].split(",") == [expected]
    assert (pixels[3] > 0).mean() > 0.3
    assert pixels[:3][:, pixels[3] > 0].std() > 1.0


def test_wmts_capabilities_list_the_linked_layer(map_setup: MapSetup) -> None:
    (link,) = [link for link in map_setup.item["links"] if link["rel"] == "wmts"]
    response = httpx.get(link["href"], timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.content)
    layers = root.findall(f"{WMTS}Contents/{WMTS}Layer")
    identifiers = [layer.findtext(f"{OWS}Identifier") for layer in layers]
    assert link["wmts:layer"] in identifiers
    layer = layers[identifiers.index(link["wmts:layer"])]
    template = layer.find(f"{WMTS}ResourceURL").get("template")  # type: ignore[union-attr]
    assert template is not None
    assert "{TileMatrix}/{TileCol}/{TileRow}.png?" in template
    assert_canonical_query(template)
    (mercator,) = [
        matrix_set
        for matrix_set in root.findall(f"{WMTS}Contents/{WMTS}TileMatrixSet")
        if matrix_set.findtext(f"{OWS}Identifier") == "WebMercatorQuad"
    ]
    assert len(mercator.findall(f"{WMTS}TileMatrix")) == len(WEB_MERCATOR.tileMatrices)
    lon, lat = footprint_centre(map_setup.item)
    tile = WEB_MERCATOR.tile(lon, lat, 12)
    url = (
        template.replace("{TileMatrix}", str(tile.z))
        .replace("{TileCol}", str(tile.x))
        .replace("{TileRow}", str(tile.y))
    )
    tile_response = httpx.get(url, timeout=60)
    assert tile_response.status_code == 200
    assert read_png(tile_response.content).shape[0] == 4


def test_viewer_page_embeds_the_tilejson_link(map_setup: MapSetup) -> None:
    response = httpx.get(map_setup.link("viewer"), timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    match = re.search(r'id="viewer-config">(.*?)</script>', response.text, re.S)
    assert match
    config = json.loads(match.group(1))
    assert config["item_id"] == map_setup.item_id
    assert config["geometry"] == map_setup.item["geometry"]
    assert urlsplit(config["tilejson_url"]).query == urlsplit(map_setup.link("tilejson")).query
    static = httpx.get(f"{config['static_url']}/leaflet/leaflet.js", timeout=30)
    assert static.status_code == 200
    assert b"Leaflet" in static.content[:2000]


def test_the_old_wmts_route_and_links_without_variables_are_refused(map_setup: MapSetup) -> None:
    root = map_setup.link("viewer").removesuffix("/viewer")
    assert httpx.get(f"{root}/WebMercatorQuad/WMTSCapabilities.xml", timeout=30).status_code == 404
    for path in ("/WMTSCapabilities.xml", "/WebMercatorQuad/tilejson.json", "/preview.png"):
        response = httpx.get(root + path, timeout=30)
        assert response.status_code == 400, (path, response.text)
        assert "variables" in response.text


def test_unknown_item_is_404(map_setup: MapSetup) -> None:
    url = map_setup.link("tilejson").replace(map_setup.item_id, "no-such-item")
    response = httpx.get(url, timeout=30)
    assert response.status_code == 404
    assert "no-such-item" in response.text


def test_healthz(map_setup: MapSetup) -> None:
    assert httpx.get(f"{map_setup.raster_url}/healthz", timeout=10).status_code == 200


def test_every_link_of_the_chain_item_is_answered(
    local_stack: LocalStack, chain_run: ChainRun
) -> None:
    """The item the whole local chain produced: each link it carries works on this stack."""
    done = chain_run.augment_done
    settings = Settings(catalog_backend="static", catalog_root=local_stack.root / "catalog")
    item = open_catalog(settings).get_item(done["collection"], done["item_id"])
    links = {link["rel"]: link["href"] for link in item["links"]}
    links["thumbnail"] = item["assets"]["thumbnail"]["href"]
    for rel in ("viewer", "xyz", "tilejson", "wmts", "thumbnail"):
        assert contract_problems(links[rel], local_stack.raster_url) == [], rel
    assert links["viewer"] == done["viewer_url"]

    tilejson = httpx.get(links["tilejson"], timeout=60).json()
    assert tilejson["tilejson"] == "3.0.0"
    lon, lat = footprint_centre(item)
    tile = WEB_MERCATOR.tile(lon, lat, tilejson["maxzoom"])
    tile_response = httpx.get(fill_template(links["xyz"], tile.z, tile.x, tile.y), timeout=60)
    assert tile_response.status_code == 200
    assert (read_png(tile_response.content)[3] > 0).mean() > 0.5
    thumbnail = httpx.get(links["thumbnail"], timeout=60)
    assert thumbnail.status_code == 200
    assert read_png(thumbnail.content).shape[0] == 4
    assert max(read_png(thumbnail.content).shape[1:]) <= 512
    wmts = httpx.get(links["wmts"], timeout=60)
    assert wmts.status_code == 200
    assert ET.fromstring(wmts.content).tag == f"{WMTS}Capabilities"
    viewer = httpx.get(links["viewer"], timeout=60)
    assert viewer.status_code == 200
    assert done["item_id"] in viewer.text

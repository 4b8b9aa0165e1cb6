"""GeoZarrReader on a real eopf-geozarr store: contract levels, band stacking, store discovery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import morecantile
import pytest
from rasterio.warp import calculate_default_transform
from rio_tiler.errors import InvalidBandName, MissingBands

from geozarr_local.geozarr_reader import (
    CURRENT_READS,
    GeoZarrReader,
    ItemSource,
    ReadLog,
    StoreOpener,
    TtlCache,
)
from geozarr_local.raster import horizontal_bbox, store_url_for
from geozarr_pipeline.config import Settings
from geozarr_pipeline.errors import SourceNotFound
from geozarr_pipeline.stac.hrefs import canonical_store_url, public_to_storage, storage_to_public
from geozarr_pipeline.visual.titiler_eopf import multiscale_level
from tests.fixtures.stac_api import ConvertedStore

LEVELS = ["r10m", "r20m", "r60m", "r120m", "r360m", "r720m"]
LEVEL_METRES = {level: int(level[1:-1]) for level in LEVELS}
TRUE_COLOR = [f"/measurements/reflectance:{band}" for band in ("b04", "b03", "b02")]


@pytest.fixture(scope="module")
def source(converted_l2a: ConvertedStore) -> ItemSource:
    return ItemSource(item={}, store_url=str(converted_l2a.path), opener=StoreOpener(Settings()))


def _layout(source: ItemSource) -> list[dict[str, Any]]:
    attrs = source.opener.group_attrs(source.store_url, "/measurements/reflectance")
    return list(attrs["multiscales"]["layout"])


def _tile_reads(
    reader: GeoZarrReader, zoom: int, tilesize: int | None = 256
) -> tuple[ReadLog, float]:
    """Read the tile at the centre of the item at `zoom`; the reads and the tile's resolution
    in the dataset CRS, as titiler-eopf's `calculate_output_transform` ends (the output grid
    over the tile bounds, transformed to the dataset CRS)."""
    west, south, east, north = reader.get_geographic_bounds("epsg:4326")
    tms = morecantile.tms.get("WebMercatorQuad")
    tile = tms.tile((west + east) / 2, (south + north) / 2, zoom)
    bounds = tms.xy_bounds(tile)
    transform, _, _ = calculate_default_transform(tms.rasterio_crs, reader.crs, 256, 256, *bounds)
    log = ReadLog()
    token = CURRENT_READS.set(log)
    try:
        image = reader.tile(tile.x, tile.y, tile.z, tilesize=tilesize)
    finally:
        CURRENT_READS.reset(token)
    assert image.count == len(reader.variables or [])
    return log, float(transform.a)


def test_a_multiscale_group_band_chooses_over_the_whole_layout(source: ItemSource) -> None:
    reader = GeoZarrReader(source, variables=TRUE_COLOR)
    band = reader._bands[0]
    assert [entry["asset"] for entry in band.layout] == LEVELS
    assert band.default_group == "/measurements/reflectance/r10m"
    b05 = GeoZarrReader(source, variables=["/measurements/reflectance:b05"])
    assert b05._bands[0].default_group == "/measurements/reflectance/r20m", "r10m holds no b05"
    assert [entry["asset"] for entry in b05._bands[0].layout] == LEVELS
    # As titiler-eopf: the finest level fits maxzoom whether or not it holds the variable.
    with pytest.raises(InvalidBandName, match="b05"):
        _tile_reads(b05, reader.maxzoom)
    low, _ = _tile_reads(b05, b05.minzoom)
    assert low.groups != ["/measurements/reflectance/r10m"]


def test_a_tile_without_a_size_reads_the_finest_level_as_titiler_eopf_does(
    source: ItemSource,
) -> None:
    reader = GeoZarrReader(source, variables=TRUE_COLOR[:1])
    log, _ = _tile_reads(reader, reader.minzoom, tilesize=None)
    assert log.groups == ["/measurements/reflectance/r10m"]


def test_reads_report_the_chunks_they_decode(source: ItemSource) -> None:
    reader = GeoZarrReader(source, variables=TRUE_COLOR)
    log, _ = _tile_reads(reader, reader.maxzoom)
    for read in log.reads:
        assert 0 < read.pixels <= read.chunk_pixels
    array = reader._array("/measurements/reflectance/r10m", "b04")
    rows, cols = array.shape[-2:]
    chunk_rows, chunk_cols = array.encoding["chunks"][-2:]
    for read in log.reads:
        assert read.chunk_pixels >= min(chunk_rows * chunk_cols, rows * cols)


def test_tiles_at_min_and_max_zoom_read_the_level_the_contract_says(source: ItemSource) -> None:
    reader = GeoZarrReader(source, variables=TRUE_COLOR)
    layout = _layout(source)
    low, target_low = _tile_reads(reader, reader.minzoom)
    high, target_high = _tile_reads(reader, reader.maxzoom)
    assert low.groups == [f"/measurements/reflectance/{multiscale_level(layout, target_low)}"]
    assert high.groups == [f"/measurements/reflectance/{multiscale_level(layout, target_high)}"]
    assert low.groups[0].rsplit("/", 1)[1] in ("r360m", "r720m"), "minzoom reads a coarse level"
    assert high.groups == ["/measurements/reflectance/r10m"], "maxzoom reads the finest"
    assert len(low.reads) == len(high.reads) == 3


def test_every_zoom_reads_the_contract_level(source: ItemSource) -> None:
    reader = GeoZarrReader(source, variables=TRUE_COLOR[:1])
    layout = _layout(source)
    seen = []
    for zoom in range(reader.minzoom, reader.maxzoom + 1):
        log, target = _tile_reads(reader, zoom)
        expected = f"/measurements/reflectance/{multiscale_level(layout, target)}"
        assert log.groups == [expected], f"zoom {zoom}"
        seen.append(expected)
    assert seen == sorted(seen, key=lambda group: -LEVEL_METRES[group.rsplit("/", 1)[1]])


def test_a_level_group_is_read_at_every_zoom_as_in_production(source: ItemSource) -> None:
    spec = "/measurements/reflectance/r60m:b04"
    reader = GeoZarrReader(source, variables=[spec])
    for zoom in (reader.minzoom, reader.maxzoom):
        log, _target = _tile_reads(reader, zoom)
        assert log.groups == ["/measurements/reflectance/r60m"]


def test_the_preview_reads_a_coarse_level(source: ItemSource) -> None:
    reader = GeoZarrReader(source, variables=TRUE_COLOR)
    log = ReadLog()
    token = CURRENT_READS.set(log)
    try:
        preview = reader.preview(max_size=16)
    finally:
        CURRENT_READS.reset(token)
    assert max(preview.width, preview.height) <= 16
    assert log.groups != ["/measurements/reflectance/r10m"]
    target = max(reader.width, reader.height) * abs(reader.transform.a) / 16
    assert log.groups == [f"/measurements/reflectance/{multiscale_level(_layout(source), target)}"]


def test_tile_and_preview_stack_one_band_per_variable(source: ItemSource) -> None:
    reader = GeoZarrReader(source, variables=TRUE_COLOR)
    west, south, east, north = reader.get_geographic_bounds("epsg:4326")
    tms = morecantile.tms.get("WebMercatorQuad")
    tile = tms.tile((west + east) / 2, (south + north) / 2, reader.maxzoom)
    image = reader.tile(tile.x, tile.y, tile.z)
    assert image.count == 3
    assert image.band_names == TRUE_COLOR
    preview = reader.preview(max_size=128)
    assert preview.count == 3
    assert max(preview.width, preview.height) <= 128
    assert reader.minzoom < reader.maxzoom


def test_bad_variables_are_named(source: ItemSource) -> None:
    with pytest.raises(InvalidBandName, match="b99"):
        GeoZarrReader(source, variables=["/measurements/reflectance/r10m:b99"])
    with pytest.raises(InvalidBandName, match="group"):
        GeoZarrReader(source, variables=["b04"])
    with pytest.raises(MissingBands):
        GeoZarrReader(source, variables=None)


def test_store_discovery_maps_public_hrefs_back_to_storage() -> None:
    settings = Settings(public_base_url="https://data.example.test/geozarr", output_root="/srv/out")
    item = {
        "id": "X",
        "links": [],
        "assets": {
            "product": {
                "href": "https://data.example.test/geozarr/c/X.zarr",
                "alternate": {"s3": {"href": "s3://bucket/c/X.zarr"}},
            }
        },
    }
    assert store_url_for(item, settings) == "/srv/out/c/X.zarr"
    assert store_url_for(item, Settings()) == "s3://bucket/c/X.zarr"
    item["links"] = [{"rel": "store", "href": "s3://other/X.zarr/"}]
    assert store_url_for(item, Settings()) == "s3://other/X.zarr"


@pytest.mark.parametrize("root", ["s3://bucket/geozarr/", "relative/out"])
def test_public_and_storage_hrefs_are_inverse(root: str) -> None:
    settings = Settings(public_base_url="https://data.example.test/geozarr/", output_root=root)
    stored = f"{canonical_store_url(root)}/c/X.zarr/measurements/reflectance"
    public = storage_to_public(stored, settings)
    assert public == "https://data.example.test/geozarr/c/X.zarr/measurements/reflectance"
    assert public_to_storage(public, settings) == stored
    assert public_to_storage("https://elsewhere.test/geozarr/c/X.zarr", settings) is None


def test_ttl_cache_reuses_within_its_lifetime_and_drops_expired_entries() -> None:
    import time

    cache: TtlCache[str, int] = TtlCache(seconds=0.2)
    loads: list[str] = []

    def load(key: str) -> int:
        loads.append(key)
        return len(loads)

    assert cache.get("a", lambda: load("a")) == cache.get("a", lambda: load("a")) == 1
    time.sleep(0.25)
    assert cache.get("b", lambda: load("b")) == 2
    assert cache.get("a", lambda: load("a")) == 3, "an expired entry is loaded again"
    assert len(cache._entries) == 2
    time.sleep(0.25)
    cache.get("c", lambda: load("c"))
    assert list(cache._entries) == ["c"], "expired entries are dropped on insert"


def test_a_missing_store_or_group_is_not_found(source: ItemSource, tmp_path: Path) -> None:
    opener = StoreOpener(Settings())
    with pytest.raises(SourceNotFound, match="no store"):
        opener.dataset(str(tmp_path / "gone.zarr"), "/measurements/reflectance/r10m")
    with pytest.raises(SourceNotFound, match="no group"):
        opener.dataset(source.store_url, "/measurements/reflectance/r5m")


def test_wmts_bbox_is_horizontal_for_2d_and_3d_bboxes() -> None:
    assert horizontal_bbox([1.0, 2.0, 3.0, 4.0]) == [1.0, 2.0, 3.0, 4.0]
    assert horizontal_bbox([1.0, 2.0, -5.0, 3.0, 4.0, 100.0]) == [1.0, 2.0, 3.0, 4.0]
    assert horizontal_bbox(None) == [-180.0, -85.0511, 180.0, 85.0511]


def test_an_item_whose_store_is_gone_is_404(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from geozarr_local.raster import create_app
    from geozarr_pipeline.catalog.static import StaticCatalog

    catalog = StaticCatalog(tmp_path / "catalog")
    gone = tmp_path / "gone" / "X.zarr"
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "X",
        "collection": "c",
        "geometry": None,
        "properties": {"datetime": "2025-01-01T00:00:00Z"},
        "links": [],
        "assets": {"product": {"href": str(gone)}},
    }
    catalog.put_item(item, "replace")
    client = TestClient(create_app(Settings(), catalog=catalog))
    query = "&".join(f"variables={v}" for v in TRUE_COLOR)
    response = client.get(f"/collections/c/items/X/tiles/WebMercatorQuad/10/500/300.png?{query}")
    assert response.status_code == 404, response.text
    assert "no store" in response.text

"""An item's bbox agrees with its geometry: a genuine antimeridian bbox is kept, any other
bbox that contradicts the geometry is recomputed from it."""

from __future__ import annotations

from typing import Any

import pytest

from geozarr_local.sample.hierarchy import load_hierarchy
from geozarr_pipeline.stac.item import (
    crosses_antimeridian,
    geometry_bbox,
    item_bbox,
    normalized_longitude,
)

# Unsplit: the edges between 179.5 and -179.5 go the short way, across 180.
ACROSS = {
    "type": "Polygon",
    "coordinates": [
        [[179.5, -17.0], [-179.5, -17.0], [-179.5, -16.0], [179.5, -16.0], [179.5, -17.0]]
    ],
}
# The same footprint split at the antimeridian, as RFC 7946 asks.
SPLIT = {
    "type": "MultiPolygon",
    "coordinates": [
        [[[179.5, -17.0], [180.0, -17.0], [180.0, -16.0], [179.5, -16.0], [179.5, -17.0]]],
        [[[-180.0, -17.0], [-179.5, -17.0], [-179.5, -16.0], [-180.0, -16.0], [-180.0, -17.0]]],
    ],
}
# The same footprint written with longitudes past 180 (east of it counted on), and past -180.
PAST_180 = {
    "type": "Polygon",
    "coordinates": [
        [[179.5, -17.0], [180.5, -17.0], [180.5, -16.0], [179.5, -16.0], [179.5, -17.0]]
    ],
}
PAST_MINUS_180 = {
    "type": "Polygon",
    "coordinates": [
        [[-180.5, -17.0], [-179.5, -17.0], [-179.5, -16.0], [-180.5, -16.0], [-180.5, -17.0]]
    ],
}
ANTIMERIDIAN_BBOX = [179.5, -17.0, -179.5, -16.0]
TILE = {
    "type": "Polygon",
    "coordinates": [[[11.0, 41.0], [12.5, 41.0], [12.5, 42.0], [11.0, 42.0], [11.0, 41.0]]],
}
TILE_BBOX = [11.0, 41.0, 12.5, 42.0]


@pytest.mark.parametrize(
    "geometry",
    [ACROSS, SPLIT, PAST_180, PAST_MINUS_180],
    ids=["unsplit", "split", "past-180", "past-minus-180"],
)
def test_a_genuine_antimeridian_bbox_is_kept(geometry: dict[str, Any]) -> None:
    assert crosses_antimeridian(geometry)
    assert geometry_bbox(geometry) == ANTIMERIDIAN_BBOX
    assert item_bbox(ANTIMERIDIAN_BBOX, geometry) == ANTIMERIDIAN_BBOX
    # Missing, malformed (south > north) or spanning the globe the other way: recomputed.
    assert item_bbox(None, geometry) == ANTIMERIDIAN_BBOX
    assert item_bbox([179.5, -16.0, -179.5, -17.0], geometry) == ANTIMERIDIAN_BBOX
    assert item_bbox([-180.0, -17.0, 180.0, -16.0], geometry) == ANTIMERIDIAN_BBOX
    assert item_bbox([-179.5, -17.0, 179.5, -16.0], geometry) == ANTIMERIDIAN_BBOX


@pytest.mark.parametrize("product", ["l2a", "l1c"])
def test_the_eopf_products_west_greater_than_east_bbox_is_recomputed(product: str) -> None:
    discovery = load_hierarchy(product)["attributes"]["stac_discovery"]
    west, south, east, north = discovery["bbox"]
    assert west > east  # as the product carries it, nowhere near the antimeridian
    assert not crosses_antimeridian(discovery["geometry"])
    assert item_bbox(discovery["bbox"], discovery["geometry"]) == [east, south, west, north]


def test_a_west_greater_than_east_bbox_around_a_tile_is_recomputed() -> None:
    assert item_bbox([12.5, 41.0, 11.0, 42.0], TILE) == TILE_BBOX


def test_a_bbox_that_agrees_is_kept_within_rounding_and_slack() -> None:
    assert item_bbox(TILE_BBOX, TILE) == TILE_BBOX
    rounded = [11.00000001, 40.99999999, 12.49999999, 42.00000001]
    assert item_bbox(rounded, TILE) == rounded
    padded = [10.99, 40.995, 12.51, 42.005]  # under 1 % of the span on each side
    assert item_bbox(padded, TILE) == padded


@pytest.mark.parametrize(
    "bbox",
    [
        [11.1, 41.0, 12.5, 42.0],  # misses the geometry's west edge
        [11.0, 41.0, 12.5, 41.9],  # misses its north edge
        [10.0, 40.0, 13.5, 43.0],  # far larger
        [-180.0, -90.0, 180.0, 90.0],  # the whole world
        [11.0, 42.0, 12.5, 41.0],  # south > north
        [11.0, 41.0, 12.5],  # not a bbox
        ["11", 41.0, 12.5, 42.0],
        None,
    ],
)
def test_a_bbox_that_contradicts_the_geometry_is_recomputed(bbox: Any) -> None:
    assert item_bbox(bbox, TILE) == TILE_BBOX


def test_a_3d_bbox_is_checked_on_its_horizontal_part_and_keeps_its_heights() -> None:
    agreeing = [11.0, 41.0, -5.0, 12.5, 42.0, 3000.0]
    assert item_bbox(agreeing, TILE) == agreeing
    assert item_bbox([12.5, 41.0, -5.0, 11.0, 42.0, 3000.0], TILE) == [
        11.0,
        41.0,
        -5.0,
        12.5,
        42.0,
        3000.0,
    ]


def test_a_geometry_round_the_whole_globe_does_not_cross() -> None:
    band = {
        "type": "Polygon",
        "coordinates": [
            [
                [-180.0, 60.0],
                [0.0, 60.0],
                [180.0, 60.0],
                [180.0, 70.0],
                [0.0, 70.0],
                [-180.0, 70.0],
                [-180.0, 60.0],
            ]
        ],
    }
    halves = {
        "type": "MultiPolygon",
        "coordinates": [
            [[[-180.0, 60.0], [0.0, 60.0], [0.0, 70.0], [-180.0, 70.0], [-180.0, 60.0]]],
            [[[0.0, 60.0], [180.0, 60.0], [180.0, 70.0], [0.0, 70.0], [0.0, 60.0]]],
        ],
    }
    for geometry in (band, halves):
        assert not crosses_antimeridian(geometry)
        assert item_bbox([-180.0, 60.0, 180.0, 70.0], geometry) == [-180.0, 60.0, 180.0, 70.0]


def test_without_a_geometry_a_well_formed_bbox_is_kept() -> None:
    assert item_bbox(TILE_BBOX, None) == TILE_BBOX
    assert item_bbox([1.0, 2.0, 3.0], None) is None


def in_range(bbox: list[float]) -> bool:
    half = len(bbox) // 2
    return -180.0 <= bbox[0] <= 180.0 and -180.0 <= bbox[half] <= 180.0


@pytest.mark.parametrize(
    ("lon", "normalized"),
    [(180.5, -179.5), (-180.5, 179.5), (360.0, 0.0), (540.0, 180.0), (180.0, 180.0)],
)
def test_a_longitude_past_the_antimeridian_is_normalised(lon: float, normalized: float) -> None:
    assert normalized_longitude(lon) == normalized
    assert normalized_longitude(-180.0) == -180.0


@pytest.mark.parametrize("geometry", [PAST_180, PAST_MINUS_180], ids=["past-180", "past-minus"])
def test_a_footprint_written_past_180_keeps_the_antimeridian_bbox_in_range(
    geometry: dict[str, Any],
) -> None:
    """The review's case: [179.5,-17,-179.5,-16] was replaced by [179.5,-17,180.5,-16]."""
    for bbox in (ANTIMERIDIAN_BBOX, [179.5, -17.0, 180.5, -16.0], [-180.5, -17.0, -179.5, -16.0]):
        kept = item_bbox(bbox, geometry)
        assert kept == ANTIMERIDIAN_BBOX
        assert kept is not None
        assert in_range(kept)


def test_a_bbox_written_past_180_is_normalised_even_without_a_geometry() -> None:
    assert item_bbox([179.5, -17.0, 180.5, -16.0], ACROSS) == ANTIMERIDIAN_BBOX
    assert item_bbox([179.5, -17.0, 180.5, -16.0], None) == ANTIMERIDIAN_BBOX
    assert item_bbox([0.0, -17.0, 360.0, -16.0], None) == [-180.0, -17.0, 180.0, -16.0]
    assert item_bbox([179.5, -17.0, 0.0, 180.5, -16.0, 9.0], None) == [
        179.5,
        -17.0,
        0.0,
        -179.5,
        -16.0,
        9.0,
    ]


def test_an_edge_past_180_counted_the_short_way_does_not_cross_180() -> None:
    """10 -> 350 is 10 -> -10 the short way: across 0, not 180."""
    ring = [[10.0, 1.0], [350.0, 1.0], [350.0, 2.0], [10.0, 2.0], [10.0, 1.0]]
    geometry = {"type": "Polygon", "coordinates": [ring]}
    assert not crosses_antimeridian(geometry)
    assert geometry_bbox(geometry) == [-10.0, 1.0, 10.0, 2.0]

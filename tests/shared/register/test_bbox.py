"""An item's bbox agrees with its geometry: a genuine antimeridian bbox is kept, any other
bbox that contradicts the geometry is recomputed from it."""

from __future__ import annotations

from typing import Any

import pytest

from geozarr_local.sample.hierarchy import load_hierarchy
from geozarr_pipeline.stac.item import crosses_antimeridian, geometry_bbox, item_bbox

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
ANTIMERIDIAN_BBOX = [179.5, -17.0, -179.5, -16.0]
TILE = {
    "type": "Polygon",
    "coordinates": [[[11.0, 41.0], [12.5, 41.0], [12.5, 42.0], [11.0, 42.0], [11.0, 41.0]]],
}
TILE_BBOX = [11.0, 41.0, 12.5, 42.0]


@pytest.mark.parametrize("geometry", [ACROSS, SPLIT], ids=["unsplit", "split"])
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

"""The synthetic data looks like a scene: nodata edge, land, water, clouds, consistent."""

from __future__ import annotations

import json

import numpy as np
import numpy.typing as npt
import pytest
import zarr

from geozarr_local.sample.hierarchy import load_hierarchy
from geozarr_local.sample.scene import (
    SCL_CLOUD_HIGH,
    SCL_CLOUD_MEDIUM,
    SCL_NO_DATA,
    SCL_VEGETATION,
    SCL_WATER,
    cover_percent,
    outside_swath,
)
from tests.fixtures.sample import SampleRoot

RESOLUTIONS = ("r10m", "r20m", "r60m")


@pytest.fixture(scope="module")
def l2a(sample_root: SampleRoot) -> zarr.Group:
    return zarr.open_group(str(sample_root.l2a.product_path), mode="r")


@pytest.fixture(scope="module")
def l1c(sample_root: SampleRoot) -> zarr.Group:
    return zarr.open_group(str(sample_root.l1c.product_path), mode="r")


def _reflectance(group: zarr.Group, path: str) -> npt.NDArray[np.float64]:
    array = group[path]
    dn = array[:].astype(np.float64)
    value = dn * array.attrs["scale_factor"] + array.attrs["add_offset"]
    return np.where(dn == 0, np.nan, value)


def _expected_nodata(group: zarr.Group, res: str) -> npt.NDArray[np.bool_]:
    ny, nx = group[f"measurements/reflectance/{res}"]["x"].shape * 2
    return outside_swath((np.arange(nx) + 0.5) / nx, (np.arange(ny) + 0.5) / ny)


@pytest.mark.parametrize("res", RESOLUTIONS)
def test_nodata_edge_is_the_same_line_in_every_band(l2a: zarr.Group, res: str) -> None:
    expected = _expected_nodata(l2a, res)
    assert 0.05 < expected.mean() < 0.4
    bands = l2a[f"measurements/reflectance/{res}"]
    names = [name for name in bands.array_keys() if name.startswith("b")]
    assert names
    for name in names:
        np.testing.assert_array_equal(bands[name][:] == 0, expected, err_msg=f"{res}/{name}")
    tci = l2a[f"quality/l2a_quicklook/{res}/tci"][:]
    np.testing.assert_array_equal((tci == 0).all(axis=0), expected)
    if res != "r10m":
        scl = l2a[f"conditions/mask/l2a_classification/{res}/scl"][:]
        np.testing.assert_array_equal(scl == SCL_NO_DATA, expected)


def test_nodata_edge_agrees_across_resolutions(l2a: zarr.Group) -> None:
    fine = l2a["measurements/reflectance/r10m/b02"][:] == 0
    coarse = l2a["measurements/reflectance/r60m/b02"][:] == 0
    # Each 60 m pixel covers 6x6 10 m pixels: its nodata state is their majority.
    n = coarse.shape[0]
    blocks = fine.reshape(n, 6, n, 6).mean(axis=(1, 3))
    agreement = ((blocks > 0.5) == coarse).mean()
    assert agreement > 0.99
    assert abs(fine.mean() - coarse.mean()) < 0.02


def test_water_is_dark_in_nir_and_land_is_textured(l2a: zarr.Group) -> None:
    scl = l2a["conditions/mask/l2a_classification/r20m/scl"][:]
    b8a = _reflectance(l2a, "measurements/reflectance/r20m/b8a")
    b04 = _reflectance(l2a, "measurements/reflectance/r20m/b04")
    water = scl == SCL_WATER
    vegetation = scl == SCL_VEGETATION
    assert water.mean() > 0.02
    assert vegetation.mean() > 0.05
    assert np.nanmax(b8a[water]) < 0.05
    assert np.nanmean(b8a[vegetation]) > 0.2
    # Vegetation: NIR well above red.
    assert np.nanmean(b8a[vegetation] - b04[vegetation]) > 0.15
    land = (scl == SCL_VEGETATION) | (scl == 5)
    assert np.nanstd(b8a[land]) > 0.03


def test_clouds_are_bright_and_flagged_consistently(l2a: zarr.Group) -> None:
    scl = l2a["conditions/mask/l2a_classification/r20m/scl"][:]
    cld = l2a["quality/probability/r20m/cld"][:]
    b02 = _reflectance(l2a, "measurements/reflectance/r20m/b02")
    cloudy = (scl == SCL_CLOUD_HIGH) | (scl == SCL_CLOUD_MEDIUM)
    clear = (scl == SCL_VEGETATION) | (scl == SCL_WATER)
    assert 0.02 < cloudy.mean() < 0.4
    assert np.nanmean(b02[scl == SCL_CLOUD_HIGH]) > 0.5
    assert np.nanmean(b02[clear]) < 0.1
    assert cld[scl == SCL_CLOUD_HIGH].min() >= 80
    assert np.median(cld[clear]) == 0
    assert cld.max() <= 100


def test_tci_follows_the_reflectance(l2a: zarr.Group) -> None:
    tci = l2a["quality/l2a_quicklook/r10m/tci"][:].astype(np.float64)
    for channel, band in enumerate(("b04", "b03", "b02")):
        refl = _reflectance(l2a, f"measurements/reflectance/r10m/{band}")
        valid = ~np.isnan(refl) & (tci[channel] < 255)
        corr = np.corrcoef(tci[channel][valid], refl[valid])[0, 1]
        assert corr > 0.99, band


def test_detector_footprint_and_quality_masks(l2a: zarr.Group) -> None:
    expected = _expected_nodata(l2a, "r10m")
    detectors = l2a["conditions/mask/detector_footprint/r10m/b02"][:]
    assert ((detectors == 0) == expected).all()
    ids = set(np.unique(detectors[~expected]).tolist())
    assert ids <= set(l2a["conditions/geometry/detector"][:].tolist())
    assert len(ids) >= 3
    quality = l2a["quality/mask/r10m/b02"][:]
    assert ((quality & 32) > 0).tolist() == expected.tolist()


def test_l1c_classification_flags_the_clouds(l1c: zarr.Group) -> None:
    flags = l1c["conditions/mask/l1c_classification/r60m/b00"][:]
    b02 = _reflectance(l1c, "measurements/reflectance/r60m/b01")
    opaque = (flags & 1) > 0
    assert opaque.mean() > 0.02
    assert np.nanmean(b02[opaque]) > 0.5
    assert np.nanmean(b02[flags == 0]) < 0.25


def test_item_cover_is_the_cover_of_the_written_classification(
    sample_root: SampleRoot, l2a: zarr.Group
) -> None:
    item = json.loads(sample_root.l2a.item_path.read_text())["properties"]
    for res in ("r20m", "r60m"):
        cloud, snow = cover_percent(l2a[f"conditions/mask/l2a_classification/{res}/scl"][:])
        assert item["eo:cloud_cover"] == pytest.approx(cloud, abs=1.0), res
        assert item["eo:snow_cover"] == pytest.approx(snow, abs=0.5), res
    assert item["eo:cloud_cover"] > 2.0
    product = l2a.attrs["stac_discovery"]["properties"]
    assert product["eo:cloud_cover"] == item["eo:cloud_cover"]
    assert product["eo:snow_cover"] == item["eo:snow_cover"]


def test_l1c_item_cover_is_its_own_scene(sample_root: SampleRoot, l1c: zarr.Group) -> None:
    item = json.loads(sample_root.l1c.item_path.read_text())["properties"]
    product = l1c.attrs["stac_discovery"]["properties"]
    reference = load_hierarchy("l1c")["attributes"]["stac_discovery"]["properties"]
    assert product["eo:cloud_cover"] == item["eo:cloud_cover"]
    assert item["eo:cloud_cover"] != reference["eo:cloud_cover"]
    # Its opaque-cloud flag (opacity > 0.5) lies within the cloudy classes (opacity > 0.02).
    flags = l1c["conditions/mask/l1c_classification/r60m/b00"][:]
    valid = ~_expected_nodata(l1c, "r60m")
    opaque = 100 * ((flags & 1) > 0)[valid].mean()
    assert opaque - 1.0 < item["eo:cloud_cover"] < opaque + 15.0

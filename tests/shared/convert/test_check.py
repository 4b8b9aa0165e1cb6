"""The output check against the source: known library defects repaired, corruption caught."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from geozarr_pipeline.config import Settings
from geozarr_pipeline.convert import check, engine
from geozarr_pipeline.errors import OutputCheckFailed
from tests.fixtures.sample import SampleRoot

REFL = "measurements/reflectance"


def raw_conversion(source: Path, output: Path, keep_scale_offset: bool) -> Path:
    """What eopf-geozarr writes on its own: its own coarsening (the engine's fix undone for
    this call), no check, no repairs."""
    library = engine.load_library()
    from eopf_geozarr.s2_optimization import s2_multiscale

    fixed = s2_multiscale._coarsen_variable
    s2_multiscale._coarsen_variable = fixed.__wrapped__
    try:
        tree = library.open_source_datatree(str(source))
        library.convert_s2_optimized(
            tree,
            output_path=str(output),
            enable_sharding=False,
            spatial_chunk=256,
            compression_level=3,
            validate_output=False,
            keep_scale_offset=keep_scale_offset,
        )
    finally:
        s2_multiscale._coarsen_variable = fixed
    return output


@pytest.fixture(scope="module")
def raw_float(sample_root: SampleRoot, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw-float") / "out.zarr"
    return raw_conversion(sample_root.l2a.product_path, out, keep_scale_offset=False)


@pytest.fixture(scope="module")
def raw_packed(sample_root: SampleRoot, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw-packed") / "out.zarr"
    return raw_conversion(sample_root.l2a.product_path, out, keep_scale_offset=True)


def copy_of(store: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy.zarr"
    shutil.copytree(store, target)
    return target


def run_check(sample_root: SampleRoot, store: Path, **kwargs: Any) -> check.CheckReport:
    source = zarr.open_group(str(sample_root.l2a.product_path), mode="r")
    return check.check_and_repair_output(source, zarr.open_group(str(store), mode="r+"), **kwargs)


def source_nodata(sample_root: SampleRoot, level: str, band: str) -> np.ndarray[Any, Any]:
    source = zarr.open_group(str(sample_root.l2a.product_path), mode="r")
    mask: np.ndarray[Any, Any] = source[f"{REFL}/{level}/{band}"][:] == 0
    return mask


@pytest.mark.parametrize("native_mode", ["full", "sample"])
def test_float_b08_defect_is_repaired(
    sample_root: SampleRoot, raw_float: Path, tmp_path: Path, native_mode: str
) -> None:
    store = copy_of(raw_float, tmp_path)
    out = zarr.open_group(str(store), mode="r")
    expected = check.block_all(source_nodata(sample_root, "r10m", "b08"), 2)
    before = out[f"{REFL}/r20m/b08"][:]
    assert expected.any(), "the sample must have a nodata edge"
    # The library's defect, as shipped: nodata blocks of the injected b08 are 0.0, not NaN.
    assert not np.isnan(before[expected]).any()
    assert (before[expected] == 0.0).all()

    report = run_check(sample_root, store, native_mode=native_mode)
    assert any(r.startswith("r20m/b08") for r in report.repaired)
    assert any(r.startswith("r60m/b08") for r in report.repaired)
    assert any(r.startswith("r120m/b08: recomputed") for r in report.repaired)
    after = out[f"{REFL}/r20m/b08"][:]
    np.testing.assert_array_equal(np.isnan(after), expected)
    np.testing.assert_array_equal(after[~expected], before[~expected])
    r120 = out[f"{REFL}/r120m/b08"][:]
    r60 = out[f"{REFL}/r60m/b08"][:]
    np.testing.assert_array_equal(np.isnan(r120), check.block_all(np.isnan(r60), 2))
    assert set(report.levels) == {"r10m", "r20m", "r60m", "r120m", "r360m", "r720m"}

    again = run_check(sample_root, store)
    assert again.repaired == []


def test_packed_dn1000_defect_and_the_means_it_spoils_are_repaired(
    sample_root: SampleRoot, raw_packed: Path, tmp_path: Path
) -> None:
    """The library's own keep_scale_offset output: nodata blocks of r120m become DN 1000
    (decoded 0.0), and r360m averages those into its edge blocks. The check rewrites the
    nodata and writes the spoilt levels again from the float-mode means."""
    store = copy_of(raw_packed, tmp_path)
    out = zarr.open_group(str(store), mode="r")
    b02_120 = out[f"{REFL}/r120m/b02"]
    expected = check.block_all(source_nodata(sample_root, "r60m", "b02"), 2)
    expected = expected[: b02_120.shape[0], : b02_120.shape[1]]
    assert (b02_120[:][expected] == 1000).all()
    spoilt = out[f"{REFL}/r360m/b02"][:]

    report = run_check(sample_root, store)
    assert any(r.startswith("r120m/b02: ") for r in report.repaired)
    assert "r360m/b02: recomputed from the float-mode means" in report.repaired
    fill = b02_120.attrs["_FillValue"]
    np.testing.assert_array_equal(b02_120[:] == fill, expected)
    assert (out[f"{REFL}/r360m/b02"][:] != spoilt).any(), "the spoilt means were rewritten"
    again = run_check(sample_root, store)
    assert again.repaired == []
    assert again.problems == []


@pytest.mark.parametrize("spoilt", [f"{REFL}/r60m/b01", f"{REFL}/r360m/b11"])
def test_one_dn_off_fails_the_check(sample_root: SampleRoot, tmp_path: Path, spoilt: str) -> None:
    """One pixel one DN off, in a native level or a derived one, is found."""
    store = tmp_path / "out.zarr"
    settings = Settings()
    tree = engine.open_source(str(sample_root.l2a.product_path), settings)
    options = engine.EffectiveOptions(256, False, True)
    engine.convert(tree, str(store), options, settings)
    group = zarr.open_group(str(store), mode="r+")
    assert run_check(sample_root, store, native_mode="full").repaired == []
    array = group[spoilt]
    values = array[:]
    rows, cols = np.nonzero(values != array.attrs["_FillValue"])
    values[rows[len(rows) // 2], cols[len(cols) // 2]] += 1
    array[:] = values
    with pytest.raises(OutputCheckFailed) as failed:
        run_check(sample_root, store, native_mode="full")
    found = [p.split(":")[0] for p in failed.value.details["problems"]]
    assert found == [spoilt.removeprefix(f"{REFL}/")]


@pytest.mark.parametrize("native_mode", ["full", "sample"])
def test_lost_data_fails_the_check(
    sample_root: SampleRoot, raw_float: Path, tmp_path: Path, native_mode: str
) -> None:
    store = copy_of(raw_float, tmp_path)
    array = zarr.open_group(str(store), mode="r+")[f"{REFL}/r10m/b04"]
    values = array[:]
    valid = np.argwhere(~np.isnan(values))
    values[tuple(valid[:: max(1, len(valid) // 40)].T)] = np.nan  # spread over every row
    array[:] = values
    with pytest.raises(OutputCheckFailed, match=r"r10m/b04: \d+ pixels are nodata where"):
        run_check(sample_root, store, native_mode=native_mode)


@pytest.mark.parametrize("native_mode", ["full", "sample"])
def test_wrong_nodata_in_a_native_level_is_caught(
    sample_root: SampleRoot, raw_float: Path, tmp_path: Path, native_mode: str
) -> None:
    store = copy_of(raw_float, tmp_path)
    array = zarr.open_group(str(store), mode="r+")[f"{REFL}/r10m/b02"]
    values = array[:]
    nodata = np.isnan(values)
    values[nodata] = 0.0
    array[:] = values
    report = run_check(sample_root, store, native_mode=native_mode)
    assert any(r.startswith("r10m/b02") for r in report.repaired)
    np.testing.assert_array_equal(np.isnan(array[:]), nodata)


def corrupt_transform(store: Path) -> None:
    group = zarr.open_group(str(store / REFL / "r60m"), mode="r+", use_consolidated=False)
    group.attrs.update({"spatial:transform": [60.0, 0.0, 1.0, 0.0, -60.0, 2.0]})


def corrupt_crs(store: Path) -> None:
    group = zarr.open_group(str(store / REFL / "r20m"), mode="r+", use_consolidated=False)
    group.attrs.update({"proj:code": "EPSG:4326"})


def drop_layout_transform(store: Path) -> None:
    group = zarr.open_group(str(store / REFL), mode="r+", use_consolidated=False)
    multiscales = dict(group.attrs["multiscales"])
    multiscales["layout"] = [
        {k: v for k, v in entry.items() if k != "spatial:transform"}
        for entry in multiscales["layout"]
    ]
    group.attrs.update({"multiscales": multiscales})


def drop_multiscales_convention(store: Path) -> None:
    group = zarr.open_group(str(store / REFL), mode="r+", use_consolidated=False)
    conventions = [c for c in group.attrs["zarr_conventions"] if c.get("name") != "multiscales"]
    group.attrs.update({"zarr_conventions": conventions})


def drop_level(store: Path) -> None:
    shutil.rmtree(store / REFL / "r360m")


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (corrupt_transform, "r60m: transform"),
        (corrupt_crs, "r20m: CRS"),
        (drop_level, "level r360m is missing"),
        (drop_layout_transform, "layout unusable by the raster API: .* no transform"),
        (drop_multiscales_convention, "raster API: zarr_conventions"),
    ],
)
def test_structure_defects_fail_the_check(
    sample_root: SampleRoot, raw_float: Path, tmp_path: Path, corrupt: Any, message: str
) -> None:
    store = copy_of(raw_float, tmp_path)
    corrupt(store)
    # Readers see the consolidated metadata: refresh it as a writer of the defect would.
    zarr.consolidate_metadata(str(store / REFL), zarr_format=3)
    zarr.consolidate_metadata(str(store), zarr_format=3)
    with pytest.raises(OutputCheckFailed, match=message):
        run_check(sample_root, store)


def test_engine_avoids_the_b08_defect_at_its_root(sample_root: SampleRoot, tmp_path: Path) -> None:
    settings = Settings(allow_file_urls=True)
    tree = engine.open_source(str(sample_root.l2a.product_path), settings)
    store = tmp_path / "out.zarr"
    engine.convert(tree, str(store), engine.EffectiveOptions(256, False, False), settings)
    report = run_check(sample_root, store)
    assert report.repaired == []
    expected = check.block_all(source_nodata(sample_root, "r10m", "b08"), 6)
    b08 = zarr.open_group(str(store), mode="r")[f"{REFL}/r60m/b08"][:]
    np.testing.assert_array_equal(np.isnan(b08), expected)

"""Every encoding and layout of the convert stage decodes to the float-mode reflectance.

Each configuration converts the small L2A and L1C samples through the stage (the output
check included); the stores are then opened with `xarray.open_datatree`, as a client would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

from geozarr_local.geozarr_reader import GeoZarrReader, ItemSource, StoreOpener
from geozarr_local.sample.build import Sample
from geozarr_pipeline.config import Settings
from geozarr_pipeline.convert.engine import bounded_shards
from geozarr_pipeline.events import ConvertRequested
from geozarr_pipeline.stages import convert
from tests.fixtures.sample import SampleRoot

LEVELS = ["r10m", "r20m", "r60m", "r120m", "r360m", "r720m"]
REFL = "measurements/reflectance"
SPATIAL_CHUNK = 128
SHARD_SIZE = 512
CONFIGS: dict[str, dict[str, Any]] = {
    "float": {"keep_scale_offset": False, "enable_sharding": False},
    "integer": {"keep_scale_offset": True, "enable_sharding": False},
    "integer-sharded": {"keep_scale_offset": True, "enable_sharding": True},
    "float-sharded": {"keep_scale_offset": False, "enable_sharding": True},
}


def convert_sample(sample: Sample, root: Path, **options: Any) -> Path:
    settings = Settings(
        output_root=str(root / "geozarr"),
        work_dir=root / "work",
        allow_file_urls=True,
        spatial_chunk=SPATIAL_CHUNK,
        shard_size=SHARD_SIZE,
        convert_check_native="full",
    )
    event = ConvertRequested(
        source_url=sample.product_path.resolve().as_uri(),
        collection=sample.collection,
        item_id=sample.item_id,
        options=options,
    )
    return Path(convert.run(event, settings).output_url)


@pytest.fixture(scope="module", params=["l2a", "l1c"])
def stores(
    request: pytest.FixtureRequest,
    sample_root: SampleRoot,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Sample, dict[str, Path]]:
    sample: Sample = getattr(sample_root, request.param)
    root = tmp_path_factory.mktemp(f"encodings-{request.param}")
    return sample, {
        name: convert_sample(sample, root / name, **options) for name, options in CONFIGS.items()
    }


def reflectance(store: Path) -> dict[str, xr.Dataset]:
    tree = xr.open_datatree(store, engine="zarr", chunks=None)
    return {level: tree[f"/{REFL}/{level}"].to_dataset() for level in LEVELS}


@pytest.mark.parametrize("config", [c for c in CONFIGS if c != "float"])
def test_each_encoding_decodes_to_the_float_mode_reflectance(
    stores: tuple[Sample, dict[str, Path]], config: str
) -> None:
    sample, paths = stores
    floats, other = reflectance(paths["float"]), reflectance(paths[config])
    source = zarr.open_group(str(sample.product_path), mode="r")
    integer = CONFIGS[config]["keep_scale_offset"]
    for level in LEVELS:
        assert sorted(other[level].data_vars) == sorted(floats[level].data_vars)
        for band in floats[level].data_vars:
            if floats[level][band].ndim != 2:
                continue  # spatial_ref
            reference = floats[level][band].values.astype(np.float64)
            values = other[level][band].values.astype(np.float64)
            assert values.dtype.kind == "f", "a client sees decoded reflectance"
            np.testing.assert_array_equal(np.isnan(values), np.isnan(reference))
            if integer:
                attrs = zarr.open_group(str(paths[config]), mode="r")[
                    f"{REFL}/{level}/{band}"
                ].attrs
                step = attrs["scale_factor"]
                assert np.nanmax(np.abs(values - reference)) <= step / 2 * 1.01
            else:
                np.testing.assert_array_equal(values, reference)
            if f"{REFL}/{level}/{band}" in source:
                nodata = source[f"{REFL}/{level}/{band}"][:] == 0
                np.testing.assert_array_equal(np.isnan(values), nodata)
            assert np.isnan(values).any(), "the samples have nodata at every level"


@pytest.mark.parametrize("config", list(CONFIGS))
def test_classes_keep_their_source_dtype_and_values(
    stores: tuple[Sample, dict[str, Path]], config: str
) -> None:
    """Masks, classifications and other unscaled integers stay what the source holds."""
    sample, paths = stores
    source = zarr.open_group(str(sample.product_path), mode="r")
    output = zarr.open_group(str(paths[config]), mode="r")
    checked = 0
    for path, array in _arrays(source):
        if not np.issubdtype(array.dtype, np.integer) or array.ndim != 2:
            continue
        if "scale_factor" in array.attrs or "quicklook" in path:
            continue
        written = output[path]
        assert written.dtype == array.dtype, path
        np.testing.assert_array_equal(written[:], array[:], err_msg=path)
        checked += 1
    assert checked >= 10


def _arrays(group: zarr.Group, prefix: str = "") -> list[tuple[str, zarr.Array]]:
    found: list[tuple[str, zarr.Array]] = []
    for name, member in group.members():
        path = f"{prefix}{name}"
        if isinstance(member, zarr.Group):
            found.extend(_arrays(member, f"{path}/"))
        else:
            found.append((path, member))
    return found


def test_shards_hold_whole_inner_chunks_and_at_most_the_shard_size(
    stores: tuple[Sample, dict[str, Path]],
) -> None:
    _, paths = stores
    output = zarr.open_group(str(paths["integer-sharded"]), mode="r")
    for path, array in _arrays(output):
        if array.ndim < 2 or array.shards is None:
            continue
        assert all(
            s <= max(SHARD_SIZE, c) for s, c in zip(array.shards, array.chunks, strict=True)
        ), path
        assert all(s % c == 0 for s, c in zip(array.shards, array.chunks, strict=True)), path
    r10m = output[f"{REFL}/r10m/b04"]
    assert r10m.chunks == (SPATIAL_CHUNK, SPATIAL_CHUNK)
    assert r10m.shards == (SHARD_SIZE, SHARD_SIZE)

    def data_objects(store: Path) -> int:
        return sum(len([f for f in files if f != "zarr.json"]) for _, _, files in os.walk(store))

    assert data_objects(paths["integer-sharded"]) < data_objects(paths["integer"]) / 2


@pytest.mark.parametrize(
    ("shards", "chunks", "limit", "bounded"),
    [
        ((11264, 11264), (1024, 1024), 4096, (4096, 4096)),
        ((2048, 2048), (1024, 1024), 4096, (2048, 2048)),  # the whole array is smaller
        ((1024, 1024), (1024, 1024), 1000, (1024, 1024)),  # never below one chunk
        ((13, 6, 2, 23, 23), (13, 6, 2, 23, 23), 4096, (13, 6, 2, 23, 23)),
        ((6144,), (1024,), 5000, (4096,)),  # rounded down to whole chunks
        (None, (1024, 1024), 4096, None),
    ],
)
def test_bounded_shards(
    shards: tuple[int, ...] | None,
    chunks: tuple[int, ...],
    limit: int,
    bounded: tuple[int, ...] | None,
) -> None:
    assert bounded_shards(shards, chunks, limit) == bounded


def test_a_sharded_integer_store_is_served_by_the_raster_reader(
    stores: tuple[Sample, dict[str, Path]],
) -> None:
    _, paths = stores
    source = ItemSource(
        item={}, store_url=str(paths["integer-sharded"]), opener=StoreOpener(Settings())
    )
    reader = GeoZarrReader(source, variables=["/measurements/reflectance:b04"])
    image = reader.preview(max_size=256)
    valid = image.array.compressed()
    assert valid.size > 0
    assert np.isfinite(valid).all()
    assert 0.0 <= float(np.median(valid)) <= 1.5, "reflectance, not DN"

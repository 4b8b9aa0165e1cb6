"""The real converter (eopf-geozarr) accepts the synthetic products: the proof of fidelity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from geozarr_pipeline.convert.engine import load_library
from tests.fixtures.sample import SampleRoot, SampleServerInfo

LEVELS = {"r10m", "r20m", "r60m", "r120m", "r360m", "r720m"}


@pytest.mark.parametrize("kind", ["l2a", "l1c"])
def test_convert_s2_optimized(
    sample_root: SampleRoot, sample_server: SampleServerInfo, tmp_path: Path, kind: str
) -> None:
    """L2A read over HTTP from the sample server (as convert reads it), L1C from disk."""
    # Imported the stage's way: a plain import fetches a CF table from GitHub, no timeout.
    library = load_library()
    sample = sample_root.l2a if kind == "l2a" else sample_root.l1c
    source_url = (
        sample_server.zarr_url(sample.item_id) if kind == "l2a" else str(sample.product_path)
    )
    output = tmp_path / f"{kind}.geozarr.zarr"
    library.convert_s2_optimized(
        library.open_source_datatree(source_url),
        output_path=str(output),
        spatial_chunk=256,
        enable_sharding=False,
        compression_level=3,
        validate_output=False,
        keep_scale_offset=False,
    )
    tree = xr.open_datatree(output, engine="zarr")
    prefix = "/measurements/reflectance/"
    levels = {g.rsplit("/", 1)[-1] for g in tree.groups if g.startswith(prefix)}
    assert levels >= LEVELS
    source = xr.open_datatree(sample.product_path, engine="zarr")
    converted = tree["measurements/reflectance/r10m/b02"].values
    original = source["measurements/reflectance/r10m/b02"].values
    np.testing.assert_array_equal(np.isnan(converted), np.isnan(original))
    np.testing.assert_allclose(converted, original, rtol=1e-6)

"""The synthetic product has the reference product's structure, shrunk consistently."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import xarray as xr
import zarr

from geozarr_local.sample.hierarchy import (
    PRODUCTS,
    is_array,
    is_spatial,
    load_hierarchy,
    plan_scale,
    walk,
)
from tests.fixtures.sample import SAMPLE_SCALE, SampleRoot

SCALED_ATTRS = {"proj:shape", "proj:transform"}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def _same_fill(a: Any, b: Any) -> bool:
    norm = {"NaN": math.nan}
    a, b = norm.get(a, a) if isinstance(a, str) else a, norm.get(b, b) if isinstance(b, str) else b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _chunk_grid(meta: dict[str, Any]) -> list[int]:
    return [math.ceil(s / c) for s, c in zip(meta["shape"], meta["chunks"], strict=True)]


def _product(sample_root: SampleRoot, kind: str) -> Path:
    return sample_root.l2a.product_path if kind == "l2a" else sample_root.l1c.product_path


@pytest.mark.parametrize("kind", sorted(PRODUCTS))
def test_every_node_matches_the_reference(sample_root: SampleRoot, kind: str) -> None:
    spec = load_hierarchy(kind)
    plan = plan_scale(spec, SAMPLE_SCALE)
    store = _product(sample_root, kind)
    written = {
        p.parent.relative_to(store).as_posix()
        for p in store.rglob("*")
        if p.name in (".zarray", ".zgroup") and p.parent != store
    }
    expected = {path for path, _ in walk(spec)}
    assert written == expected

    for path, node in walk(spec):
        attrs = _read_json(store / path / ".zattrs")
        if not is_array(node):
            assert attrs == node["attributes"], path
            continue
        meta = _read_json(store / path / ".zarray")
        for key in ("dtype", "compressor", "filters", "order", "dimension_separator"):
            assert meta[key] == node[key], (path, key)
        assert _same_fill(meta["fill_value"], node["fill_value"]), path
        if is_spatial(path, node):
            n_spatial = 1 if len(node["shape"]) == 1 else 2
            lead = node["shape"][:-n_spatial]
            assert meta["shape"] == lead + [plan.size(n) for n in node["shape"][-n_spatial:]]
            assert all(c <= s for c, s in zip(meta["chunks"], meta["shape"], strict=True))
            assert meta["chunks"][:-n_spatial] == node["chunks"][:-n_spatial]
            # The same chunk grid as the real product (2x2 chunks stay 2x2).
            assert _chunk_grid(meta) == _chunk_grid(node), path
        else:
            assert meta["shape"] == node["shape"], path
            assert meta["chunks"] == node["chunks"], path
        unscaled = {k: v for k, v in attrs.items() if k not in SCALED_ATTRS}
        reference = {k: v for k, v in node["attributes"].items() if k not in SCALED_ATTRS}
        assert unscaled == reference, path


@pytest.mark.parametrize("kind", sorted(PRODUCTS))
def test_root_attributes_differ_only_in_image_size_and_cover(
    sample_root: SampleRoot, kind: str
) -> None:
    spec = load_hierarchy(kind)
    attrs = _read_json(_product(sample_root, kind) / ".zattrs")
    props = attrs["stac_discovery"]["properties"]
    ref_props = spec["attributes"]["stac_discovery"]["properties"]
    plan = plan_scale(spec, SAMPLE_SCALE)
    for got, ref in zip(
        props.get("eopf:image_size", []), ref_props.get("eopf:image_size", []), strict=True
    ):
        assert got["rows"] == plan.size(ref["rows"])
        assert got["columns"] == plan.size(ref["columns"])
    props.pop("eopf:image_size", None)
    ref_props.pop("eopf:image_size", None)
    # The cover figures are the synthetic scene's (test_scene.py checks them).
    for sd in (attrs["stac_discovery"], spec["attributes"]["stac_discovery"]):
        for holder in (sd["properties"], sd["assets"]["analytic"]):
            holder.pop("eo:cloud_cover")
            holder.pop("eo:snow_cover", None)
    assert attrs == spec["attributes"]
    assert (_product(sample_root, kind) / ".zmetadata").is_file()


@pytest.mark.parametrize("kind", sorted(PRODUCTS))
def test_proj_attributes_match_the_coordinates(sample_root: SampleRoot, kind: str) -> None:
    spec = load_hierarchy(kind)
    bbox = spec["attributes"]["stac_discovery"]["properties"]["proj:bbox"]
    group = zarr.open_group(str(_product(sample_root, kind)), mode="r")
    checked = 0
    for path, node in walk(spec):
        if not (is_spatial(path, node) and len(node["shape"]) > 1):
            continue
        array = group[path]
        attrs = dict(array.attrs)
        ny, nx = array.shape[-2:]
        assert attrs["proj:shape"] == [ny, nx]
        px, _, x0, _, py, y0 = attrs["proj:transform"][:6]
        assert (x0, y0) == (bbox[0], bbox[3])
        assert x0 + px * nx == pytest.approx(bbox[2])
        assert y0 + py * ny == pytest.approx(bbox[1])
        assert attrs["proj:bbox"] == bbox
        parent = path.rsplit("/", 1)[0]
        x = group[f"{parent}/x"][:]
        y = group[f"{parent}/y"][:]
        np.testing.assert_array_equal(x, x0 + px * (np.arange(nx) + 0.5))
        np.testing.assert_array_equal(y, y0 + py * (np.arange(ny) + 0.5))
        checked += 1
    assert checked > 20


def test_resolutions_keep_their_ratios(sample_root: SampleRoot) -> None:
    group = zarr.open_group(str(sample_root.l2a.product_path), mode="r")
    r10 = group["measurements/reflectance/r10m/b02"].shape
    r20 = group["measurements/reflectance/r20m/b02"].shape
    r60 = group["measurements/reflectance/r60m/b02"].shape
    assert r10[0] == 2 * r20[0] == 6 * r60[0]
    assert 0.5 * SAMPLE_SCALE < r10[0] / 10980 < 2 * SAMPLE_SCALE


def test_opens_with_xarray_datatree(sample_root: SampleRoot) -> None:
    tree = xr.open_datatree(sample_root.l2a.product_path, engine="zarr")
    r10m = tree["measurements/reflectance/r10m"].to_dataset()
    assert set(r10m.data_vars) == {"b02", "b03", "b04", "b08"}
    # CF decoding applies the real scale/offset and masks the nodata edge.
    b08 = r10m["b08"].values
    assert np.isnan(b08).any()
    assert 0.0 < float(np.nanmean(b08)) < 0.6


def test_scale_is_validated(tmp_path: Path) -> None:
    from geozarr_local.sample.synthesize import synthesize_product
    from geozarr_pipeline.errors import InvalidInput

    with pytest.raises(InvalidInput):
        synthesize_product("l2a", tmp_path / "x.zarr", scale=0)
    assert not (tmp_path / "x.zarr").exists()


def test_seed_makes_the_scene(tmp_path: Path) -> None:
    from geozarr_local.sample.synthesize import synthesize_product

    def b08(seed: int, name: str) -> npt.NDArray[np.uint16]:
        store = synthesize_product("l2a", tmp_path / name, scale=0.01, seed=seed)
        values: npt.NDArray[np.uint16] = zarr.open_group(str(store), mode="r")[
            "measurements/reflectance/r20m/b8a"
        ][:]
        return values

    first = b08(1, "a.zarr")
    np.testing.assert_array_equal(first, b08(1, "b.zarr"))
    assert (first != b08(2, "c.zarr")).mean() > 0.3
    assert not list(tmp_path.glob(".*partial*"))

"""Write a synthetic EOPF Sentinel-2 Zarr v2 product, structurally faithful to a real one.

Every group, array, dtype, compressor, fill value, dimension separator and attribute comes
from the source hierarchy (pydantic-zarr v2 GroupSpec JSON). The rasters of the `rNNm`
groups are shrunk by `scale` over the same footprint (coarser pixels), with `proj:shape`,
`proj:transform` and the `x`/`y` pixel-centre coordinates rewritten to match. Big rasters
are written chunk by chunk, each chunk computed in row strips, so a full-size 10980^2 tile
needs a few hundred MB of memory.
"""

from __future__ import annotations

import copy
import os
import shutil
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numcodecs  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import zarr

from geozarr_local.sample.hierarchy import (
    ScalePlan,
    dims,
    is_array,
    is_spatial,
    load_hierarchy,
    plan_scale,
    walk,
)
from geozarr_local.sample.scene import Scene, Strip

# Pixels per strip when computing a chunk: bounds the scene's temporary float fields.
STRIP_PIXELS = 2_000_000
# Chunk buffers of arrays sharing one computed strip, at most this many bytes together.
BATCH_BYTES = 256 * 1024 * 1024
NAN_STRINGS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
S2_BANDS = (
    "b01",
    "b02",
    "b03",
    "b04",
    "b05",
    "b06",
    "b07",
    "b08",
    "b8a",
    "b09",
    "b10",
    "b11",
    "b12",
)
ANGLE_GRID_STEP = 5000


def synthesize_product(
    hierarchy: Path | dict[str, Any] | str,
    output: Path,
    scale: float = 0.1,
    seed: int = 0,
) -> Path:
    """Write the product to `output` (replaced atomically if present) and return its path.

    `hierarchy` is a GroupSpec dict, a path to its JSON, or `"l2a"` / `"l1c"` for the
    packaged reference products.
    """
    spec = load_hierarchy(hierarchy)
    plan = plan_scale(spec, scale)
    # Each product gets its own landscape for a given seed.
    product_id = str(spec.get("attributes", {}).get("stac_discovery", {}).get("id", ""))
    scene = Scene.create(seed + zlib.crc32(product_id.encode()))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.parent / f".{output.name}.partial-{os.getpid()}"
    if partial.exists():
        shutil.rmtree(partial)
    try:
        _write(spec, plan, scene, partial)
        zarr.consolidate_metadata(str(partial), zarr_format=2)
        if output.exists():
            shutil.rmtree(output)
        partial.rename(output)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return output


def scaled_spec(spec: dict[str, Any], plan: ScalePlan) -> dict[str, Any]:
    """The GroupSpec of the synthetic product: shapes, chunks and proj fields scaled."""
    out = copy.deepcopy(spec)
    out["attributes"] = _scaled_root_attributes(out.get("attributes", {}), plan)
    for path, node in walk(out):
        if is_spatial(path, node):
            _scale_array_node(node, plan)
    return out


def _scaled_root_attributes(attrs: dict[str, Any], plan: ScalePlan) -> dict[str, Any]:
    props = attrs.get("stac_discovery", {}).get("properties", {})
    for entry in props.get("eopf:image_size", []):
        for key in ("rows", "columns"):
            if key in entry:
                entry[key] = plan.size(int(entry[key]))
    return attrs


def _scale_array_node(node: dict[str, Any], plan: ScalePlan) -> None:
    shape = list(node["shape"])
    chunks = list(node["chunks"])
    spatial = 1 if len(shape) == 1 else 2
    for axis in range(len(shape) - spatial, len(shape)):
        chunks[axis] = plan.chunk(int(chunks[axis]), int(shape[axis]))
        shape[axis] = plan.size(int(shape[axis]))
    attrs = node["attributes"]
    if "proj:shape" in attrs:
        native = int(attrs["proj:shape"][-1])
        attrs["proj:shape"] = [plan.size(int(n)) for n in attrs["proj:shape"]]
        attrs["proj:transform"] = plan.transform(native)
        fp = plan.footprint
        attrs["proj:bbox"] = [fp.xmin, fp.ymin, fp.xmax, fp.ymax]
    node["shape"] = shape
    node["chunks"] = chunks


def _fill_value(value: Any) -> Any:
    if isinstance(value, str) and value in NAN_STRINGS:
        return NAN_STRINGS[value]
    return value


def _create_array(group: zarr.Group, name: str, node: dict[str, Any]) -> zarr.Array[Any]:
    compressor = node.get("compressor")
    separator = node.get("dimension_separator") or "."
    return group.create_array(
        name,
        shape=tuple(node["shape"]),
        chunks=tuple(node["chunks"]),
        dtype=node["dtype"],
        compressors=numcodecs.get_codec(dict(compressor)) if compressor else None,
        filters=None,
        fill_value=_fill_value(node.get("fill_value")),
        order=node.get("order", "C"),
        attributes=node.get("attributes", {}),
        chunk_key_encoding={"name": "v2", "separator": separator},
        # Every chunk is stored, as in the EOPF products (no holes read back as fill value).
        config={"write_empty_chunks": True},
    )


def _describe_cover(attrs: dict[str, Any], scene: Scene) -> None:
    """State the synthetic scene's cloud and snow cover where the real product states its own."""
    cloud, snow = scene.cover()
    sd = attrs.get("stac_discovery", {})
    for holder in (sd.get("properties", {}), *sd.get("assets", {}).values()):
        if "eo:cloud_cover" in holder:
            holder["eo:cloud_cover"] = cloud
        if "eo:snow_cover" in holder:
            holder["eo:snow_cover"] = snow


def _write(spec: dict[str, Any], plan: ScalePlan, scene: Scene, path: Path) -> None:
    target = scaled_spec(spec, plan)
    _describe_cover(target["attributes"], scene)
    root = zarr.open_group(
        str(path), mode="w", zarr_format=2, attributes=target.get("attributes", {})
    )
    groups: dict[str, zarr.Group] = {"": root}
    rasters: dict[str, list[tuple[str, dict[str, Any], zarr.Array[Any]]]] = defaultdict(list)
    context = _Context(target)
    for node_path, node in walk(target):
        parent, _, name = node_path.rpartition("/")
        if not is_array(node):
            groups[node_path] = groups[parent].create_group(
                name, attributes=node.get("attributes", {})
            )
            continue
        array = _create_array(groups[parent], name, node)
        if is_spatial(node_path, node) and len(node["shape"]) > 1:
            rasters[parent].append((node_path, node, array))
        elif is_spatial(node_path, node):
            array[:] = _pixel_centres(node, plan)
        else:
            array[...] = context.small_values(node_path, node)
    for members in rasters.values():
        for batch in _batches(members):
            _write_raster_batch(batch, scene, context)


def _pixel_centres(node: dict[str, Any], plan: ScalePlan) -> npt.NDArray[np.int64]:
    n = int(node["shape"][0])
    p = plan.footprint.width / n if dims(node) == ["x"] else plan.footprint.height / n
    i = np.arange(n, dtype=np.float64) + 0.5
    fp = plan.footprint
    centres = fp.xmin + i * p if dims(node) == ["x"] else fp.ymax - i * p
    return np.rint(centres).astype(node["dtype"])


Member = tuple[str, dict[str, Any], zarr.Array[Any]]


def _batches(members: list[Member]) -> Iterator[list[Member]]:
    """Arrays with the same grid and chunking, in batches whose chunk buffers stay small."""
    by_grid: dict[tuple[int, ...], list[Member]] = defaultdict(list)
    for member in members:
        node = member[1]
        by_grid[(*node["shape"][-2:], *node["chunks"][-2:])].append(member)
    for grid_members in by_grid.values():
        batch: list[Member] = []
        size = 0
        for member in grid_members:
            nbytes = _chunk_window_bytes(member[1])
            if batch and size + nbytes > BATCH_BYTES:
                yield batch
                batch, size = [], 0
            batch.append(member)
            size += nbytes
        if batch:
            yield batch


def _chunk_window_bytes(node: dict[str, Any]) -> int:
    lead = int(np.prod(node["shape"][:-2])) if len(node["shape"]) > 2 else 1
    cy, cx = node["chunks"][-2:]
    itemsize = int(np.dtype(node["dtype"]).itemsize)
    return lead * int(cy) * int(cx) * itemsize


def _write_raster_batch(batch: list[Member], scene: Scene, context: _Context) -> None:
    node0 = batch[0][1]
    ny, nx = (int(n) for n in node0["shape"][-2:])
    cy, cx = (int(c) for c in node0["chunks"][-2:])
    u_all = (np.arange(nx) + 0.5) / nx
    v_all = (np.arange(ny) + 0.5) / ny
    for y0 in range(0, ny, cy):
        y1 = min(ny, y0 + cy)
        for x0 in range(0, nx, cx):
            x1 = min(nx, x0 + cx)
            buffers = {
                path: np.empty((*node["shape"][:-2], y1 - y0, x1 - x0), dtype=node["dtype"])
                for path, node, _ in batch
            }
            rows = max(1, STRIP_PIXELS // (x1 - x0))
            for r0 in range(y0, y1, rows):
                r1 = min(y1, r0 + rows)
                strip = scene.strip(u_all[x0:x1], v_all[r0:r1])
                for path, node, _ in batch:
                    buffers[path][..., r0 - y0 : r1 - y0, :] = context.raster_values(
                        path, node, strip
                    )
            for path, _, array in batch:
                array[..., y0:y1, x0:x1] = buffers[path]


@dataclass
class _Context:
    """Product-wide facts the value generators need (footprint, detectors, level)."""

    spec: dict[str, Any]

    @property
    def level(self) -> str:
        props = self.spec["attributes"].get("stac_discovery", {}).get("properties", {})
        return str(props.get("processing:level", "L2A"))

    @property
    def detectors(self) -> npt.NDArray[np.int64]:
        try:
            node = self.spec["members"]["conditions"]["members"]["geometry"]["members"]
            n = int(node["detector"]["shape"][0])
        except KeyError:
            n = 6
        first = 1 + (12 - n) // 2
        return np.arange(first, first + n, dtype=np.int64)

    @property
    def footprint(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in degrees, from the product geometry."""
        geometry = self.spec["attributes"]["stac_discovery"]["geometry"]
        coords = np.asarray(geometry["coordinates"][0], dtype=np.float64)
        return (
            float(coords[:, 0].min()),
            float(coords[:, 1].min()),
            float(coords[:, 0].max()),
            float(coords[:, 1].max()),
        )

    @property
    def mean_sun_angles(self) -> tuple[float, float]:
        """(zenith, azimuth) in degrees, as the product metadata states them."""
        other = self.spec["attributes"].get("other_metadata", {})
        zenith = other.get("mean_sun_zenith_angle_in_deg_for_all_bands_all_detectors", 47.0)
        azimuth = other.get("mean_sun_azimuth_angle_in_deg_for_all_bands_all_detectors", 161.0)
        return float(zenith), float(azimuth)

    def raster_values(self, path: str, node: dict[str, Any], strip: Strip) -> npt.NDArray[Any]:
        parts = path.split("/")
        name = parts[-1]
        dtype = np.dtype(node["dtype"])
        attrs = node["attributes"]
        toa = self.level.upper() == "L1C"
        if parts[0] == "measurements":
            return _digital_numbers(strip.reflectance(name, toa=toa), attrs, dtype)
        if name == "tci":
            bands = [_tci(strip.reflectance(b, toa=toa)) for b in ("b04", "b03", "b02")]
            stacked = np.stack(bands[: int(node["shape"][0])])
            return stacked.astype(dtype)
        if name == "scl":
            return strip.scl().astype(dtype)
        if name == "cld":
            return np.where(strip.nodata, 0, np.rint(strip.cloud_probability)).astype(dtype)
        if name == "snw":
            snw = np.where(strip.snow, 95, 0) * (1 - strip.cloud)
            return np.where(strip.nodata, 0, np.rint(snw)).astype(dtype)
        if name == "aot":
            return np.where(strip.nodata, 0, np.rint(90 + 120 * strip.haze)).astype(dtype)
        if name == "wvp":
            return np.where(strip.nodata, 0, np.rint(1200 + 1500 * strip.haze)).astype(dtype)
        if "detector_footprint" in parts:
            return self._detector_footprint(strip).astype(dtype)
        if "l1c_classification" in parts:
            flags = np.where(strip.cloud > 0.5, 1, 0) | np.where(
                (strip.cloud > 0.05) & (strip.cloud <= 0.5), 2, 0
            )
            flags = flags | np.where(strip.snow, 4, 0)
            return np.where(strip.nodata, 0, flags).astype(dtype)
        if parts[0] == "quality" and "mask" in parts:
            # QT_NODATA_PIXELS (bit 5) outside the swath, nothing else flagged.
            return np.where(strip.nodata, 32, 0).astype(dtype)
        return np.zeros((strip.v.size, strip.u.size), dtype=dtype)

    def _detector_footprint(self, strip: Strip) -> npt.NDArray[np.int64]:
        detectors = self.detectors
        # Slanted along-track stripes, as the staggered MSI detectors project on the ground.
        position = (strip.u[None, :] + 0.15 * (1 - strip.v[:, None])) / 1.15
        index = np.clip((position * detectors.size).astype(np.int64), 0, detectors.size - 1)
        return np.where(strip.nodata, 0, detectors[index])

    def small_values(self, path: str, node: dict[str, Any]) -> npt.NDArray[Any]:
        """Plausible values for the small non-raster arrays (angles, meteorology, labels)."""
        name = path.rsplit("/", 1)[-1]
        shape = tuple(int(n) for n in node["shape"])
        dtype = np.dtype(node["dtype"])
        if dtype.kind == "U":
            labels = {"angle": ["zenith", "azimuth"], "band": list(S2_BANDS)}.get(name, [])
            values = [labels[i] if i < len(labels) else f"{name}{i}" for i in range(shape[0])]
            return np.asarray(values, dtype=dtype)
        if name == "detector":
            return self.detectors[: shape[0]].astype(dtype)
        if name == "band":
            return np.arange(1, int(np.prod(shape)) + 1, dtype=dtype).reshape(shape)
        if path.startswith("conditions/geometry/") and name in ("x", "y"):
            return self._angle_grid_axis(name, shape[0]).astype(dtype)
        if name in ("latitude", "longitude"):
            west, south, east, north = self.footprint
            if name == "latitude":
                return np.linspace(north + 0.125, south - 0.125, shape[0]).astype(dtype)
            return np.linspace(west - 0.125, east + 0.125, shape[0]).astype(dtype)
        if not shape:
            return np.zeros((), dtype=dtype)
        return self._field(name, shape, dims(node)).astype(dtype)

    def _angle_grid_axis(self, name: str, n: int) -> npt.NDArray[np.float64]:
        bbox = self.spec["attributes"]["stac_discovery"]["properties"]["proj:bbox"]
        step = np.arange(n, dtype=np.float64) * ANGLE_GRID_STEP
        return float(bbox[0]) + step if name == "x" else float(bbox[3]) - step

    def _field(
        self, name: str, shape: tuple[int, ...], names: list[str]
    ) -> npt.NDArray[np.float64]:
        """A smooth field over the last two axes, at a level typical for the variable."""
        levels = {
            "msl": (101_500.0, 300.0),
            "r": (62.0, 8.0),
            "tco3": (0.0062, 0.0003),
            "tcwv": (14.0, 3.0),
            "u10": (1.5, 2.0),
            "v10": (-0.8, 2.0),
            "z": (850.0, 400.0),
        }
        if name.startswith(("aod", "bcaod", "duaod", "omaod", "ssaod", "suaod")):
            base, amp = (0.12, 0.04)
        elif name in levels:
            base, amp = levels[name]
        elif name in ("sun_angles", "mean_sun_angles"):
            return _angles(shape, names, self.mean_sun_angles, (1.5, 2.0))
        elif name in ("viewing_incidence_angles", "mean_viewing_incidence_angles"):
            return _angles(shape, names, (6.0, 203.0), (4.0, 80.0))
        else:
            base, amp = (0.0, 1.0)
        return base + amp * _gradient(shape)


def _angles(
    shape: tuple[int, ...],
    names: list[str],
    base: tuple[float, float],
    amp: tuple[float, float],
) -> npt.NDArray[np.float64]:
    """(zenith, azimuth) along the `angle` dimension, each a gentle west-east gradient."""
    angle_axis = names.index("angle") if "angle" in names else len(shape) - 1
    out = np.empty(shape, dtype=np.float64)
    for k in range(min(2, shape[angle_axis])):
        index: list[slice | int] = [slice(None)] * len(shape)
        index[angle_axis] = k
        sub_shape = out[tuple(index)].shape
        out[tuple(index)] = base[k] + amp[k] * _gradient(sub_shape)
    return out


def _gradient(shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """-0.5..0.5 along the last axis (west->east), plus a little along the one before."""
    if not shape:
        return np.zeros(())
    x = np.linspace(-0.5, 0.5, shape[-1])
    if len(shape) == 1:
        return np.broadcast_to(x, shape).copy()
    y = np.linspace(-0.2, 0.2, shape[-2])
    return np.broadcast_to(x[None, :] + y[:, None], shape).copy()


def _digital_numbers(
    reflectance: npt.NDArray[np.float32], attrs: dict[str, Any], dtype: np.dtype[Any]
) -> npt.NDArray[Any]:
    scale = float(attrs.get("scale_factor", 1e-4))
    offset = float(attrs.get("add_offset", 0.0))
    fill = attrs.get("fill_value", 0)
    dn = np.rint((reflectance - offset) / scale)
    info = np.iinfo(dtype)
    dn = np.clip(dn, max(1, info.min), info.max)
    return np.where(np.isnan(reflectance), fill, dn).astype(dtype)


def _tci(reflectance: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    value = np.clip(np.rint(reflectance / 0.25 * 254) + 1, 1, 255)
    return np.where(np.isnan(reflectance), 0, value).astype(np.uint8)

"""Read a pydantic-zarr v2 GroupSpec (JSON) and plan its shrunken copy.

Only the rasters of the `rNNm` groups are shrunk, all by the same factor so that the
footprint stays the same and the resolutions keep their exact 1:2:6 ratios. The factor is
the achievable one nearest to the requested scale that keeps every pixel size an even
number of metres: the int64 `x`/`y` pixel-centre coordinates then stay exact.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from geozarr_pipeline.errors import InvalidInput

RESOLUTION_GROUP = re.compile(r"^r\d+m$")
REFERENCE_PACKAGE = "geozarr_local.sample"

# Packaged copies of the reference hierarchies (see reference/): product kind -> file name.
PRODUCTS: dict[str, str] = {
    "l2a": "S2A_MSIL2A_20251008T100041_N0511_R122_T32TQM_20251008T122613.source-hierarchy.json",
    "l1c": "S2B_MSIL1C_20250113T103309_N0511_R108_T32TLQ_20250113T122458.source-hierarchy.json",
}
SOURCE_ITEM_TEMPLATE = (
    "source-item.S2A_MSIL2A_20251113T102311_N0511_R065_T32TNQ_20251113T142515.json"
)


def reference_text(name: str) -> str:
    """A packaged reference file (hierarchy or item template), as text."""
    return resources.files(REFERENCE_PACKAGE).joinpath("reference", name).read_text()


def reference_product_id(kind: str) -> str:
    return PRODUCTS[kind].removesuffix(".source-hierarchy.json")


def load_hierarchy(hierarchy: Path | dict[str, Any] | str) -> dict[str, Any]:
    """A GroupSpec dict from a dict, a JSON path, or a product kind (`l2a` / `l1c`)."""
    if isinstance(hierarchy, dict):
        return hierarchy
    if isinstance(hierarchy, str) and hierarchy in PRODUCTS:
        spec: dict[str, Any] = json.loads(reference_text(PRODUCTS[hierarchy]))
        return spec
    path = Path(hierarchy)
    if not path.is_file():
        raise InvalidInput(f"hierarchy file not found: {path}")
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def is_array(node: dict[str, Any]) -> bool:
    return "shape" in node


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (path, node) below `node`, parents before children, root excluded."""
    for name, child in node.get("members", {}).items():
        child_path = f"{path}/{name}" if path else name
        yield child_path, child
        if not is_array(child):
            yield from walk(child, child_path)


def dims(node: dict[str, Any]) -> list[str]:
    return list(node.get("attributes", {}).get("_ARRAY_DIMENSIONS", []))


def is_raster_group(path: str) -> bool:
    return bool(RESOLUTION_GROUP.match(path.rsplit("/", 1)[-1]))


def is_spatial(path: str, node: dict[str, Any]) -> bool:
    """A raster (`..., y, x`) or a pixel-centre coordinate (`x` / `y`) of an rNNm group."""
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if not is_array(node) or not is_raster_group(parent):
        return False
    d = dims(node)
    return d[-2:] == ["y", "x"] or d in (["x"], ["y"])


@dataclass(frozen=True)
class Footprint:
    """The tile footprint in the product CRS: xmin, ymin, xmax, ymax (metres)."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def width(self) -> float:
        return self.xmax - self.xmin

    @property
    def height(self) -> float:
        return self.ymax - self.ymin


@dataclass(frozen=True)
class ScalePlan:
    """How the native raster sizes map to the shrunken ones."""

    footprint: Footprint
    coarsest: int
    scaled_coarsest: int

    @property
    def scale(self) -> float:
        """The effective scale (the achievable one nearest to the requested scale)."""
        return self.scaled_coarsest / self.coarsest

    def size(self, native: int) -> int:
        return native * self.scaled_coarsest // self.coarsest

    def chunk(self, native_chunk: int, native: int) -> int:
        """The shrunken chunk: as many chunks along the axis as in the real product."""
        new = self.size(native)
        count = math.ceil(native / native_chunk)
        return max(1, min(new, math.ceil(new / count)))

    def transform(self, native: int) -> list[float]:
        """The affine transform (9 terms, as EOPF writes it) of a native-size raster."""
        fp = self.footprint
        px = fp.width / self.size(native)
        py = fp.height / self.size(native)
        return [px, 0.0, fp.xmin, 0.0, -py, fp.ymax, 0.0, 0.0, 1.0]


def footprint_of(spec: dict[str, Any]) -> Footprint:
    bbox = spec["attributes"]["stac_discovery"]["properties"].get("proj:bbox")
    if bbox is None:
        for _, node in walk(spec):
            if is_array(node) and "proj:bbox" in node["attributes"]:
                bbox = node["attributes"]["proj:bbox"]
                break
    if bbox is None:
        raise InvalidInput("hierarchy has no proj:bbox: cannot place the rasters")
    return Footprint(*(float(b) for b in bbox))


def native_sizes(spec: dict[str, Any]) -> set[int]:
    sizes: set[int] = set()
    for path, node in walk(spec):
        if is_spatial(path, node):
            sizes.update(int(n) for n in node["shape"][-2:])
    return sizes


def plan_scale(spec: dict[str, Any], scale: float) -> ScalePlan:
    if not 0 < scale <= 1:
        raise InvalidInput(f"scale must be in (0, 1], got {scale}")
    footprint = footprint_of(spec)
    sizes = native_sizes(spec)
    if not sizes:
        raise InvalidInput("hierarchy has no rasters in rNNm groups")
    coarsest = min(sizes)
    ratios = {n // coarsest for n in sizes}
    if any(n % coarsest for n in sizes):
        raise InvalidInput(f"raster sizes {sorted(sizes)} are not multiples of {coarsest}")

    def exact(k: int) -> bool:
        # Pixel size an even number of metres at every resolution, in both directions.
        return all(
            (extent / (k * r)) % 2 == 0
            for r in ratios
            for extent in (footprint.width, footprint.height)
        )

    target = coarsest * scale
    candidates = [k for k in range(1, coarsest + 1) if exact(k)] or [coarsest]
    best = min(candidates, key=lambda k: (abs(math.log(k / target)), -k))
    return ScalePlan(footprint, coarsest, best)

"""Georeferencing of a store's groups, from its metadata: CRS, shape, affine transform, bbox.

The converter leaves some of this stale (array-level `proj:shape`/`proj:transform` on derived
overview arrays, a zero `spatial:bbox`), so each value is taken from the most trustworthy place:
a group-level `spatial:transform`, else an array whose `proj:shape` equals its real shape, else
the `multiscales` layout composed down from a level that is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pystac.extensions.projection import ProjectionExtension

from geozarr_pipeline.stac.store import StoreTree, ZarrNode

Transform = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class Grid:
    code: str | None
    shape: tuple[int, int]
    transform: Transform

    @property
    def resolution(self) -> float:
        return abs(self.transform[0])

    @property
    def bbox(self) -> list[float]:
        a, b, c, d, e, f = self.transform
        rows, cols = self.shape
        xs = [c, c + a * cols + b * rows]
        ys = [f, f + d * cols + e * rows]
        return [min(xs), min(ys), max(xs), max(ys)]

    def describe(self, projection: ProjectionExtension[Any]) -> None:
        """Write the grid as projection fields: proj:code, proj:shape, proj:transform, proj:bbox."""
        projection.code = self.code
        projection.shape = list(self.shape)
        projection.transform = [_clean(v) for v in self.transform]
        projection.bbox = [_clean(v) for v in self.bbox]


def _clean(value: float) -> float:
    return round(value, 9)


def crs_code(group: ZarrNode, arrays: list[ZarrNode]) -> str | None:
    code = group.attributes.get("proj:code")
    if isinstance(code, str):
        return code
    for array in arrays:
        epsg = array.attributes.get("proj:epsg")
        if isinstance(epsg, int):
            return f"EPSG:{epsg}"
        code = array.attributes.get("proj:code")
        if isinstance(code, str):
            return code
    return None


def _spatial_arrays(tree: StoreTree, group: ZarrNode) -> list[ZarrNode]:
    return [n for n in tree.children(group.path) if n.is_array and len(n.shape) >= 2]


def _own_grid(tree: StoreTree, group: ZarrNode) -> Grid | None:
    """A grid stated consistently by the group or one of its arrays, if any."""
    arrays = _spatial_arrays(tree, group)
    code = crs_code(group, arrays)
    shape_attr = group.attributes.get("spatial:shape")
    transform_attr = group.attributes.get("spatial:transform")
    if (
        isinstance(shape_attr, list)
        and isinstance(transform_attr, list)
        and len(transform_attr) >= 6
    ):
        return Grid(code, (int(shape_attr[0]), int(shape_attr[1])), _as_transform(transform_attr))
    for array in arrays:
        shape = array.attributes.get("proj:shape")
        transform = array.attributes.get("proj:transform")
        if (
            isinstance(shape, list)
            and [int(n) for n in shape] == array.shape[-2:]
            and isinstance(transform, list)
            and len(transform) >= 6
        ):
            return Grid(code, (array.shape[-2], array.shape[-1]), _as_transform(transform))
    return None


def _as_transform(values: list[Any]) -> Transform:
    a, b, c, d, e, f = (float(v) for v in values[:6])
    return (a, b, c, d, e, f)


def group_grid(tree: StoreTree, group: ZarrNode) -> Grid | None:
    """The grid of a group of 2-D arrays, or None if the metadata does not define one."""
    own = _own_grid(tree, group)
    if own is not None:
        return own
    parent_path = group.path.rsplit("/", 1)[0] if "/" in group.path else ""
    parent = tree.get(parent_path)
    if parent is not None and "multiscales" in parent.attributes:
        levels = multiscale_grids(tree, parent)
        return levels.get(group.name)
    return None


def multiscale_grids(tree: StoreTree, pyramid: ZarrNode) -> dict[str, Grid]:
    """Grid of every level of a `multiscales` group, composing the layout's transforms."""
    layout = pyramid.attributes.get("multiscales", {}).get("layout", [])
    grids: dict[str, Grid] = {}
    entries = {e["asset"]: e for e in layout if isinstance(e, dict) and "asset" in e}
    for _ in range(len(entries) + 1):
        for name, entry in entries.items():
            if name in grids:
                continue
            node = tree.get(f"{pyramid.path}/{name}")
            if node is None:
                continue
            own = _own_grid(tree, node)
            if own is not None:
                grids[name] = own
                continue
            base = grids.get(entry.get("derived_from", ""))
            shape = entry.get("spatial:shape")
            transform = entry.get("transform") or {}
            if base is None or not isinstance(shape, list):
                continue
            # Scale and translation follow the (y, x) order of `spatial:dimensions`.
            sy, sx = (float(v) for v in transform.get("scale", [1.0, 1.0]))
            ty, tx = (float(v) for v in transform.get("translation", [0.0, 0.0]))
            a, b, c, d, e, f = base.transform
            code = crs_code(node, _spatial_arrays(tree, node)) or base.code
            grids[name] = Grid(
                code,
                (int(shape[0]), int(shape[1])),
                (a * sx, b, c + a * tx, d, e * sy, f + e * ty),
            )
    return grids

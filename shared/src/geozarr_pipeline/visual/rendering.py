"""How an item is drawn: the true-colour rendering and its query parameters.

The parameters follow the raster API's contract (`titiler_eopf`; titiler-eopf in production,
the local raster server here): `variables` as `{group}:{variable}` repeated once per output
band, naming the multiscale group so the raster API picks the level that fits each tile,
`rescale` as `min,max`, a rio-color `color_formula` and `bidx`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from geozarr_pipeline.visual.titiler_eopf import variable_spec

REFLECTANCE_GROUP = "/measurements/reflectance"
TRUE_COLOR_BANDS = ("b04", "b03", "b02")
TRUE_COLOR_RESCALE = (0.0, 1.0)
TRUE_COLOR_FORMULA = "gamma rgb 1.3, sigmoidal rgb 6 0.1, saturation 1.2"


def format_number(value: float) -> str:
    """`0`, `1`, `0.4`: the shortest text that reads back as the same number."""
    return f"{value:g}"


@dataclass(frozen=True)
class Rendering:
    """One named way of turning an item's data into an RGB(A) image."""

    key: str
    title: str
    asset: str
    variables: tuple[str, ...]
    rescale: tuple[float, float]
    color_formula: str | None = None
    bidx: tuple[int, ...] = (1,)

    def query(self) -> list[tuple[str, str]]:
        """The query parameters, in a fixed order, not yet encoded."""
        return render_query(self.render_entry())

    def render_entry(self) -> dict[str, Any]:
        """The STAC render-extension (v2) object describing the same rendering."""
        entry: dict[str, Any] = {
            "title": self.title,
            "assets": [self.asset],
            "rescale": [list(self.rescale)],
            "variables": list(self.variables),
            "bidx": list(self.bidx),
        }
        if self.color_formula:
            entry["color_formula"] = self.color_formula
        return entry


def render_query(entry: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Raster-API query parameters of a render-extension object, in a fixed order."""
    pairs: list[tuple[str, str]] = []
    for low, high in entry.get("rescale") or []:
        pairs.append(("rescale", f"{format_number(low)},{format_number(high)}"))
    for key in ("color_formula", "colormap_name", "expression", "resampling"):
        if entry.get(key):
            pairs.append((key, str(entry[key])))
    if entry.get("nodata") is not None:
        pairs.append(("nodata", str(entry["nodata"])))
    pairs.extend(("variables", str(variable)) for variable in entry.get("variables") or [])
    pairs.extend(("bidx", str(index)) for index in entry.get("bidx") or [])
    return pairs


def true_color(asset: str = "reflectance", group: str = REFLECTANCE_GROUP) -> Rendering:
    """Bands b04/b03/b02 of a multiscale GeoZarr reflectance group, at the level of each tile."""
    return Rendering(
        key="true-color",
        title="Sentinel-2 True Color",
        asset=asset,
        variables=tuple(variable_spec(group, band) for band in TRUE_COLOR_BANDS),
        rescale=TRUE_COLOR_RESCALE,
        color_formula=TRUE_COLOR_FORMULA,
    )

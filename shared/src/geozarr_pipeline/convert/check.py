"""The output check: the converted store against its source, with repairs of known defects.

The library's own validation is a stub, so after every conversion this module checks the
reflectance pyramid: every level exists with the shape, CRS and transform derived from the
source; and the nodata pattern of every band at every level is the one the source implies
(native levels: exactly the source's nodata pixels; injected and coarser levels: the blocks
whose pixels are all nodata one level finer); and the decoded values of every band at every
level are the float-mode reflectance (the source decoded, or the nan-mean of its blocks) to
within half a step of the band's encoding (`_Band.value_mismatches`): integer reflectance with CF
scale/offset decodes to what float mode writes.

Known eopf-geozarr 0.12.0 defects are repaired in place rather than failed:
- the b08 band injected into r20m/r60m writes 0.0 (float mode) or DN 1000
  (keep_scale_offset) into blocks that are entirely nodata, instead of nodata;
- with keep_scale_offset, every band of r120m and coarser does the same;
- and the coarser levels of an injected band are averaged from the bad values, so they
  are recomputed (nan-mean over the block, as the library does) from the repaired level.
A pixel that is nodata where the source has data cannot be repaired: OutputCheckFailed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from geozarr_pipeline.errors import OutputCheckFailed
from geozarr_pipeline.visual.titiler_eopf import multiscale_group_problems

log = logging.getLogger(__name__)

REFLECTANCE = "measurements/reflectance"
NATIVE_LEVELS = ("r10m", "r20m", "r60m")
# (level, parent, factor) for the levels the library derives from r60m.
DERIVED_LEVELS = (("r120m", "r60m", 2), ("r360m", "r120m", 3), ("r720m", "r360m", 2))
LEVEL_FACTORS = {"r10m": 1, "r20m": 2, "r60m": 6, "r120m": 12, "r360m": 36, "r720m": 72}
Mask = npt.NDArray[np.bool_]
# Rows of a band decoded at once for a reference mean or a value comparison (bounded memory).
REFERENCE_STRIP_ROWS = 384


@dataclass
class CheckReport:
    levels: dict[str, list[int]] = field(default_factory=dict)
    arrays_checked: int = 0
    repaired: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    native_mode: str = "full"

    def as_dict(self) -> dict[str, Any]:
        return {
            "levels": self.levels,
            "arrays_checked": self.arrays_checked,
            "repaired": self.repaired,
            "native_mode": self.native_mode,
        }


def block_all(mask: Mask, factor: int) -> Mask:
    """True where every pixel of a factor x factor block is True (edges trimmed)."""
    if factor == 1:
        return mask
    rows, cols = mask.shape[0] // factor, mask.shape[1] // factor
    trimmed = mask[: rows * factor, : cols * factor]
    reshaped = trimmed.reshape(rows, factor, cols, factor)
    result: Mask = reshaped.all(axis=(1, 3))
    return result


def nan_block_mean64(values: npt.NDArray[np.floating], factor: int) -> npt.NDArray[np.float64]:
    """The mean of the valid pixels of each factor x factor block, NaN where there are none."""
    rows, cols = values.shape[0] // factor, values.shape[1] // factor
    blocks = values[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor)
    valid = ~np.isnan(blocks)
    counts = valid.sum(axis=(1, 3))
    sums = np.where(valid, blocks, 0.0).sum(axis=(1, 3), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean: npt.NDArray[np.float64] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return mean


def _fill_value(array: Any) -> Any:
    fill = array.metadata.fill_value
    if fill is None:
        fill = array.attrs.get("_FillValue", array.attrs.get("fill_value"))
    return fill


class _Band:
    """One output array with its nodata convention (NaN for floats, else the fill value)."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.is_float = np.issubdtype(array.dtype, np.floating)
        self.fill = _fill_value(array)
        attrs = array.attrs
        self.scale = float(attrs.get("scale_factor", 1.0))
        self.offset = float(attrs.get("add_offset", 0.0))

    def nodata(self, values: npt.NDArray[Any]) -> Mask:
        if self.is_float:
            mask: Mask = np.isnan(values)
            if self.fill is not None and not _is_nan(self.fill):
                mask |= values == self.fill
            return mask
        if self.fill is None:
            return np.zeros(values.shape, dtype=bool)
        equal: Mask = values == self.fill
        return equal

    def nodata_value(self) -> Any:
        return np.nan if self.is_float else self.fill

    def same_encoding(self, other: _Band) -> bool:
        """Both integer with the same scale, offset and fill: equal raw values are equal
        decoded values."""
        return (
            not self.is_float
            and not other.is_float
            and (self.scale, self.offset, self.fill) == (other.scale, other.offset, other.fill)
        )

    def block_mean(self, values: npt.NDArray[Any], factor: int) -> npt.NDArray[np.float64]:
        """The decoded nan-mean of each factor x factor block of raw `values`; for integers
        summed as integers (the decoding is linear), without a float64 copy of the input."""
        if self.is_float or self.fill is None:
            return nan_block_mean64(self.decoded(values), factor)
        rows, cols = values.shape[0] // factor, values.shape[1] // factor
        blocks = values[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor)
        valid = blocks != self.fill
        counts = valid.sum(axis=(1, 3))
        sums = np.where(valid, blocks, 0).sum(axis=(1, 3), dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean: npt.NDArray[np.float64] = np.where(
                counts > 0, sums / np.maximum(counts, 1) * self.scale + self.offset, np.nan
            )
        return mean

    def value_mismatches(
        self, decoded: npt.NDArray[np.floating], reference: npt.NDArray[np.floating]
    ) -> int:
        """Pixels valid in both whose decoded value is off the float-mode reference by more
        than half a step of this band's encoding (float32 rounding for a float band)."""
        both = ~np.isnan(decoded) & ~np.isnan(reference)
        half_step = 0.0 if self.is_float else abs(self.scale) / 2
        # float32 carries about 7 significant digits: the library averages in float32.
        tolerance = half_step * (1 + 1e-4) + 1e-6 * np.maximum(np.abs(reference), 1.0)
        with np.errstate(invalid="ignore"):
            off = both & (np.abs(decoded - reference) > tolerance)
        return int(off.sum())

    def decoded(self, values: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        mask = self.nodata(values)
        if self.is_float:
            out = values.astype(np.float64)
        else:
            out = values.astype(np.float64) * self.scale + self.offset
        out[mask] = np.nan
        return out

    def encoded(self, decoded: npt.NDArray[np.floating]) -> npt.NDArray[Any]:
        if self.is_float:
            result: npt.NDArray[Any] = decoded.astype(self.array.dtype)
            return result
        nan = np.isnan(decoded)
        raw = np.round((np.where(nan, 0.0, decoded) - self.offset) / self.scale)
        info = np.iinfo(self.array.dtype)
        raw = np.clip(raw, info.min, info.max).astype(self.array.dtype)
        raw[nan] = self.fill
        encoded: npt.NDArray[Any] = raw
        return encoded


def _is_nan(value: Any) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return isinstance(value, str) and value.lower() == "nan"


def _bands(group: Any) -> dict[str, Any]:
    return {name: array for name, array in group.arrays() if array.ndim == 2}


def _epsg_of(source: Any) -> int | None:
    other = source.attrs.get("other_metadata", {})
    if isinstance(other, dict):
        code = other.get("horizontal_CRS_code", other.get("horizontal_crs_code"))
        if code is not None:
            return int(str(code).split(":")[-1])
    reflectance = source[REFLECTANCE]
    for level in NATIVE_LEVELS:
        if level in reflectance:
            for array in _bands(reflectance[level]).values():
                if "proj:epsg" in array.attrs:
                    return int(array.attrs["proj:epsg"])
    return None


def _base_transform(source_level: Any, factor: int) -> tuple[float, float, float]:
    """(pixel size at 10 m level, x origin, y origin) from a source level's pixel centres."""
    x = source_level["x"][:2].astype(np.float64)
    y = source_level["y"][:2].astype(np.float64)
    size = abs(float(x[1] - x[0]))
    return size / factor, float(x[0]) - size / 2, float(y[0]) + size / 2


class OutputChecker:
    """Check (and repair) one converted store against its source, in two phases.

    `check_native` compares the native levels (r10m, r20m, r60m) with the source; it reads
    only those levels' arrays, so it can run while the library still writes the other
    groups. `check_pyramid` then checks every level's geometry, the multiscales layout and
    the derived levels, and raises OutputCheckFailed with every problem found.
    """

    def __init__(
        self,
        source: Any,
        *,
        native_mode: str = "full",
        on_level: Callable[[str], None] | None = None,
        threads: int = 2,
    ) -> None:
        self.source = source
        self.native_mode = native_mode
        self.on_level = on_level
        self.threads = threads
        self.report = CheckReport(native_mode=native_mode)
        # Expected nodata masks of the levels that later levels derive from.
        self.expected: dict[str, dict[str, Mask]] = {}
        # Float-mode reflectance (unrounded) of the last derived level, per band, and of
        # the bands injected into a native level.
        self.reference: dict[str, dict[str, npt.NDArray[np.float64]]] = {}
        self.injected_references: dict[tuple[str, str], npt.NDArray[np.float64]] = {}
        self.modified: dict[str, set[str]] = {}
        source_refl = source[REFLECTANCE]
        self.native = [lvl for lvl in NATIVE_LEVELS if lvl in source_refl]
        if not self.native:
            raise OutputCheckFailed("the source has no reflectance resolution groups")

    @property
    def native_groups(self) -> set[str]:
        """Output group paths whose arrays `check_native` reads."""
        return {f"/{REFLECTANCE}/{level}" for level in self.native}

    def problem(self, message: str) -> None:
        self.report.problems.append(message)

    def check_native(self, output: Any) -> None:
        source_refl = self.source[REFLECTANCE]
        if REFLECTANCE not in output:
            self.problem("the output has no measurements/reflectance group")
            return
        out_refl = output[REFLECTANCE]
        # The coarsest level first: it is checked in full, and its nodata masks show the
        # sampling of the finer levels where the nodata edges are.
        order = [self.native[-1], *self.native[:-1]]
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for level in order:
                if level not in out_refl:
                    continue  # reported by check_pyramid
                self._check_native_level(source_refl, out_refl, level, pool)
                self._emit(level)

    def check_pyramid(self, output: Any) -> CheckReport:
        source_refl = self.source[REFLECTANCE]
        if REFLECTANCE not in output:
            self.problem("the output has no measurements/reflectance group")
            self._raise_problems()
        out_refl = output[REFLECTANCE]
        finest = self.native[0]
        size10, x0, y0 = _base_transform(source_refl[finest], LEVEL_FACTORS[finest])
        epsg = _epsg_of(self.source)
        for level in (*self.native, *(d[0] for d in DERIVED_LEVELS)):
            if level not in out_refl:
                self.problem(f"level {level} is missing")
                continue
            self._check_geometry(out_refl[level], level, size10, x0, y0, epsg)
        self._check_multiscales(out_refl)
        self._raise_problems()
        for level, parent, factor in DERIVED_LEVELS:
            self._check_derived_level(out_refl, level, parent, factor)
            self._emit(level)
        self._raise_problems()
        return self.report

    def _raise_problems(self) -> None:
        if self.report.problems:
            raise OutputCheckFailed(
                "output check failed: " + "; ".join(self.report.problems[:20]),
                problems=self.report.problems[:50],
            )

    def _emit(self, level: str) -> None:
        if self.on_level is not None:
            self.on_level(level)

    def _check_geometry(
        self, group: Any, level: str, size10: float, x0: float, y0: float, epsg: int | None
    ) -> None:
        attrs = group.attrs
        bands = _bands(group)
        if not bands:
            self.problem(f"level {level} has no bands")
            return
        shape = next(iter(bands.values())).shape
        self.report.levels[level] = list(shape)
        if epsg is not None and attrs.get("proj:code") != f"EPSG:{epsg}":
            self.problem(f"{level}: CRS {attrs.get('proj:code')!r} != EPSG:{epsg}")
        size = size10 * LEVEL_FACTORS[level]
        expected = [size, 0.0, x0, 0.0, -size, y0]
        actual = attrs.get("spatial:transform")
        if not isinstance(actual, list) or len(actual) < 6:
            self.problem(f"{level}: no spatial:transform")
        elif not np.allclose(actual[:6], expected, rtol=0, atol=1e-6 * max(size, 1.0)):
            self.problem(f"{level}: transform {actual[:6]} != {expected}")
        if attrs.get("spatial:shape") not in (None, list(shape)):
            self.problem(f"{level}: spatial:shape {attrs.get('spatial:shape')} != {list(shape)}")

    def _check_multiscales(self, out_refl: Any) -> None:
        multiscales = out_refl.attrs.get("multiscales")
        layout = multiscales.get("layout", []) if isinstance(multiscales, dict) else []
        assets = [entry.get("asset") for entry in layout if isinstance(entry, dict)]
        for level in self.report.levels:
            if level not in assets:
                self.problem(f"multiscales layout does not list {level}")
        # What titiler-eopf needs to pick each tile's level (titiler_eopf).
        for problem in multiscale_group_problems(dict(out_refl.attrs)):
            self.problem(f"multiscales layout unusable by the raster API: {problem}")

    def _native_windows(
        self, src: Any, out: Any, keep_mask: bool, salt: int, level: str, name: str
    ) -> list[tuple[slice, slice]]:
        """Windows on the source chunk grid (full mode), or one strip (sample mode).

        The sample is one output-chunk-high strip inside one source chunk (a different one
        for each band), so that it decompresses one source chunk and a strip of the output.
        The library's defects are systematic per array (a cast, a fill value), so a strip
        that crosses nodata shows them; a finding in a strip escalates to the whole band.
        The coarsest native level and the derived levels are always checked in full.
        """
        rows, cols = src.shape
        row_step, col_step = src.chunks
        row_starts = list(range(0, rows, row_step))
        if keep_mask or self.native_mode == "full":
            row_windows = [(r, min(r + row_step, rows)) for r in row_starts]
        else:
            height = out.chunks[0]
            candidates = []
            for first in row_starts:
                last = min(first + row_step, rows)
                start = min(-(-first // height) * height, first + max(row_step - height, 0))
                for r0 in range(start, last, height):
                    for col in range(0, cols, col_step):
                        window = (
                            slice(r0, min(r0 + height, last)),
                            slice(col, min(col + col_step, cols)),
                        )
                        candidates.append(window)
            return [self._pick_window(candidates, level, name, salt)]
        return [
            (slice(r0, r1), slice(c, min(c + col_step, cols)))
            for r0, r1 in row_windows
            for c in range(0, cols, col_step)
        ]

    def _check_native_level(
        self, source_refl: Any, out_refl: Any, level: str, pool: ThreadPoolExecutor
    ) -> None:
        source_bands = _bands(source_refl[level])
        out_bands = _bands(out_refl[level])
        # Only the coarsest native level's masks are needed later (its derived levels).
        keep = level == self.native[-1]
        expected: dict[str, Mask] = {}
        self.expected[level] = expected
        for salt, name in enumerate(sorted(out_bands)):
            out = out_bands[name]
            if name in source_bands:
                src = source_bands[name]
                if src.shape != out.shape:
                    self.problem(f"{level}/{name}: shape {out.shape} != source {src.shape}")
                    continue
                seen = self._findings()
                mask = self._compare_native(level, name, src, out, pool, keep, salt)
                if self.native_mode == "sample" and self._findings() != seen:
                    mask = self._full_native(level, name, src, out, pool, keep)
                if mask is not None:
                    expected[name] = mask
            else:
                injected = self._injected_source(source_refl, level, name)
                if injected is None:
                    self.problem(f"{level}/{name} has no source band to derive it from")
                    continue
                src, factor = injected
                if self.native_mode == "full":
                    reference = self._injected_reference(level, name)
                    mask = np.isnan(reference)[: out.shape[0], : out.shape[1]]
                    self._compare_and_repair(level, name, out, mask)
                    self._check_values(level, name, out, reference)
                else:
                    seen = self._findings()
                    self._compare_injected_strip(level, name, src, factor, out, salt)
                    if self._findings() != seen:  # a sampled defect: check the whole band
                        full = np.isnan(self._injected_reference(level, name))
                        self._compare_and_repair(
                            level, name, out, full[: out.shape[0], : out.shape[1]]
                        )
                    mask = _Band(out).nodata(out[:]) if keep else None
                if keep and mask is not None:
                    expected[name] = mask
            self.report.arrays_checked += 1
        missing = sorted(set(source_bands) - set(out_bands) - {"x", "y"})
        if missing:
            self.problem(f"{level}: bands missing from the output: {', '.join(missing)}")

    def _pick_window(
        self, candidates: list[tuple[slice, slice]], level: str, name: str, salt: int
    ) -> tuple[slice, slice]:
        """The candidate that crosses the most nodata edge in the coarsest level's masks."""
        masks = self.expected.get(self.native[-1], {})
        guide = masks.get(name)
        if guide is None and masks:
            guide = next(iter(masks.values()))
        if guide is None or level == self.native[-1]:
            return candidates[salt % len(candidates)]
        factor = LEVEL_FACTORS[self.native[-1]] // LEVEL_FACTORS[level]
        best, best_score = candidates[salt % len(candidates)], 0
        for rows, cols in candidates:
            region = guide[
                rows.start // factor : -(-rows.stop // factor),
                cols.start // factor : -(-cols.stop // factor),
            ]
            nodata = int(region.sum())
            score = min(nodata, region.size - nodata)
            if score > best_score:
                best, best_score = (rows, cols), score
        return best

    def _findings(self) -> tuple[int, int]:
        return len(self.report.problems), len(self.report.repaired)

    def _full_native(
        self, level: str, name: str, src: Any, out: Any, pool: ThreadPoolExecutor, keep: bool
    ) -> Mask | None:
        """A sampled strip found a defect: compare (and repair) the whole band."""
        mode, self.native_mode = self.native_mode, "full"
        try:
            return self._compare_native(level, name, src, out, pool, keep, 0)
        finally:
            self.native_mode = mode

    def _injected_source(self, source_refl: Any, level: str, name: str) -> tuple[Any, int] | None:
        """The finer source band an injected band (e.g. b08 in r20m) is averaged from."""
        target = LEVEL_FACTORS[level]
        for finer in NATIVE_LEVELS:
            if LEVEL_FACTORS[finer] >= target or finer not in source_refl:
                continue
            bands = _bands(source_refl[finer])
            if name in bands:
                return bands[name], target // LEVEL_FACTORS[finer]
        return None

    def _compare_injected_strip(
        self, level: str, name: str, src: Any, factor: int, out: Any, salt: int
    ) -> None:
        """Sample mode: one output-chunk-high strip against its block of the source."""
        height = out.chunks[0]
        strips = [
            (slice(r, min(r + height, out.shape[0])), slice(0, out.shape[1]))
            for r in range(0, out.shape[0], height)
        ]
        rows, _ = self._pick_window(strips, level, name, salt)
        start, stop = int(rows.start), int(rows.stop)
        raw = src[start * factor : stop * factor, : out.shape[1] * factor]
        reference = _Band(src).block_mean(raw, factor)  # NaN exactly where a block has no data
        window = (slice(start, stop), slice(None))
        self._compare_and_repair(level, name, out, np.isnan(reference), window)
        self._check_values(level, name, out, reference, window)

    def _compare_native(
        self,
        level: str,
        name: str,
        src: Any,
        out: Any,
        pool: ThreadPoolExecutor,
        keep_mask: bool,
        salt: int,
    ) -> Mask | None:
        band = _Band(out)
        source_band = _Band(src)
        windows = self._native_windows(src, out, keep_mask, salt, level, name)

        def compare(window: tuple[slice, slice]) -> tuple[int, Mask | None, Mask, int]:
            src_values = src[window]
            out_values = out[window]
            src_mask = source_band.nodata(src_values)
            out_mask = band.nodata(out_values)
            lost = int((~src_mask & out_mask).sum())
            wrong = src_mask & ~out_mask
            if band.same_encoding(source_band):
                off = int(((out_values != src_values) & ~src_mask & ~out_mask).sum())
            else:  # decoded in strips: float64 copies of a 5490^2 window are 241 MB each
                off = sum(
                    band.value_mismatches(
                        band.decoded(out_values[row : row + REFERENCE_STRIP_ROWS]),
                        source_band.decoded(src_values[row : row + REFERENCE_STRIP_ROWS]),
                    )
                    for row in range(0, out_values.shape[0], REFERENCE_STRIP_ROWS)
                )
            return lost, (wrong if wrong.any() else None), src_mask, off

        results = list(pool.map(compare, windows))
        lost = sum(r[0] for r in results)
        if lost:
            self.problem(f"{level}/{name}: {lost} pixels are nodata where the source has data")
        self._report_values(level, name, sum(r[3] for r in results))
        fixed = 0
        # Repairs are rare; apply them one window at a time (windows may share out chunks).
        for window, (_, wrong, _, _) in zip(windows, results, strict=True):
            if wrong is not None:
                values = out[window]
                values[wrong] = band.nodata_value()
                out[window] = values
                fixed += int(wrong.sum())
        if fixed:
            self.report.repaired.append(f"{level}/{name}: {fixed} nodata pixels rewritten")
            self.modified.setdefault(level, set()).add(name)
        if not keep_mask:
            return None
        mask = np.zeros(src.shape, dtype=bool)
        for window, (_, _, src_mask, _) in zip(windows, results, strict=True):
            mask[window] = src_mask
        return mask

    def _compare_and_repair(
        self,
        level: str,
        name: str,
        out: Any,
        expected: Mask,
        window: tuple[slice, slice] = (slice(None), slice(None)),
    ) -> None:
        band = _Band(out)
        values = out[window]
        if expected.shape != values.shape:
            self.problem(f"{level}/{name}: shape {values.shape} != expected {expected.shape}")
            return
        out_mask = band.nodata(values)
        lost = int((~expected & out_mask).sum())
        if lost:
            self.problem(f"{level}/{name}: {lost} pixels are nodata where the source has data")
        wrong = expected & ~out_mask
        count = int(wrong.sum())
        if count:
            values[wrong] = band.nodata_value()
            out[window] = values
            self.report.repaired.append(f"{level}/{name}: {count} nodata pixels rewritten")
            self.modified.setdefault(level, set()).add(name)

    def _check_derived_level(self, out_refl: Any, level: str, parent: str, factor: int) -> None:
        if level not in out_refl or parent not in out_refl:
            return
        parent_bands = _bands(out_refl[parent])
        out_bands = _bands(out_refl[level])
        parent_expected = self.expected.get(parent, {})
        expected: dict[str, Mask] = {}
        parent_references = self.reference.get(parent, {})
        references: dict[str, npt.NDArray[np.float64]] = {}
        for name in sorted(parent_bands):
            if name not in out_bands:
                self.problem(f"{level}: band {name} is missing")
                continue
            if name not in parent_expected:
                self.problem(f"{level}/{name}: no expected nodata pattern for {parent}")
                continue
            out = out_bands[name]
            mask = block_all(parent_expected[name], factor)
            parent_reference = parent_references.get(name)
            if parent_reference is None:
                reference = self._reference_from_native(parent, name, parent_bands[name], factor)
            else:
                reference = nan_block_mean64(parent_reference, factor)
            reference = reference[: out.shape[0], : out.shape[1]]
            if name in self.modified.get(parent, set()) and reference.shape == out.shape:
                self._recompute(out, reference, level, name)
            self._compare_and_repair(level, name, out, mask)
            expected[name] = mask
            self._check_values(level, name, out, reference)
            references[name] = reference
            self.report.arrays_checked += 1
        self.expected[level] = expected
        self.reference = {level: references}

    def _reference_from_native(
        self, level: str, name: str, stored: Any, factor: int
    ) -> npt.NDArray[np.float64]:
        """The float-mode reflectance of a level derived by `factor` from a native level:
        the block means of the source band, or of the float-mode values of a band the
        library injects into the native level (the stored band is rounded to its encoding;
        the float chain is not)."""
        source_bands = _bands(self.source[REFLECTANCE][level])
        if name in source_bands:
            src = source_bands[name]
            return _Band(src).block_mean(src[:], factor)
        reference = self._injected_reference(level, name)
        if level == self.native[-1] and self.native_mode != "full":
            # Sample mode checked a strip of it; its whole reference is at hand now.
            self._check_values(level, name, stored, reference)
        return nan_block_mean64(reference, factor)

    def _injected_reference(self, level: str, name: str) -> npt.NDArray[np.float64]:
        """The float-mode values of a band the library injects into a native level: the
        nan-mean of the finer source band's blocks, NaN where a block has no data (so also
        the nodata pattern it must have); computed once per band and level."""
        cached = self.injected_references.get((level, name))
        if cached is not None:
            return cached
        injected = self._injected_source(self.source[REFLECTANCE], level, name)
        if injected is None:
            raise OutputCheckFailed(f"{level}/{name} has no source band to derive it from")
        src, factor = injected
        band = _Band(src)
        usable = src.shape[0] - src.shape[0] % factor
        # One source chunk row read at a time (each chunk decompressed once), averaged in
        # strips of a few hundred rows (bounded temporaries on a 10980-wide band).
        step = max(src.chunks[0] // factor, 1) * factor
        strip = factor * max(1, REFERENCE_STRIP_ROWS // factor)
        parts: list[npt.NDArray[np.float64]] = []
        for start in range(0, usable, step):
            raw = src[start : min(start + step, usable), :]
            parts.extend(
                band.block_mean(raw[row : row + strip], factor)
                for row in range(0, raw.shape[0], strip)
            )
        reference = np.concatenate(parts)
        self.injected_references[level, name] = reference
        return reference

    def _check_values(
        self,
        level: str,
        name: str,
        out: Any,
        reference: npt.NDArray[np.float64],
        window: tuple[slice, slice] = (slice(None), slice(None)),
    ) -> None:
        """Decoded values of `out` (in `window`) against the float-mode reference there."""
        band = _Band(out)
        values = out[window]
        reference = reference[: values.shape[0], : values.shape[1]]
        if reference.shape != values.shape:
            self.problem(f"{level}/{name}: shape {values.shape} != expected {reference.shape}")
            return
        self._report_values(level, name, band.value_mismatches(band.decoded(values), reference))

    def _report_values(self, level: str, name: str, off: int) -> None:
        if off:
            self.problem(
                f"{level}/{name}: {off} pixels differ from the float-mode reflectance by more "
                "than half a step of their encoding"
            )

    def _recompute(
        self, out: Any, reference: npt.NDArray[np.float64], level: str, name: str
    ) -> None:
        """Write a level again from the float-mode reference: the library averaged its
        repaired parent's bad values (rounded once, as the conversion rounds)."""
        out[:] = _Band(out).encoded(reference)
        self.report.repaired.append(f"{level}/{name}: recomputed from the float-mode means")
        self.modified.setdefault(level, set()).add(name)


def check_and_repair_output(
    source: Any,
    output: Any,
    *,
    native_mode: str = "full",
    on_level: Callable[[str], None] | None = None,
) -> CheckReport:
    """Check (and repair) an opened output group against its opened source group."""
    checker = OutputChecker(source, native_mode=native_mode, on_level=on_level)
    checker.check_native(output)
    return checker.check_pyramid(output)

"""A synthetic Sentinel-2 scene as continuous fields over the tile footprint.

Every field is a function of normalised map coordinates (u west->east, v north->south, both
in [0, 1] over the footprint), evaluated at pixel centres. The same scene sampled at 10 m,
20 m or 60 m (or at any shrunken grid) therefore shows the same land, water, clouds and
nodata edge, which is what a real multi-resolution product looks like.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
Bool = npt.NDArray[np.bool_]

# Surface reflectance spectra per band (0..1): vegetation, bare soil, water, cloud, snow.
SPECTRA: dict[str, tuple[float, float, float, float, float]] = {
    "b01": (0.040, 0.100, 0.060, 0.72, 0.90),
    "b02": (0.050, 0.120, 0.050, 0.75, 0.92),
    "b03": (0.085, 0.150, 0.040, 0.76, 0.92),
    "b04": (0.045, 0.200, 0.025, 0.76, 0.90),
    "b05": (0.120, 0.230, 0.020, 0.75, 0.88),
    "b06": (0.280, 0.250, 0.012, 0.74, 0.85),
    "b07": (0.330, 0.270, 0.010, 0.73, 0.82),
    "b08": (0.360, 0.280, 0.008, 0.72, 0.80),
    "b8a": (0.370, 0.290, 0.007, 0.71, 0.78),
    "b09": (0.120, 0.100, 0.003, 0.40, 0.50),
    "b10": (0.010, 0.005, 0.001, 0.25, 0.05),
    "b11": (0.220, 0.350, 0.003, 0.45, 0.10),
    "b12": (0.120, 0.280, 0.002, 0.30, 0.05),
}

# Top-of-atmosphere path reflectance added to the surface for L1C (Rayleigh + aerosols).
PATH_REFLECTANCE: dict[str, float] = {
    "b01": 0.090,
    "b02": 0.070,
    "b03": 0.045,
    "b04": 0.030,
    "b05": 0.025,
    "b06": 0.020,
    "b07": 0.018,
    "b08": 0.015,
    "b8a": 0.014,
    "b09": 0.008,
    "b10": 0.002,
    "b11": 0.005,
    "b12": 0.003,
}

# Scene Classification (SCL) codes of the L2A product.
SCL_NO_DATA = 0
SCL_CLOUD_SHADOWS = 3
SCL_VEGETATION = 4
SCL_NOT_VEGETATED = 5
SCL_WATER = 6
SCL_CLOUD_MEDIUM = 8
SCL_CLOUD_HIGH = 9
SCL_THIN_CIRRUS = 10
SCL_SNOW = 11
# The classes Sentinel-2 counts as cloudy in its cloud cover percentage.
SCL_CLOUDS = (SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_THIN_CIRRUS)

# Pixels per side of the grid the scene's cloud and snow cover are counted on.
COVER_GRID = 512

# The orbit edge: pixels with u > EDGE_U0 + EDGE_SLOPE * v lie outside the swath (nodata).
EDGE_U0 = 0.72
EDGE_SLOPE = 0.22


def outside_swath(u: npt.NDArray[np.floating], v: npt.NDArray[np.floating]) -> Bool:
    """True where the pixel centre (u along columns, v along rows) is beyond the orbit edge."""
    result: Bool = u[np.newaxis, :] > EDGE_U0 + EDGE_SLOPE * v[:, np.newaxis]
    return result


@dataclass(frozen=True)
class Noise:
    """Multi-octave value noise on [0, 1]^2: smooth, deterministic, cheap to sample by strips."""

    lattices: tuple[F32, ...]
    weights: tuple[float, ...]

    @classmethod
    def create(cls, rng: np.random.Generator, cells: tuple[int, ...]) -> Noise:
        lattices = tuple(rng.random((n + 1, n + 1), dtype=np.float32) for n in cells)
        raw = [0.5**i for i in range(len(cells))]
        total = sum(raw)
        return cls(lattices, tuple(w / total for w in raw))

    def sample(self, u: npt.NDArray[np.floating], v: npt.NDArray[np.floating]) -> F32:
        out = np.zeros((v.size, u.size), dtype=np.float32)
        for lattice, weight in zip(self.lattices, self.weights, strict=True):
            n = lattice.shape[0] - 1
            iy, fy = _cell(v, n)
            ix, fx = _cell(u, n)
            # Interpolate along x only the few lattice rows this strip touches, then along y
            # by whole-row gathers (contiguous, much cheaper than per-pixel column gathers).
            j0 = int(iy.min())
            sub = lattice[j0 : int(iy.max()) + 2, :]
            across = sub[:, ix] * (1 - fx) + sub[:, ix + 1] * fx
            out += weight * (
                across[iy - j0] * (1 - fy)[:, None] + across[iy + 1 - j0] * fy[:, None]
            )
        return out


def _cell(t: npt.NDArray[np.floating], n: int) -> tuple[npt.NDArray[np.intp], F32]:
    g = np.clip(t, 0.0, 1.0) * n
    i = np.minimum(np.floor(g).astype(np.intp), n - 1)
    f = (g - i).astype(np.float32)
    return i, f * f * (3 - 2 * f)


@dataclass(frozen=True)
class Scene:
    """The continuous scene of one product; `strip(u, v)` samples it on a pixel grid."""

    terrain: Noise
    vegetation: Noise
    lakes: Noise
    clouds: Noise
    atmosphere: Noise
    cloud_threshold: float
    lake_threshold: float
    snow_threshold: float
    # Direction (radians) from the tile centre towards the sea.
    coast_direction: float
    # Cloud shadows: the cloud field displaced by this offset (u, v), sun from the south-east.
    shadow_offset: tuple[float, float] = (-0.012, -0.018)

    @classmethod
    def create(cls, seed: int) -> Scene:
        rng = np.random.default_rng(seed)
        terrain = Noise.create(rng, (4, 16, 64, 256))
        vegetation = Noise.create(rng, (8, 48, 300, 1200))
        lakes = Noise.create(rng, (6, 24, 96))
        clouds = Noise.create(rng, (3, 12, 48, 192, 768))
        atmosphere = Noise.create(rng, (3, 9))
        coast_direction = float(rng.uniform(0.0, 2 * np.pi))
        # Thresholds from a fixed coarse sample: the same for every output resolution.
        probe = np.linspace(0.0, 1.0, 257)
        return cls(
            terrain=terrain,
            vegetation=vegetation,
            lakes=lakes,
            clouds=clouds,
            atmosphere=atmosphere,
            cloud_threshold=float(np.quantile(clouds.sample(probe, probe), 0.85)),
            lake_threshold=float(np.quantile(lakes.sample(probe, probe), 0.04)),
            snow_threshold=float(np.quantile(terrain.sample(probe, probe), 0.985)),
            coast_direction=coast_direction,
        )

    def strip(self, u: npt.NDArray[np.floating], v: npt.NDArray[np.floating]) -> Strip:
        return Strip(self, np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64))

    def cover(self, pixels: int = COVER_GRID) -> tuple[float, float]:
        """(cloud, snow) percent of the scene's classification on a `pixels`^2 grid.

        The written SCL rasters of any resolution agree within a fraction of a percent.
        """
        centres = (np.arange(pixels) + 0.5) / pixels
        return cover_percent(self.strip(centres, centres).scl())


@dataclass
class Strip:
    """The scene sampled on the grid u (columns) x v (rows); fields computed on first use."""

    scene: Scene
    u: npt.NDArray[np.float64]
    v: npt.NDArray[np.float64]
    _cache: dict[str, F32] = field(default_factory=dict)

    @cached_property
    def nodata(self) -> Bool:
        return outside_swath(self.u, self.v)

    @cached_property
    def terrain(self) -> F32:
        return self.scene.terrain.sample(self.u, self.v)

    @cached_property
    def water(self) -> Bool:
        du = np.cos(self.scene.coast_direction) * (self.u - 0.5)
        dv = np.sin(self.scene.coast_direction) * (self.v - 0.5)
        coast: Bool = (dv[:, None] + du[None, :] + 0.3 * (self.terrain - 0.5)) > 0.22
        lake: Bool = self.scene.lakes.sample(self.u, self.v) < self.scene.lake_threshold
        return coast | lake

    @cached_property
    def vegetation(self) -> F32:
        raw = self.scene.vegetation.sample(self.u, self.v)
        return np.asarray(np.clip((raw - 0.35) * 3.0, 0.0, 1.0), dtype=np.float32)

    @cached_property
    def snow(self) -> Bool:
        return (self.terrain > self.scene.snow_threshold) & ~self.water

    @cached_property
    def cloud_field(self) -> F32:
        return self.scene.clouds.sample(self.u, self.v)

    @cached_property
    def cloud(self) -> F32:
        """Cloud opacity 0..1."""
        return _opacity(self.cloud_field, self.scene.cloud_threshold)

    @cached_property
    def shadow(self) -> Bool:
        du, dv = self.scene.shadow_offset
        shifted = _opacity(
            self.scene.clouds.sample(self.u + du, self.v + dv), self.scene.cloud_threshold
        )
        return (shifted > 0.5) & (self.cloud < 0.05)

    @cached_property
    def cloud_probability(self) -> F32:
        """0..100, rising ahead of the opaque cloud so the probability halo is visible."""
        t = self.scene.cloud_threshold
        p = np.clip((self.cloud_field - (t - 0.04)) / 0.1, 0.0, 1.0) * 100
        return np.asarray(p, dtype=np.float32)

    @cached_property
    def haze(self) -> F32:
        return self.scene.atmosphere.sample(self.u, self.v)

    def reflectance(self, band: str, *, toa: bool = False) -> F32:
        """Reflectance 0..1 of a band (surface, or top of atmosphere), NaN outside the swath."""
        key = f"{band}:toa" if toa else band
        if key in self._cache:
            return self._cache[key]
        if toa:
            path = PATH_REFLECTANCE.get(band, 0.02) * (0.8 + 0.4 * self.haze)
            top = self.reflectance(band) + path * (1 - self.cloud)
            self._cache[key] = top.astype(np.float32)
            return self._cache[key]
        veg, soil, water, cloud, snow = SPECTRA.get(band, SPECTRA["b04"])
        texture = 0.8 + 0.4 * self.terrain
        land = (veg * self.vegetation + soil * (1 - self.vegetation)) * texture
        surface = np.where(self.water, water * (0.9 + 0.2 * self.terrain), land)
        surface = np.where(self.snow, snow, surface)
        surface = np.where(self.shadow, surface * 0.45, surface)
        result = (surface * (1 - self.cloud) + cloud * self.cloud).astype(np.float32)
        result[self.nodata] = np.nan
        self._cache[key] = result
        return result

    def scl(self) -> npt.NDArray[np.uint8]:
        out = np.where(self.vegetation > 0.5, SCL_VEGETATION, SCL_NOT_VEGETATED).astype(np.uint8)
        out[self.water] = SCL_WATER
        out[self.snow] = SCL_SNOW
        out[self.shadow] = SCL_CLOUD_SHADOWS
        out[(self.cloud > 0.02) & (self.cloud <= 0.3)] = SCL_THIN_CIRRUS
        out[(self.cloud > 0.3) & (self.cloud <= 0.7)] = SCL_CLOUD_MEDIUM
        out[self.cloud > 0.7] = SCL_CLOUD_HIGH
        out[self.nodata] = SCL_NO_DATA
        return out


def cover_percent(scl: npt.NDArray[np.integer]) -> tuple[float, float]:
    """(cloud, snow) percent of the valid pixels of an SCL raster (eo:cloud_cover/snow_cover)."""
    counts = np.bincount(scl.ravel(), minlength=SCL_SNOW + 1)
    valid = int(counts.sum() - counts[SCL_NO_DATA])
    if valid == 0:
        return 0.0, 0.0
    cloud = int(counts[list(SCL_CLOUDS)].sum())
    return round(100 * cloud / valid, 6), round(100 * int(counts[SCL_SNOW]) / valid, 6)


def _opacity(field_: F32, threshold: float) -> F32:
    return np.asarray(np.clip((field_ - threshold) / 0.08, 0.0, 1.0), dtype=np.float32)

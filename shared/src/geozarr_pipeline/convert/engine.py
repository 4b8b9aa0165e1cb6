"""The eopf-geozarr call: imported lazily, without its import-time network fetch, with the
library's defects and waste fixed where they arise.

Importing `eopf_geozarr` downloads the CF standard-name table from GitHub with no timeout
(`eopf_geozarr.data_api.geozarr.common`); with egress dropped that hangs a cold start. The
first conversion imports the library with `urllib.request.urlopen` refusing every request,
so the module falls back to its documented "validation off" branch at once. The library's
only use of the table is `check_standard_name` in its pydantic models, which S2 conversion
does not depend on.

On import, three functions of eopf-geozarr 0.12.0's `s2_optimization/s2_multiscale.py` are
wrapped (each wrapper says why): `stream_write_dataset` (progress, and pyramid parents
computed once), `create_uniform_encoding` (integers without CF scaling keep their dtype,
bounded shards) and `_coarsen_variable` (a plain nan-mean of the decoded band). The source
is decoded to float32 (`decoded_in_single_precision`). The output check (check.py) proves
the result against the source whatever the library does.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from geozarr_pipeline.config import Settings
from geozarr_pipeline.convert.sources import local_path, storage_options
from geozarr_pipeline.errors import SourceNotFound, TransientError, UnsupportedProduct
from geozarr_pipeline.events import ConversionOptions
from geozarr_pipeline.output_store import is_s3

log = logging.getLogger(__name__)

CF_TABLE_MODULE = "eopf_geozarr.data_api.geozarr.common"
COMPRESSION_LEVEL = 3  # the library ignores it (always blosc zstd 3); passed for clarity


@dataclass(frozen=True)
class EffectiveOptions:
    spatial_chunk: int
    enable_sharding: bool
    keep_scale_offset: bool
    # Side of a shard in pixels when sharding, rounded down to whole inner chunks.
    shard_size: int = Settings.model_fields["shard_size"].default

    @classmethod
    def resolve(cls, options: ConversionOptions, settings: Settings) -> EffectiveOptions:
        """Per-event overrides on top of the configured defaults."""
        return cls(
            spatial_chunk=options.spatial_chunk or settings.spatial_chunk,
            enable_sharding=(
                settings.enable_sharding
                if options.enable_sharding is None
                else options.enable_sharding
            ),
            keep_scale_offset=(
                settings.keep_scale_offset
                if options.keep_scale_offset is None
                else options.keep_scale_offset
            ),
            shard_size=options.shard_size or settings.shard_size,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "spatial_chunk": self.spatial_chunk,
            "enable_sharding": self.enable_sharding,
            "keep_scale_offset": self.keep_scale_offset,
            **({"shard_size": self.shard_size} if self.enable_sharding else {}),
        }


@dataclass(frozen=True)
class Library:
    open_source_datatree: Callable[..., Any]
    convert_s2_optimized: Callable[..., Any]
    version: str


_import_lock = threading.Lock()
_library: Library | None = None
_on_group_written: ContextVar[Callable[[str], None] | None] = ContextVar(
    "on_group_written", default=None
)
_shard_size: ContextVar[int | None] = ContextVar("shard_size", default=None)


def _refuse_network(*args: Any, **kwargs: Any) -> Any:
    raise urllib.error.URLError("network access is disabled while importing eopf_geozarr")


@contextlib.contextmanager
def _no_import_time_fetch() -> Iterator[None]:
    original = urllib.request.urlopen
    urllib.request.urlopen = _refuse_network
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Could not fetch the CF standard name")
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message="TypedDict class")
            yield
    finally:
        urllib.request.urlopen = original


def _route_structlog() -> None:
    """Send the library's structlog events to stdlib logging (errors only; warnings are noise)."""
    import structlog

    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.processors.format_exc_info,
            structlog.stdlib.render_to_log_kwargs,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )


# The levels eopf-geozarr 0.12.0 derives further levels from (r60m -> r120m -> r360m ->
# r720m, `create_multiscale_from_datatree` in s2_optimization/s2_multiscale.py).
PYRAMID_PARENTS = frozenset(
    f"/measurements/reflectance/{level}" for level in ("r60m", "r120m", "r360m")
)


def _instrument(module: Any) -> None:
    """Wrap the library's `stream_write_dataset` to report each group it finishes writing,
    and to keep the levels that coarser levels derive from in memory.

    The library hands the *lazy* dataset it wrote to the next level, so every coarser level
    computes its whole chain of parents again from the source: r720m re-read and re-decoded
    r60m and re-averaged r120m and r360m. A parent level is small (12 bands of 1830^2 at
    most), so it is computed once, written from memory and handed on computed. Its values
    are the unrounded ones the lazy chain had, so integer mode still rounds each level once,
    from the float-mode means.
    """
    original = module.stream_write_dataset
    if getattr(original, "_geozarr_pipeline_progress", False):
        return

    @functools.wraps(original)
    def stream_write_dataset(dataset: Any, *args: Any, **kwargs: Any) -> Any:
        path = str(kwargs.get("path", ""))
        if path in PYRAMID_PARENTS:
            dataset = dataset.persist()
        result = original(dataset, *args, **kwargs)
        callback = _on_group_written.get()
        if callback is not None:
            callback(path)
        return result

    stream_write_dataset._geozarr_pipeline_progress = True  # type: ignore[attr-defined]
    module.stream_write_dataset = stream_write_dataset


def is_unscaled_integer(variable: Any) -> bool:
    """An integer array stored without CF scaling: classes, flags or raw counts (SCL,
    detector footprints, quality masks, the atmosphere's DN), which float mode has no reason
    to decode. Reflectance is stored as scaled integers."""
    import numpy as np

    scaled = any(
        key in variable.encoding or key in variable.attrs for key in ("scale_factor", "add_offset")
    )
    return bool(np.issubdtype(variable.dtype, np.integer)) and not scaled


def bounded_shards(
    shards: tuple[int, ...] | None, chunks: tuple[int, ...], limit: int
) -> tuple[int, ...] | None:
    """Shards of at most `limit` pixels a side (whole inner chunks, at least one), never
    larger than the library's one-shard-per-array choice."""
    if shards is None:
        return None
    return tuple(
        min(shard, max(chunk, limit // chunk * chunk))
        for shard, chunk in zip(shards, chunks, strict=True)
    )


def _instrument_encoding(module: Any) -> None:
    """Wrap the library's `create_uniform_encoding` (eopf-geozarr 0.12.0,
    s2_optimization/s2_multiscale.py) for two changes of its output:

    - Classes stay classes: in float mode the library casts every array of a group to
      float32 with NaN fill, masks and the scene classification included. Unscaled integer
      variables (`is_unscaled_integer`) are encoded as in keep_scale_offset mode instead:
      their source dtype and fill value.
    - Bounded shards: the library makes one shard of each whole array, and its writer
      rechunks the dask graph to the shard, so a 10980^2 band is one task holding the whole
      array. Shards are capped at the conversion's shard size (`_shard_size`), a whole
      number of inner chunks, so each write task holds one shard.
    """
    original = module.create_uniform_encoding
    if getattr(original, "_geozarr_pipeline_encoding", False):
        return

    @functools.wraps(original)
    def create_uniform_encoding(dataset: Any, **kwargs: Any) -> dict[str, Any]:
        keep = bool(kwargs.pop("keep_scale_offset", True))
        names = [str(name) for name in dataset.data_vars]
        unscaled = [name for name in names if not keep and is_unscaled_integer(dataset[name])]
        encoding: dict[str, Any]
        if not unscaled or len(unscaled) == len(names):
            encoding = original(dataset, keep_scale_offset=keep or bool(unscaled), **kwargs)
        else:
            encoding = {}
            for subset, keep_subset in (
                (unscaled, True),
                ([n for n in names if n not in unscaled], keep),
            ):
                part = dataset[subset]
                encoding.update(original(part, keep_scale_offset=keep_subset, **kwargs))
                # The library casts and re-attributes the variables of the dataset it is given.
                for name in subset:
                    dataset[name] = part[name]
                    dataset[name].encoding = part[name].encoding
                for coord in part.coords:
                    dataset.coords[coord].attrs = part.coords[coord].attrs
        limit = _shard_size.get()
        if limit is not None:
            for name in names:
                var_encoding = encoding[name]
                var_encoding["shards"] = bounded_shards(
                    var_encoding.get("shards"), tuple(var_encoding["chunks"]), limit
                )
        return encoding

    create_uniform_encoding._geozarr_pipeline_encoding = True  # type: ignore[attr-defined]
    module.create_uniform_encoding = create_uniform_encoding


def nan_mean_of_blocks(values: Any, axis: tuple[int, ...]) -> Any:
    """The mean of the non-NaN values along `axis`, NaN where there are none: one pass over
    the block (dask's nanmean makes a sum and a count pass and copies the input), summed in
    float64."""
    import numpy as np

    valid = ~np.isnan(values)
    counts = valid.sum(axis=axis)
    sums = np.where(valid, values, 0).sum(axis=axis, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _instrument_coarsening(module: Any) -> None:
    """Average decoded reflectance over the valid pixels of each block, nothing else.

    eopf-geozarr 0.12.0's `_coarsen_variable` (s2_optimization/s2_multiscale.py), used for
    the injected bands (b08 in r20m/r60m) and every level from r120m on, masks the decoded
    band against its *encoding* `_FillValue` (the raw DN 0), averages and then `fillna`s
    with it: a block with no data becomes 0.0 (float mode) or 0.0 re-encoded as DN 1000
    (keep_scale_offset), and a valid pixel whose reflectance is exactly 0.0 is left out of
    its block's mean. The data it gets is already decoded, NaN for nodata, so a NaN-skipping
    mean is the whole job; the encoding (and with it the CF packing of the written level)
    is kept. Other variables (integers, classes) go to the library's own dispatch.
    """
    original = module._coarsen_variable
    if getattr(original, "_geozarr_pipeline_coarsening", False):
        return

    @functools.wraps(original)
    def _coarsen_variable(var_name: str, var_data: Any, factor: int) -> Any:
        import numpy as np

        if not np.issubdtype(var_data.dtype, np.floating):
            return original(var_name, var_data, factor)
        coarsened = var_data.coarsen({"x": factor, "y": factor}, boundary="trim")
        result = coarsened.reduce(nan_mean_of_blocks).astype(var_data.dtype)
        result.encoding = var_data.encoding
        return result

    _coarsen_variable._geozarr_pipeline_coarsening = True  # type: ignore[attr-defined]
    module._coarsen_variable = _coarsen_variable


def load_library() -> Library:
    """Import eopf-geozarr once per process, never touching the network."""
    global _library
    with _import_lock:
        if _library is None:
            with _no_import_time_fetch():
                import eopf_geozarr
                from eopf_geozarr.conversion.open_source import open_source_datatree
                from eopf_geozarr.s2_optimization import s2_multiscale
                from eopf_geozarr.s2_optimization.s2_converter import convert_s2_optimized
            _route_structlog()
            _instrument(s2_multiscale)
            _instrument_encoding(s2_multiscale)
            _instrument_coarsening(s2_multiscale)
            _library = Library(
                open_source_datatree=open_source_datatree,
                convert_s2_optimized=convert_s2_optimized,
                version=str(eopf_geozarr.__version__),
            )
        return _library


_env_lock = threading.Lock()
_env_users = 0
_env_saved: dict[str, str | None] = {}
_env_current: dict[str, str | None] = {}


def _output_env(settings: Settings) -> dict[str, str | None]:
    secret = settings.s3_secret_access_key
    region = settings.s3_region or "us-east-1"
    return {
        "AWS_ENDPOINT_URL": settings.s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": settings.s3_access_key_id,
        "AWS_SECRET_ACCESS_KEY": secret.get_secret_value() if secret else None,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_SESSION_TOKEN": None,
    }


@contextlib.contextmanager
def output_environment(settings: Settings, write_url: str) -> Iterator[None]:
    """Expose the output credentials as AWS_* for the library, only while it writes.

    The library builds its S3 filesystem from the environment only. Conversions in one
    process share one settings object, so the values are set by the first user and restored
    by the last; s3fs's instance cache is cleared so it cannot reuse another endpoint.
    """
    global _env_users
    if not is_s3(write_url):
        yield
        return
    wanted = _output_env(settings)
    with _env_lock:
        if _env_users == 0:
            _env_saved.clear()
            for name, value in wanted.items():
                _env_saved[name] = os.environ.get(name)
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            _env_current.clear()
            _env_current.update(wanted)
            _clear_s3fs_cache()
        elif wanted != _env_current:
            raise TransientError("another conversion with other output credentials is running")
        _env_users += 1
    try:
        yield
    finally:
        with _env_lock:
            _env_users -= 1
            if _env_users == 0:
                for name, value in _env_saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
                _clear_s3fs_cache()


def _clear_s3fs_cache() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def open_source(zarr_url: str, settings: Settings) -> Any:
    """Open the source product as a lazy DataTree on its native chunk grid."""
    library = load_library()
    try:
        packed = library.open_source_datatree(
            local_path(zarr_url),
            storage_options=storage_options(zarr_url, settings),
            mask_and_scale=False,
        )
        return decoded_in_single_precision(packed)
    except FileNotFoundError as exc:
        raise SourceNotFound(f"cannot open the product {zarr_url}: {exc}") from exc
    except Exception as exc:
        if _is_network_error(exc):
            raise TransientError(f"network error opening {zarr_url}: {exc}") from exc
        if type(exc).__name__ in ("GroupNotFoundError", "NodeNotFoundError"):
            raise SourceNotFound(f"no Zarr product at {zarr_url}: {exc}") from exc
        raise


def decoded_in_single_precision(tree: Any) -> Any:
    """CF-decode a tree opened packed (`mask_and_scale=False`), 8- and 16-bit integers with a
    scale or offset to float32 instead of float64.

    xarray decodes to the type of `scale_factor`, and a Zarr attribute is a JSON number, so
    uint16 reflectance becomes float64: twice the memory of every decoded source chunk (a
    5490^2 chunk of the real product is 241 MB) and twice the bytes for every operation,
    only to be cast to float32 (float mode) or rounded back to uint16 (integer mode).
    float32 holds every 16-bit DN * scale + offset to about 1e-8, far below half a DN step,
    so nothing either mode writes changes beyond float32 rounding.
    """
    import numpy as np
    import xarray as xr

    for node in tree.subtree:
        dataset = node.to_dataset(inherit=False)
        if not dataset.variables:
            continue
        written: dict[tuple[str, str], float] = {}
        for name, variable in dataset.variables.items():
            packing = {
                key: variable.attrs[key]
                for key in ("scale_factor", "add_offset")
                if key in variable.attrs
            }
            if _fits_single_precision(variable.dtype, packing):
                for key, value in packing.items():
                    written[str(name), key] = value
                    variable.attrs[key] = np.float32(value)
        decoded = xr.decode_cf(
            dataset,
            mask_and_scale=True,
            decode_times=False,
            decode_coords=False,
            concat_characters=False,
            decode_timedelta=False,
        )
        # Integer mode writes the encoding back: the source's own values, not their float32.
        for (name, key), value in written.items():
            decoded[name].encoding[key] = value
        node.dataset = decoded
    return tree


def _fits_single_precision(dtype: Any, packing: dict[str, Any]) -> bool:
    """An 8/16-bit integer with a float scale or offset whose every decoded value float32
    holds to well within half a step (xarray itself keeps float64 for a large offset)."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in packing.values())
    if dtype.kind not in "iu" or dtype.itemsize > 2 or not packing or not numbers:
        return False
    if not any(isinstance(v, float) for v in packing.values()):
        return False
    scale = abs(float(packing.get("scale_factor", 1.0))) or 1.0
    largest = 2 ** (8 * dtype.itemsize) * scale + abs(float(packing.get("add_offset", 0.0)))
    return bool(largest / scale < 2**22)


def _is_network_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("aiohttp", "botocore", "aiobotocore")) or isinstance(
        exc, TimeoutError | ConnectionError
    )


def convert(
    tree: Any,
    write_url: str,
    options: EffectiveOptions,
    settings: Settings,
    on_group_written: Callable[[str], None] | None = None,
) -> None:
    """Run `convert_s2_optimized` into `write_url` (a fresh, empty location)."""
    library = load_library()
    token = _on_group_written.set(on_group_written)
    shard_token = _shard_size.set(options.shard_size if options.enable_sharding else None)
    try:
        with output_environment(settings, write_url), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not")
            library.convert_s2_optimized(
                tree,
                output_path=write_url,
                enable_sharding=options.enable_sharding,
                spatial_chunk=options.spatial_chunk,
                compression_level=COMPRESSION_LEVEL,
                validate_output=False,
                keep_scale_offset=options.keep_scale_offset,
            )
    except ValueError as exc:
        if "not a Sentinel-2" in str(exc):
            raise UnsupportedProduct(str(exc)) from exc
        raise
    except Exception as exc:
        if _is_network_error(exc):
            raise TransientError(f"network error during conversion: {exc}") from exc
        raise
    finally:
        _shard_size.reset(shard_token)
        _on_group_written.reset(token)

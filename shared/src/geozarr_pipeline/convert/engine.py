"""The eopf-geozarr call: imported lazily, without its import-time network fetch.

Importing `eopf_geozarr` downloads the CF standard-name table from GitHub with no timeout
(`eopf_geozarr.data_api.geozarr.common`); with egress dropped that hangs a cold start. The
first conversion imports the library with `urllib.request.urlopen` refusing every request,
so the module falls back to its documented "validation off" branch at once. The library's
only use of the table is `check_standard_name` in its pydantic models, which S2 conversion
does not depend on.
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
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "spatial_chunk": self.spatial_chunk,
            "enable_sharding": self.enable_sharding,
            "keep_scale_offset": self.keep_scale_offset,
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


def _instrument(module: Any) -> None:
    """Report each group the library finishes writing (wraps `stream_write_dataset`)."""
    original = module.stream_write_dataset
    if getattr(original, "_geozarr_pipeline_progress", False):
        return

    @functools.wraps(original)
    def stream_write_dataset(dataset: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(dataset, *args, **kwargs)
        callback = _on_group_written.get()
        if callback is not None:
            callback(str(kwargs.get("path", "")))
        return result

    stream_write_dataset._geozarr_pipeline_progress = True  # type: ignore[attr-defined]
    module.stream_write_dataset = stream_write_dataset


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
        return library.open_source_datatree(
            local_path(zarr_url), storage_options=storage_options(zarr_url, settings)
        )
    except FileNotFoundError as exc:
        raise SourceNotFound(f"cannot open the product {zarr_url}: {exc}") from exc
    except Exception as exc:
        if _is_network_error(exc):
            raise TransientError(f"network error opening {zarr_url}: {exc}") from exc
        if type(exc).__name__ in ("GroupNotFoundError", "NodeNotFoundError"):
            raise SourceNotFound(f"no Zarr product at {zarr_url}: {exc}") from exc
        raise


def _is_network_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("aiohttp", "botocore", "aiobotocore")) or isinstance(
        exc, TimeoutError | ConnectionError
    )


def avoid_injected_band_defect(tree: Any) -> None:
    """Stop eopf-geozarr 0.12.0 from writing 0.0 into the injected b08's nodata (float mode).

    When it injects b08 into r20m/r60m, `_coarsen_variable` masks the decoded band against
    its *encoding* `_FillValue` (the raw DN 0), averages with skipna and then `fillna(0)`:
    blocks with no data become 0.0 instead of NaN, and r120m+ average those zeros in. The
    decoded data already carries NaN for nodata, so without the stale encoding entry the
    library takes its plain nan-mean path. Float mode drops `_FillValue` from the output
    encoding anyway, so nothing else changes. The output check still verifies the result.
    """
    for path in tree.groups:
        if path.startswith("/measurements/reflectance/"):
            node = tree[path]
            for name in node.data_vars:
                node[name].encoding.pop("_FillValue", None)


def convert(
    tree: Any,
    write_url: str,
    options: EffectiveOptions,
    settings: Settings,
    on_group_written: Callable[[str], None] | None = None,
) -> None:
    """Run `convert_s2_optimized` into `write_url` (a fresh, empty location)."""
    library = load_library()
    if not options.keep_scale_offset:
        avoid_injected_band_defect(tree)
    token = _on_group_written.set(on_group_written)
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
        _on_group_written.reset(token)

"""eopf-geozarr is imported lazily and never touches the network at import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import zarr

from geozarr_pipeline.config import Settings
from geozarr_pipeline.convert.engine import EffectiveOptions, is_unscaled_integer, open_source
from geozarr_pipeline.events import ConversionOptions
from tests.fixtures.sample import SampleRoot

# Runs in a fresh interpreter: every outbound connection attempt is recorded and refused.
PROBE = textwrap.dedent(
    """
    import json, socket, sys, time
    attempts = []
    real_getaddrinfo = socket.getaddrinfo
    def getaddrinfo(host, *args, **kwargs):
        attempts.append(str(host))
        raise OSError("network disabled in this test")
    socket.getaddrinfo = getaddrinfo
    def connect(self, address):
        attempts.append(str(address))
        raise OSError("network disabled in this test")
    socket.socket.connect = connect

    started = time.monotonic()
    sys.path.insert(0, "functions/convert")
    import geozarr_convert.main  # the function's cold start
    cold = time.monotonic() - started
    loaded_at_start = "eopf_geozarr" in sys.modules

    from geozarr_pipeline.convert import engine
    started = time.monotonic()
    library = engine.load_library()
    first_event = time.monotonic() - started
    from eopf_geozarr.data_api.geozarr import common
    print(json.dumps({
        "attempts": attempts,
        "cold_start_s": cold,
        "library_loaded_at_start": loaded_at_start,
        "first_event_import_s": first_event,
        "cf_validation": common.DO_CF_NAME_VALIDATION,
        "version": library.version,
    }))
    """
)


def test_function_cold_start_and_library_import_touch_no_network() -> None:
    completed = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    probe = json.loads(completed.stdout.strip().splitlines()[-1])
    assert probe["attempts"] == []
    assert probe["library_loaded_at_start"] is False
    assert probe["cf_validation"] is False
    assert probe["version"] == "0.12.0"
    # The function starts without the converter; its import moves to the first event.
    assert probe["first_event_import_s"] > 0


def test_event_options_override_settings() -> None:
    settings = Settings(spatial_chunk=1024, enable_sharding=False, keep_scale_offset=False)
    assert EffectiveOptions.resolve(ConversionOptions(), settings) == EffectiveOptions(
        1024, False, False
    )
    overridden = ConversionOptions(
        spatial_chunk=512, enable_sharding=True, keep_scale_offset=True, shard_size=2048
    )
    assert EffectiveOptions.resolve(overridden, settings) == EffectiveOptions(512, True, True, 2048)
    assert EffectiveOptions.resolve(overridden, settings).as_dict()["shard_size"] == 2048
    assert "shard_size" not in EffectiveOptions(1024, False, True).as_dict()


def test_the_source_is_decoded_in_single_precision_with_its_own_encoding(
    sample_root: SampleRoot,
) -> None:
    path = sample_root.l2a.product_path
    tree = open_source(str(path), Settings())
    source = zarr.open_group(str(path), mode="r")
    b02 = tree["/measurements/reflectance/r10m"]["b02"]
    assert b02.dtype == np.float32
    raw = source["measurements/reflectance/r10m/b02"]
    # The encoding integer mode writes back is the source's, exactly.
    assert b02.encoding["scale_factor"] == raw.attrs["scale_factor"]
    assert b02.encoding["add_offset"] == raw.attrs["add_offset"]
    assert type(b02.encoding["scale_factor"]) is float
    values, dn = b02.values, raw[:]
    np.testing.assert_array_equal(np.isnan(values), dn == 0)
    expected = dn.astype(np.float64) * raw.attrs["scale_factor"] + raw.attrs["add_offset"]
    valid = dn != 0
    assert np.abs(values[valid] - expected[valid]).max() < 1e-6
    scl = tree["/conditions/mask/l2a_classification/r20m"]["scl"]
    assert scl.dtype == np.uint8
    assert is_unscaled_integer(scl)
    assert not is_unscaled_integer(b02)


def test_the_overview_mean_keeps_valid_zeros_and_leaves_empty_blocks_nan() -> None:
    """The library's mean dropped a valid reflectance of 0.0 and filled empty blocks."""
    import xarray as xr

    from geozarr_pipeline.convert import engine

    values = np.array([[0.0, 0.2, np.nan, np.nan], [np.nan, 0.4, np.nan, np.nan]], dtype=np.float32)
    band = xr.DataArray(values, dims=("y", "x")).chunk({"y": 2, "x": 2})
    band.encoding = {"_FillValue": 0, "scale_factor": 0.0001}
    library = engine.load_library()
    from eopf_geozarr.s2_optimization import s2_multiscale

    assert library is not None
    mean = s2_multiscale._coarsen_variable("b02", band, 2)
    np.testing.assert_allclose(mean.values[0, 0], (0.0 + 0.2 + 0.4) / 3, rtol=1e-6)
    assert np.isnan(mean.values[0, 1])
    assert mean.dtype == np.float32
    assert mean.encoding == band.encoding


def test_float_mode_keeps_the_integers_of_a_mixed_group() -> None:
    """A group holding scaled reflectance and an unscaled class map: float mode casts only
    the reflectance."""
    import xarray as xr

    from geozarr_pipeline.convert import engine

    engine.load_library()
    from eopf_geozarr.s2_optimization import s2_multiscale

    coords = {"y": np.arange(4.0), "x": np.arange(4.0)}
    reflectance = xr.DataArray(np.full((4, 4), 0.5, np.float32), dims=("y", "x"))
    reflectance.encoding = {"dtype": np.dtype("uint16"), "scale_factor": 0.0001}
    classes = xr.DataArray(np.arange(16, dtype=np.uint8).reshape(4, 4), dims=("y", "x"))
    dataset = xr.Dataset({"b02": reflectance, "scl": classes}, coords=coords).chunk(2)
    assert engine.is_unscaled_integer(dataset["scl"])
    assert not engine.is_unscaled_integer(dataset["b02"])
    scaled_ints = xr.DataArray(np.ones((2, 2), np.uint16), dims=("y", "x"))
    scaled_ints.attrs["scale_factor"] = 0.001
    assert not engine.is_unscaled_integer(scaled_ints)
    encoding = s2_multiscale.create_uniform_encoding(
        dataset, spatial_chunk=2, enable_sharding=False, keep_scale_offset=False
    )
    assert dataset["scl"].dtype == np.uint8
    assert dataset["b02"].dtype == np.float32
    assert encoding["b02"]["fill_value"] == "NaN"
    assert encoding["scl"].get("fill_value") != "NaN"
    assert set(encoding) >= {"b02", "scl", "x", "y"}


def test_single_precision_only_where_float32_holds_every_value() -> None:
    from geozarr_pipeline.convert.engine import _fits_single_precision

    u16, u8 = np.dtype("uint16"), np.dtype("uint8")
    assert _fits_single_precision(u16, {"scale_factor": 0.0001, "add_offset": -0.1})
    assert _fits_single_precision(u8, {"scale_factor": 0.5, "add_offset": 0})
    assert not _fits_single_precision(u16, {"scale_factor": 0.001, "add_offset": 10000.0})
    assert not _fits_single_precision(np.dtype("int32"), {"scale_factor": 0.1})
    assert not _fits_single_precision(u16, {"scale_factor": 2, "add_offset": 1})  # no float
    assert not _fits_single_precision(u16, {})

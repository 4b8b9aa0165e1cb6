"""The convert stage end to end: sources over HTTP, filesystem and S3 outputs, idempotency,
concurrent deliveries and a conversion killed midway then redelivered."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

from geozarr_local.processes import ManagedProcess
from geozarr_pipeline import output_store
from geozarr_pipeline.config import Settings
from geozarr_pipeline.convert import check
from geozarr_pipeline.errors import InProgress, OutputCheckFailed, UnsupportedProduct
from geozarr_pipeline.events import ConvertDone, ConvertRequested
from geozarr_pipeline.stages import convert
from tests.fixtures.s3 import S3Server
from tests.fixtures.sample import SampleServerInfo
from tests.shared.convert.conftest import item_event, local_settings, s3_settings

LEVELS = ["r10m", "r20m", "r60m", "r120m", "r360m", "r720m"]
REFL = "measurements/reflectance"


def assert_complete_store(
    done: ConvertDone, sample: SampleServerInfo, storage_options: dict[str, Any] | None = None
) -> None:
    """The store opens as a DataTree with every level, and passes the check unrepaired."""
    tree = xr.open_datatree(
        done.output_url, engine="zarr", chunks=None, storage_options=storage_options
    )
    assert [f"/{REFL}/{level}" in tree.groups for level in LEVELS] == [True] * len(LEVELS)
    multiscales = tree[f"/{REFL}"].attrs["multiscales"]
    assert [entry["asset"] for entry in multiscales["layout"]] == LEVELS
    source = zarr.open_group(str(sample.l2a.product_path), mode="r")
    output = zarr.open_group(done.output_url, mode="r+", storage_options=storage_options)
    report = check.check_and_repair_output(source, output)
    assert report.repaired == []
    # The injected b08 decodes to NaN (not the library's 0.0 or DN 1000) where the source
    # has no data.
    expected = check.block_all(source[f"{REFL}/r10m/b08"][:] == 0, 2)
    np.testing.assert_array_equal(np.isnan(tree[f"/{REFL}/r20m"]["b08"].values), expected)


def test_item_source_to_filesystem_then_noop_redelivery_then_force(
    sample_server: SampleServerInfo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = local_settings(tmp_path)
    event = item_event(sample_server)
    with caplog.at_level(logging.INFO, logger="geozarr_pipeline.convert"):
        done = convert.run(event, settings)
    progress = [r for r in caplog.records if r.name == "geozarr_pipeline.convert"]
    steps = [getattr(r, "step", None) for r in progress]
    for step in ("resolved", "open", "converted", "checked", "published", "done"):
        assert step in steps
    written = [
        getattr(r, "group", "") for r in progress if getattr(r, "step", "") == "group written"
    ]
    assert [f"/{REFL}/{level}" in written for level in LEVELS] == [True] * len(LEVELS)
    assert {getattr(r, "item_id", None) for r in progress} == {sample_server.l2a_id}
    elapsed = {getattr(r, "step", ""): float(getattr(r, "elapsed_s", -1)) for r in progress}
    assert min(elapsed.values()) >= 0
    assert elapsed["done"] == max(elapsed.values())
    assert done.source_item_url == sample_server.l2a_item_url
    assert done.zarr_url == sample_server.zarr_url(sample_server.l2a_id)
    expected_store = tmp_path / "geozarr" / sample_server.l2a.collection / f"{done.item_id}.zarr"
    assert Path(done.output_url) == expected_store.resolve()
    assert_complete_store(done, sample_server)

    location = output_store.output_for(settings, done.collection, done.item_id)
    assert isinstance(location, output_store.LocalOutput)
    marker = json.loads(location.marker.read_text())
    assert marker["format"] == output_store.MARKER_FORMAT
    assert marker["done"] == done.model_dump(mode="json")
    assert marker["options"] == {
        "spatial_chunk": 1024,
        "enable_sharding": True,
        "shard_size": 4096,
        "keep_scale_offset": True,
    }
    assert marker["check"]["repaired"] == []  # the b08 defect is avoided, and checked
    assert list(location.staging_folder.iterdir()) == []

    before = location.marker.stat().st_mtime_ns
    started = time.monotonic()
    again = convert.run(event, settings)
    assert time.monotonic() - started < 1.0
    assert again == done
    assert location.marker.stat().st_mtime_ns == before

    forced = convert.run(item_event(sample_server, force=True, spatial_chunk=256), settings)
    assert forced == done
    remarked = json.loads(location.marker.read_text())
    assert remarked["options"]["spatial_chunk"] == 256
    assert zarr.open_array(f"{done.output_url}/{REFL}/r10m/b02", mode="r").chunks == (256, 256)


def test_direct_zarr_source_to_s3(
    sample_server: SampleServerInfo, tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    settings = s3_settings(tmp_path, s3_server, s3_bucket)
    zarr_url = sample_server.zarr_url(sample_server.l2a_id)
    event = ConvertRequested(source_url=zarr_url, collection="sentinel-2-l2a")
    assert event.item_id == sample_server.l2a_id
    done = convert.run(event, settings)
    prefix = f"geozarr/sentinel-2-l2a/{sample_server.l2a_id}.zarr"
    assert done.output_url == f"s3://{s3_bucket}/{prefix}"
    assert done.source_item_url is None
    assert done.zarr_url == zarr_url
    keys = s3_server.keys(s3_bucket)
    assert f"{prefix}{output_store.MARKER_SUFFIX}" in keys
    assert f"{prefix}{output_store.LOCK_SUFFIX}" not in keys
    assert f"{prefix}/zarr.json" in keys
    assert any(k.startswith(f"{prefix}/{REFL}/r720m/") for k in keys)
    assert_complete_store(done, sample_server, output_store.s3_storage_options(settings))
    assert convert.run(event, settings) == done
    # The local staging copy is gone once uploaded.
    assert list((tmp_path / "work" / "staging" / "sentinel-2-l2a").iterdir()) == []


def test_s3_leftovers_of_a_crashed_attempt_are_replaced(
    sample_server: SampleServerInfo, tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    settings = s3_settings(tmp_path, s3_server, s3_bucket, convert_lease_seconds=30.0)
    prefix = f"geozarr/{sample_server.l2a.collection}/{sample_server.l2a_id}.zarr"
    client = s3_server.client()
    # A dead delivery: half a store, no marker, and its lease expired a moment ago.
    client.put_object(Bucket=s3_bucket, Key=f"{prefix}/zarr.json", Body=b"{}")
    client.put_object(Bucket=s3_bucket, Key=f"{prefix}/{REFL}/r10m/b02/c/9/9", Body=b"junk")
    lease = {"owner": "dead", "expires_at": time.time() - 1}
    client.put_object(Bucket=s3_bucket, Key=f"{prefix}.lock", Body=json.dumps(lease))
    done = convert.run(item_event(sample_server), settings)
    assert f"{prefix}/{REFL}/r10m/b02/c/9/9" not in s3_server.keys(s3_bucket)
    assert_complete_store(done, sample_server, output_store.s3_storage_options(settings))


def test_concurrent_deliveries_leave_one_valid_store(
    sample_server: SampleServerInfo, tmp_path: Path
) -> None:
    settings = local_settings(tmp_path)
    event = item_event(sample_server)
    location = output_store.output_for(settings, event.collection, event.resolved_item_id)
    assert isinstance(location, output_store.LocalOutput)
    results: list[ConvertDone | BaseException] = []

    def deliver() -> None:
        try:
            results.append(convert.run(event, settings))
        except BaseException as exc:
            results.append(exc)

    first = threading.Thread(target=deliver)
    first.start()
    deadline = time.monotonic() + 60
    while not (location.staging_folder.exists() and any(location.staging_folder.iterdir())):
        assert time.monotonic() < deadline, "the first delivery never started converting"
        time.sleep(0.05)
    with pytest.raises(InProgress):
        convert.run(event, settings)  # the second delivery, while the first converts
    first.join(timeout=300)
    assert len(results) == 1
    done = results[0]
    assert isinstance(done, ConvertDone)
    assert convert.run(event, settings) == done
    assert_complete_store(done, sample_server)


def test_not_sentinel2_product_is_refused(sample_server: SampleServerInfo, tmp_path: Path) -> None:
    product = zarr.open_group(str(sample_server.l2a.product_path), mode="r")
    attrs = dict(product.attrs)
    attrs["stac_discovery"]["properties"]["product:type"] = "S01SIWGRH"
    fake = tmp_path / "S1_FAKE.zarr"
    fake.mkdir()
    metadata = json.loads((sample_server.l2a.product_path / ".zmetadata").read_text())
    metadata["metadata"][".zattrs"] = attrs
    (fake / ".zmetadata").write_text(json.dumps(metadata))
    event = ConvertRequested(source_url=fake.as_uri(), collection="sentinel-1-l1-grd")
    with pytest.raises(UnsupportedProduct, match="S01SIWGRH"):
        convert.run(event, local_settings(tmp_path))
    assert not (tmp_path / "geozarr" / "sentinel-1-l1-grd").exists()


def _convert_process(
    settings_env: dict[str, str], event: ConvertRequested, log: Path
) -> ManagedProcess:
    command = [
        str(Path(sys.executable).with_name("geozarr-pipeline")),
        "convert",
        "--source-url",
        event.source_url,
        "--collection",
        event.collection,
        "--item-id",
        event.resolved_item_id,
    ]
    return ManagedProcess(name="convert", command=command, log_path=log, env=settings_env)


def _env(settings: Settings) -> dict[str, str]:
    env = {
        "GEOZARR_OUTPUT_ROOT": settings.output_root,
        "GEOZARR_WORK_DIR": str(settings.work_dir),
        "GEOZARR_ALLOW_FILE_URLS": "true",
        "GEOZARR_ALLOW_PLAIN_HTTP": "true",
        "GEOZARR_ALLOW_PRIVATE_HOSTS": "true",
        "GEOZARR_CONVERT_LEASE_SECONDS": str(settings.convert_lease_seconds),
    }
    if settings.s3_endpoint_url:
        secret = settings.s3_secret_access_key
        env.update(
            GEOZARR_S3_ENDPOINT_URL=settings.s3_endpoint_url,
            GEOZARR_S3_ACCESS_KEY_ID=settings.s3_access_key_id or "",
            GEOZARR_S3_SECRET_ACCESS_KEY=secret.get_secret_value() if secret else "",
        )
    return env


def _kill_when(process: ManagedProcess, log: Path, needle: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while needle not in (log.read_text() if log.exists() else ""):
        assert process.process is not None
        assert process.process.poll() is None, f"finished before {needle!r}:\n{process.log_tail()}"
        assert time.monotonic() < deadline, f"never saw {needle!r}:\n{process.log_tail()}"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.process is not None
    process.process.wait(timeout=30)


def test_killed_midway_then_redelivered_ends_complete(
    sample_server: SampleServerInfo, tmp_path: Path
) -> None:
    settings = local_settings(tmp_path)
    event = item_event(sample_server)
    log = tmp_path / "convert.log"
    process = _convert_process(_env(settings), event, log).start()
    _kill_when(process, log, f'"group": "/{REFL}/r20m"')
    location = output_store.output_for(settings, event.collection, event.resolved_item_id)
    assert isinstance(location, output_store.LocalOutput)
    assert location.read_marker() is None
    assert not location.store.exists()  # never published half-written
    assert any(location.staging_folder.iterdir())  # the dead attempt's partial store

    done = convert.run(event, settings)  # the redelivery
    assert_complete_store(done, sample_server)
    assert list(location.staging_folder.iterdir()) == []


def test_killed_on_s3_waits_for_the_lease_then_completes(
    sample_server: SampleServerInfo, tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    settings = s3_settings(tmp_path, s3_server, s3_bucket, convert_lease_seconds=3.0)
    event = item_event(sample_server)
    log = tmp_path / "convert.log"
    process = _convert_process(_env(settings), event, log).start()
    _kill_when(process, log, '"step": "open"')
    killed_at = time.monotonic()
    with pytest.raises(InProgress):
        convert.run(event, settings)  # redelivered at once: the dead holder's lease still runs
    time.sleep(max(0.0, 3.2 - (time.monotonic() - killed_at)))
    done = convert.run(event, settings)
    assert_complete_store(done, sample_server, output_store.s3_storage_options(settings))


def test_a_store_failing_its_check_is_never_published(
    sample_server: SampleServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = local_settings(tmp_path)
    event = item_event(sample_server)
    original = check.OutputChecker.check_pyramid

    def failing(self: check.OutputChecker, output: Any) -> check.CheckReport:
        self.problem("r10m/b04: 7 pixels are nodata where the source has data")  # the fault
        return original(self, output)

    monkeypatch.setattr(check.OutputChecker, "check_pyramid", failing)
    with pytest.raises(OutputCheckFailed, match="r10m/b04") as caught:
        convert.run(event, settings)
    assert not caught.value.retryable
    location = output_store.output_for(settings, event.collection, event.resolved_item_id)
    assert isinstance(location, output_store.LocalOutput)
    assert location.read_marker() is None
    assert not location.store.exists()
    assert list(location.staging_folder.iterdir()) == []

    monkeypatch.setattr(check.OutputChecker, "check_pyramid", original)
    assert_complete_store(convert.run(event, settings), sample_server)


def test_integer_mode_writes_nodata_as_the_fill_value_without_repairs(
    sample_server: SampleServerInfo, tmp_path: Path
) -> None:
    """keep_scale_offset: the library's DN 1000 and 0.0 blocks (test_check) never happen."""
    settings = local_settings(tmp_path)
    done = convert.run(item_event(sample_server, keep_scale_offset=True), settings)
    location = output_store.output_for(settings, done.collection, done.item_id)
    marker = location.read_marker()
    assert marker is not None
    assert marker["check"]["repaired"] == []
    output = zarr.open_group(done.output_url, mode="r+")
    source = zarr.open_group(str(sample_server.l2a.product_path), mode="r")
    b02 = output[f"{REFL}/r120m/b02"]
    assert b02.dtype == np.uint16
    expected = check.block_all(source[f"{REFL}/r60m/b02"][:] == 0, 2)[
        : b02.shape[0], : b02.shape[1]
    ]
    np.testing.assert_array_equal(b02[:] == b02.attrs["_FillValue"], expected)
    assert check.check_and_repair_output(source, output).repaired == []
